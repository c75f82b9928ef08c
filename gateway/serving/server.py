"""The HTTP/1.1 connection: deadlines for a request's headers (``server.header_timeout``) and body
(``server.body_timeout``), and aiohttp's own parser errors answered as OpenAI error objects.

aiohttp has no read timeouts of its own (only the keep-alive timer of an idle connection), and
answers a request it cannot parse in ``text/plain`` with the offending bytes echoed. ``GatewayRunner``
serves an app over ``GatewayProtocol``, which adds both; ``serve`` runs it until SIGINT/SIGTERM as
``web.run_app`` would. The deadlines follow nginx's: the whole header block within
``header_timeout`` of its first byte (or of the connection), at most ``body_timeout`` between two
reads of the body.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import orjson
import structlog
from aiohttp import http_exceptions, web
from aiohttp.http import HttpVersion11
from aiohttp.web_protocol import ERROR, RequestHandler

from gateway.errors import GatewayError, InternalError, InvalidRequestError, RequestTimeoutError
from gateway.keys import generations_key
from gateway.log_output import batch_lines

log = structlog.get_logger("gateway")

#: Objects the cyclic collector may count before it runs (Python's default: 700). A request frees what
#: it allocates by reference counting; at 700 a collection ran every few dozen requests, scanning what
#: the requests in flight hold, for nothing (about 5 µs per request).
GC_THRESHOLD = 10_000
HEADER_TIMEOUT = "The request's headers did not arrive within {} s."
BODY_TIMEOUT = "The request body stalled: no data for {} s."
ERROR_11 = ERROR._replace(version=HttpVersion11)


class BodyTimeout(TimeoutError):
    """Set on a request's payload when its body stalls; ``gateway.pipeline.read_json`` answers 408.
    (A ``TimeoutError``: aiohttp's lingering read after the response takes it as the end.)"""


#: What a parser error says (never the request's bytes: aiohttp's messages quote them).
_PARSE_PROBLEMS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.InvalidHeader, "a header is invalid"),
    (http_exceptions.BadStatusLine, "the request line is invalid"),
    (http_exceptions.InvalidURLError, "the URL is invalid"),
)


def parse_problem(exc: BaseException | None) -> str:
    """A fixed description of aiohttp's parser error ``exc``."""
    for cls, text in _PARSE_PROBLEMS:
        if isinstance(exc, cls):
            return text
    message = str(getattr(exc, "message", "")).lower()
    if "too many headers" in message:
        return "the request has too many headers"
    if "content-length" in message and "transfer-encoding" in message:
        return "the request has both Content-Length and Transfer-Encoding"
    return "the request is not valid HTTP/1.1"


