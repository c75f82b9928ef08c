"""A lean HTTP/1.1 client for the requests a pass-through backend makes on every call: one pool of
keep-alive connections to one upstream origin, an ``asyncio.Protocol`` per connection and httptools
(llhttp) to parse the answer. It does what the hot path needs and no more (no redirects or cookies),
at a fraction of ``aiohttp.ClientSession``'s cost per request. A proxy the environment names for the
origin (``gateway.upstream.proxy``) is used: a ``CONNECT`` tunnel for https, absolute-form requests
for http.

- The request's head and body go out in one write; the answer's body is read as it arrives, every
  buffered piece joined into one block per read, reading paused above ``http_response.HIGH_WATER`` bytes.
- ``gzip`` and ``deflate`` answers are decoded; a ``Connection: close`` answer, an HTTP/1.0 one, an
  unfinished or cancelled one closes its connection instead of returning it to the pool.
- Failures are aiohttp's exception types (``ServerDisconnectedError``, ``ClientPayloadError``...), and
  ``UpstreamConnectError`` for a connection that could not be made, so ``gateway.upstream.errors``'s mapping
  to gateway errors and its helpers (``raise_for_status``, ``json_object``) take either client.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import ssl
from collections.abc import Mapping

import httptools
import yarl
from aiohttp import ClientOSError, ClientPayloadError, ServerDisconnectedError
from multidict import CIMultiDict

from gateway.upstream.http_response import Response
from gateway.upstream.proxy import proxy_for, reach, tunnel

#: Seconds an idle connection is kept for reuse.
KEEPALIVE = 15.0


class UpstreamConnectError(OSError):
    """A connection to the upstream could not be made; ``os_error`` says why."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(os_error.errno, os_error.strerror or str(os_error))
        self.os_error = os_error


