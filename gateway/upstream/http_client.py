"""A lean HTTP/1.1 client for the requests a pass-through backend makes on every call: one pool of
keep-alive connections to one upstream origin, an ``asyncio.Protocol`` per connection and httptools
(llhttp) to parse the answer. It does what the hot path needs and no more (no redirects, cookies or
proxies), at a fraction of ``aiohttp.ClientSession``'s cost per request.

- The request's head and body go out in one write; the answer's body is read as it arrives, every
  buffered piece joined into one block per read, reading paused above ``HIGH_WATER`` bytes.
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
import zlib
from collections.abc import Mapping
from typing import Any

import httptools
import yarl
from aiohttp import ClientOSError, ClientPayloadError, ServerDisconnectedError
from multidict import CIMultiDict, CIMultiDictProxy

#: Bytes of body buffered before the connection stops reading from the upstream.
HIGH_WATER = 256 * 1024
#: Seconds an idle connection is kept for reuse.
KEEPALIVE = 15.0
#: Seconds the rest of an answer released unfinished may take to arrive (the end of a stream after
#: its last event, typically) for its connection to be reused; after that it is closed.
DRAIN = 1.0


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
        head = [f"{method} {target} HTTP/1.1\r\n".encode(), self._head]
        if headers:
            head.append("".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode())
        if body is not None or method == "POST":
            head.append(b"Content-Length: %d\r\n" % len(body or b""))
        head.append(b"\r\n")
        if body:
            head.append(body)
        return await connection.send(b"".join(head))

    def _idle_connection(self) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while self._idle:
            connection = self._idle.pop()
            if not connection.closed and now - connection.idle_since < KEEPALIVE:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
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

    def _done(self, connection: _Connection, reusable: bool) -> None:
        """A connection's answer is over: back to the pool (the oldest idle one closed if it has
        expired), or closed."""
        if self._slots is not None:
            self._slots.release()
        if not reusable or self.closed:
            connection.close()
            return
        idle = self._idle
        connection.idle_since = now = asyncio.get_running_loop().time()
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
        self.transport: asyncio.Transport | None = None
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
            self._fail(ClientPayloadError(f"the upstream's answer is not valid HTTP: {exc}"))
            self.close()

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

    def on_body(self, body: bytes) -> None:
        if self.response is not None:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.response is not None:
            self.response._finish()

    # Use

    async def send(self, data: bytes) -> Response:
        """Write a request and wait for its answer's head."""
        assert self.transport is not None
        self.response, self.head = None, asyncio.get_running_loop().create_future()
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


class Response:
    """An upstream's answer: ``status``, ``reason``, ``headers``, and its body read with ``read`` or
    iterated as it arrives (``iter_any``). ``content`` is the response itself, as aiohttp spells it
    (``response.content.read(n)``). ``release`` after use: the connection goes back to the pool if
    the answer is complete, else it is closed."""

    def __init__(self, connection: _Connection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.connection = connection
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        self.complete = False
        self.until_close = False
        self.keep_alive = False
        self.released = False
        self._drain: asyncio.TimerHandle | None = None
        self._settled = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        encoding = headers.get("Content-Encoding", "").lower()
        self._decoder: Any = (
            zlib.decompressobj(wbits=31 if encoding == "gzip" else zlib.MAX_WBITS)
            if encoding in ("gzip", "deflate")
            else None
        )

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").partition(";")[0].strip().lower()

    @property
    def content(self) -> Response:
        return self

    # Filled by the connection

    def _feed(self, data: bytes) -> None:
        if self.released or self._error is not None:  # draining: the rest is not wanted; or failed
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                encoding = self.headers["Content-Encoding"]
                self._fail(ClientPayloadError(f"the answer's {encoding} body is corrupt: {exc}"))
                self.connection.close()
                return
            if not data:
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._paused and self.connection.transport is not None:
            self._paused = True
            self.connection.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        if self._error is not None:  # the body failed (a corrupt encoding): it stays unfinished
            return
        self.complete = True
        if self._drain is not None:
            self._drain.cancel()
            self._settle()
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.complete or self._error is not None:  # the first error is the one that tells why
            return
        self._error = error
        if self._drain is not None:
            self._drain.cancel()
            self._settle()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # Read by the caller

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = asyncio.get_running_loop().create_future()
        await self._waiter

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            if self.connection.transport is not None:
                self.connection.transport.resume_reading()
        return data

    async def read(self, limit: int = -1) -> bytes:
        """The body, or its first ``limit`` bytes (then the rest is not read)."""
        parts, size = [], 0
        while not self.complete and (limit < 0 or size < limit):
            if self._chunks:  # taken as it arrives, so that reading resumes above HIGH_WATER
                parts.append(block := self._take())
                size += len(block)
            else:
                await self._wait()
        if self._chunks:
            parts.append(self._take())
        data = b"".join(parts)
        return data if limit < 0 else data[:limit]

    def iter_any(self) -> Response:
        """The body as it arrives: every piece buffered so far, joined, per iteration."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.complete:
                raise StopAsyncIteration
            await self._wait()
        return self._take()

    def release(self) -> None:
        """Done with the answer: its connection back to the pool if reusable, else closed. An
        unfinished answer is drained first, for ``DRAIN`` seconds at most."""
        if self.released:
            return
        self.released = True
        self._chunks.clear()
        if self._paused and self.connection.transport is not None:
            self.connection.transport.resume_reading()
        if self.complete or self._error is not None or self.connection.closed or self.until_close:
            self._settle()
        else:
            self._drain = asyncio.get_running_loop().call_later(DRAIN, self._settle)

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        connection = self.connection
        connection.response = None
        reusable = self.complete and self.keep_alive and not connection.closed
        connection.client._done(connection, reusable)