class GatewayProtocol(RequestHandler):
    """aiohttp's ``RequestHandler`` with the header and body deadlines and OpenAI-shaped parser errors.
    The per-read cost is one clock read (``_last_read``); the timers re-arm only when they fire, so a
    request on a kept-alive connection costs no timer of its own."""

    __slots__ = ("_body", "_body_handle", "_header_handle", "_headers_since", "_last_read", "_limits")

    def __init__(self, manager: web.Server, *, limits: Callable[[], Any], **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits  # the live config's `server` section (a reload changes new connections)
        self._header_handle: asyncio.TimerHandle | None = None
        self._body_handle: asyncio.TimerHandle | None = None
        self._body: Any = None  # the payload being read
        self._last_read = 0.0
        self._headers_since: float | None = None  # when the awaited request's first bytes came
        make_request = self._request_factory
        assert make_request is not None

        def request_factory(message: Any, payload: Any, *args: Any) -> web.BaseRequest:
            self._headers_since = None
            if message is ERROR:  # aiohttp's stand-in request for a parser error is HTTP/1.0: answer in 1.1
                message = ERROR_11
            if not payload.is_eof():
                self._body = payload
                self._body_handle = self._loop.call_at(self._last_read + self._limits().body_timeout, self._check_body)
            return make_request(message, payload, *args)

        self._request_factory = request_factory

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._last_read = self._headers_since = self._loop.time()  # its first request is awaited
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
        self._header_handle = self._headers_since = None
        if self._body_handle is not None:
            self._body_handle.cancel()
        self._body = self._body_handle = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._last_read = now = self._loop.time()
        if self._headers_since is None and self._current_request is None and not self._messages:
            self._headers_since = now  # the first bytes of the next request on a kept-alive connection
            if self._header_handle is None:
                self._arm_header_timer()
        super().data_received(data)

    def _arm_header_timer(self) -> None:
        assert self._headers_since is not None
        due = self._headers_since + self._limits().header_timeout
        self._header_handle = self._loop.call_at(due, self._check_headers)

    def _check_headers(self) -> None:
        """The header deadline of the request awaited when the timer was set: met (the timer stops
        until the next request's first bytes), not yet due (re-armed), or passed (408)."""
        self._header_handle = None
        if self._headers_since is None or self._current_request is not None or self.transport is None:
            return  # its headers came; a request being served gives the next one its own deadline
        seconds = self._limits().header_timeout
        if self._loop.time() < self._headers_since + seconds:
            self._arm_header_timer()  # a later request's: it began after this timer was set
            return
        log.warning("request headers timed out", status=408, header_timeout=seconds, peer=self._peer())
        error = RequestTimeoutError(HEADER_TIMEOUT.format(seconds))
        body = orjson.dumps(error.to_dict())
        head = (
            "HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.force_close()

    def _check_body(self) -> None:
        self._body_handle = None
        payload = self._body
        if payload is None or payload.is_eof() or payload.exception() is not None:
            self._body = None
            return
        seconds = self._limits().body_timeout
        due = self._last_read + seconds
        if self._loop.time() < due:
            self._body_handle = self._loop.call_at(due, self._check_body)
            return
        self._body = None
        payload.set_exception(BodyTimeout(BODY_TIMEOUT.format(seconds)))
        self.close()  # after the 408 is sent

    def _peer(self) -> str | None:
        peer = self.peername
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        """An OpenAI error object for a request aiohttp could not parse (logged in one WARNING line,
        echoing nothing of it) or a failure outside the gateway's middleware (logged with its traceback)."""
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        error: GatewayError
        if status >= 500:
            log.error("error handling request", status=status, peer=self._peer(), exc_info=exc)
            error = InternalError("The server had an error processing your request.")
        else:
            problem = parse_problem(exc)
            log.warning("malformed request", status=status, problem=problem, peer=self._peer())
            error = InvalidRequestError(f"Malformed HTTP request: {problem}.", code="malformed_request")
        response = web.Response(body=orjson.dumps(error.to_dict()), status=status, content_type="application/json")
        response.force_close()
        return response


class GatewayServer(web.Server):
    """aiohttp's ``Server`` whose connections are ``GatewayProtocol``s."""

    limits: Callable[[], Any]

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, limits=self.limits, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """``web.AppRunner`` serving the gateway app over ``GatewayProtocol`` (any other app as aiohttp would)."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        generations = self.app.get(generations_key)
        if generations is None:  # not a gateway app (a test's fake upstream)
            return server
        server.__class__ = GatewayServer  # the same object, its protocol factory ours
        server.limits = lambda: generations.current.config.server  # type: ignore[attr-defined]
        return server


def serve(app: web.Application, *, host: str, port: int, loop: asyncio.AbstractEventLoop, **options: Any) -> None:
    """``web.run_app`` over ``GatewayRunner``: serve until SIGINT or SIGTERM, then shut down gracefully.
    ``options``: ``reuse_port`` for the site, the rest for the runner."""
    reuse_port = options.pop("reuse_port", None)

    async def main() -> None:
        runner = GatewayRunner(app, handle_signals=True, **options)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, reuse_port=reuse_port).start()
            _tune_collector()
            batch_lines(asyncio.get_running_loop())
            await asyncio.Event().wait()  # until GracefulExit
        finally:
            await runner.cleanup()
            batch_lines(None)

    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        rest = asyncio.all_tasks(loop)
        for pending in rest:
            pending.cancel()
        loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _tune_collector() -> None:
    """Once the app is up: what start-up built (modules, the config, the plugins) is moved out of the
    cyclic collector's sight (``gc.freeze``), so that a full collection no longer walks it (about 40 ms
    each, every few thousand requests); and the youngest generation is collected less often."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