class HttpClient:
    """A pool of connections to the origin of ``base_url``, sending ``headers`` with every request."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        connect_timeout: float = 10.0,
        max_connections: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        url = yarl.URL(base_url)
        self.host, self.port = url.raw_host or "", url.port or (443 if url.scheme == "https" else 80)
        self.ssl = (ssl_context or ssl.create_default_context()) if url.scheme == "https" else None
        self.connect_timeout = connect_timeout
        default_port = self.port == (443 if url.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        fixed = {
            "Host": host if default_port else f"{host}:{self.port}",
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            **(headers or {}),
        }
        if url.user is not None and not any(k.lower() == "authorization" for k in fixed):
            userinfo = f"{url.user}:{url.password or ''}".encode()
            fixed["Authorization"] = "Basic " + base64.b64encode(userinfo).decode()
        self.proxy = proxy_for(base_url)
        #: http through a proxy: requests name the whole URL (absolute-form), to the proxy
        self._origin = f"http://{fixed['Host']}" if self.proxy is not None and self.ssl is None else ""
        if self._origin and self.proxy is not None and self.proxy.authorization:
            fixed["Proxy-Authorization"] = self.proxy.authorization
        self.headers = fixed
        self._head = "".join(f"{k}: {v}\r\n" for k, v in fixed.items()).encode()  # as aiohttp: UTF-8
        self._idle: collections.deque[_Connection] = collections.deque()  # the newest on the right
        self._slots = asyncio.Semaphore(max_connections) if max_connections else None
        self.closed = False

    async def request(
        self, method: str, target: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Response:
        """Send ``method target`` (a path with its query) and return the answer once its head has
        arrived; the caller reads the body, then ``release``s the response."""
        if self.closed:
            raise ClientOSError(0, "the client is closed")
        if self._slots is not None:
            await self._slots.acquire()
        try:
            connection = self._idle_connection() or await self._connect()
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise
        head = [f"{method} {self._origin}{target} HTTP/1.1\r\n".encode(), self._head]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode())
        if body is not None or method == "POST":
            head.append(b"Content-Length: %d\r\n" % len(body or b""))
        head.append(b"\r\n")
        if body:
            head.append(body)
        return await connection.send(b"".join(head))

    def _idle_connection(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and connection.loop.time() - connection.idle_since < KEEPALIVE:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.proxy is not None:
                    return await self._through_proxy(loop)
                _, connection = await loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl is not None else None,
                )
        except TimeoutError:  # an OSError too, but not a refused connection
            raise
        except OSError as exc:
            raise UpstreamConnectError(exc) from None
        return connection

    async def _through_proxy(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        """A connection via the proxy: a ``CONNECT`` tunnel with TLS inside for https, the proxy
        itself for http."""
        assert self.proxy is not None
        if self.ssl is None:
            _, connection = await reach(self.proxy, lambda: _Connection(self))
            return connection
        raw = await tunnel(self.proxy, self.host, self.port)
        connection = _Connection(self)
        raw.set_protocol(connection)
        try:
            secure = await loop.start_tls(raw, connection, self.ssl, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        assert secure is not None
        connection.connection_made(secure)
        return connection

    def _done(self, connection: _Connection, reusable: bool) -> None:
        """A connection's answer is over: back to the pool (the oldest idle one closed if it has
        expired), or closed."""
        if self._slots is not None:
            self._slots.release()
        if not reusable or self.closed:
            connection.close()
            return
        idle = self._idle
        connection.idle_since = now = connection.loop.time()
        if idle and now - idle[0].idle_since >= KEEPALIVE:
            idle.popleft().close()
        idle.append(connection)

    async def close(self) -> None:
        """Close every idle connection; connections in use close when their answer is released."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: feeds what arrives to llhttp, whose callbacks fill the response."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()  # made in a connect: looked up once, not per use
        self.transport: asyncio.Transport | None = None
        # llhttp gives a chunked body chunk by chunk: the pieces of one read are gathered without a
        # Python call each and go to the response once per read (``_deliver``)
        self.body_parts: list[bytes] = []
        self.on_body = self.body_parts.append
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self.response: Response | None = None
        self.head: asyncio.Future[Response] | None = None
        self.raw_headers: list[tuple[str, str]] = []
        self.reason = b""

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is None and self.response is None:  # nothing asked: an upstream talking out of turn
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._deliver()
            self._fail(ClientPayloadError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()
        else:
            if self.body_parts:
                self._deliver()

    def _deliver(self) -> None:
        """The body pieces the last read held, to the response in one piece."""
        parts = self.body_parts
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        parts.clear()
        if self.response is not None:
            self.response._feed(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response = self.response
        if response is not None and not response.complete and response.until_close:
            response._finish()  # a body delimited by the end of the connection
        elif self.head is not None or response is not None:
            self._fail(ServerDisconnectedError() if response is None else ClientPayloadError("the answer was cut off"))

    # httptools callbacks

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and the like: the real answer follows
            self.raw_headers, self.reason = [], b""
            return
        headers = CIMultiDict(self.raw_headers)
        self.raw_headers = []
        self.response = response = Response(self, status, self.reason.decode("latin-1"), headers)
        self.reason = b""
        response.until_close = "Content-Length" not in headers and "Transfer-Encoding" not in headers
        response.keep_alive = self.parser.should_keep_alive()
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_result(response)

    def on_message_complete(self) -> None:
        self._deliver()
        if self.response is not None:
            self.response._finish()

    # Use

    async def send(self, data: bytes) -> Response:
        """Write a request and wait for its answer's head."""
        assert self.transport is not None
        self.response, self.head = None, self.loop.create_future()
        head = self.head
        try:
            self.transport.write(data)
            return await head
        except BaseException:
            self.head = None
            self.client._done(self, reusable=False)
            raise

    def _fail(self, error: Exception) -> None:
        head, self.head = self.head, None
        if head is not None and not head.done():
            head.set_exception(error)
        elif self.response is not None:
            self.response._fail(error)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
