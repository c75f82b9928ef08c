"""The request's frame: a context and an id for every request, every exception rendered as an
OpenAI error object, and exactly one ``gateway_request_finished`` after the last byte."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Awaitable, Callable, Mapping

import structlog
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import ServiceUnavailableError, WriteTimeoutError
from gateway.keys import ctx_key, generations_key, lifecycle_key
from gateway.lifecycle import SHUTTING_DOWN
from gateway.replies import CLIENT_CLOSED, error_response, render_error

MAX_REQUEST_ID = 200  # a longer X-Request-ID from a client is neither logged nor echoed
OVERHEAD_HEADER = "X-Gateway-Overhead-Ms"
LARGE_BODY = 64 * 1024  # aiohttp waits on the client only past its write buffer's high-water mark
#: Where request ids come from: seeded from ``os.urandom`` (again in a forked worker), then no
#: system call per id; a plugin that seeds ``random`` does not make them repeat.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


@web.middleware
async def context_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request its context and id, turn any exception into an OpenAI error object, send
    the response, then call ``gateway_request_finished`` once."""
    request_id = _ids.getrandbits(128).to_bytes(16).hex()  # the gateway's own: a client's is not unique
    client_request_id = request.headers.get("X-Request-ID")
    if client_request_id is not None and (
        len(client_request_id) > MAX_REQUEST_ID or not client_request_id.isprintable()
    ):
        client_request_id = None
    generations = request.app[generations_key]
    ctx = RequestContext(
        request=request,
        request_id=request_id,
        client_request_id=client_request_id,
        client_key=bearer_token(request.headers),
        generation=generations.pin(),  # the config this request uses to its last byte
    )
    request[ctx_key] = ctx
    if client_request_id:
        structlog.contextvars.bind_contextvars(request_id=request_id, client_request_id=client_request_id)
    else:
        structlog.contextvars.bind_contextvars(request_id=request_id)
    lifecycle = request.app[lifecycle_key]
    task = asyncio.current_task()
    lifecycle.tasks.add(task)  # type: ignore[arg-type]
    response: web.StreamResponse | None = None
    try:
        try:
            response = await handler(request)
        except asyncio.CancelledError as exc:
            if not lifecycle.ended_by_shutdown():  # else the client left: nothing more can be sent
                ctx.status, ctx.error = CLIENT_CLOSED, exc
                raise
            ctx.error = ServiceUnavailableError(SHUTTING_DOWN)
            response = await error_response(ctx, ctx.error)
        except Exception as exc:
            ctx.error = exc
            if ctx.headers_sent:  # a response is under way: a second one cannot follow it
                await render_error(ctx, exc)  # logs it
                ctx.status = ctx.status or 500
                _close(request)
                raise asyncio.CancelledError from None  # aiohttp drops the connection quietly
            response = await error_response(ctx, exc)
        ctx.status = ctx.status or response.status
        # Send it now, so that request_finished comes after the last byte. (aiohttp prepares a
        # FileResponse again after the handler whatever its state: that one it sends itself.)
        if not response.prepared and not isinstance(response, web.FileResponse):
            try:
                limit = _write_limit(ctx, response)
                if limit is None:  # no timer for a body the socket's buffer takes at once
                    await _send(request, response)
                else:
                    async with asyncio.timeout(limit):
                        await _send(request, response)
            except ConnectionError as exc:
                ctx.status, ctx.error = CLIENT_CLOSED, exc
            except TimeoutError:  # the client is not reading
                seconds = ctx.config.server.write_timeout
                ctx.status, ctx.error = (
                    CLIENT_CLOSED,
                    WriteTimeoutError(f"The client accepted no data for {seconds:g} s."),
                )
                ctx.log.warning("client stopped reading; response cut", write_timeout=seconds)
                if request.transport is not None:
                    request.transport.abort()
    finally:
        lifecycle.tasks.discard(task)  # type: ignore[arg-type]
        try:
            await ctx.generation.hooks.notify("gateway_request_finished", ctx=ctx, error=ctx.error)
        finally:
            generations.unpin(ctx.generation)
            _let_go(request, ctx, response)
    return response


def _let_go(request: web.Request, ctx: RequestContext, response: web.StreamResponse | None) -> None:
    """Nothing of a finished request outlives it: the request and its context stop pointing at each
    other, and the tracebacks of ``ctx.error`` (and of the errors it chains) drop their frames, which
    hold the body. Both are then freed at once, not by the cyclic collector's next run. (A
    ``FileResponse``, which aiohttp sends after this, keeps its context for its headers.) aiohttp keeps
    a kept-alive connection's last request until the next one arrives: its body is dropped too."""
    error, seen = ctx.error, set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__
    if not isinstance(response, web.FileResponse):
        request.pop(ctx_key, None)
        if getattr(request, "_read_bytes", None) is not None:  # aiohttp's copy of the body read
            request._read_bytes = None


async def _send(request: web.Request, response: web.StreamResponse) -> None:
    await response.prepare(request)
    await response.write_eof()


def _write_limit(ctx: RequestContext, response: web.StreamResponse) -> float | None:
    """``server.write_timeout`` for a body large enough to wait on the client (a smaller one goes to
    the socket's buffer at once: no timer for it)."""
    body = response.body if isinstance(response, web.Response) else None
    return ctx.config.server.write_timeout if isinstance(body, bytes) and len(body) > LARGE_BODY else None


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header (scheme in any case; the seeds' clients
    send ``bearer<key>`` with no space), or None."""
    value = headers.get("Authorization")
    if not value or value[:6].lower() != "bearer":
        return None
    return value[6:].strip() or None


def _close(request: web.Request) -> None:
    if request.transport is not None:
        request.transport.close()


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request id and the headers plugins put on ``ctx.response_headers``.

    ``X-Gateway-Request-ID`` is always the gateway's own id (the log's ``request_id``); ``X-Request-ID``
    is the id the client sent (the log's ``client_request_id``), else the upstream's (a backend forwards
    it, so the openai SDK's ``_request_id`` is the provider's), else the gateway's.

    A response from a backend also carries ``X-Gateway-Overhead-Ms``: the time so far not spent
    waiting on backends (for a stream, up to its first byte, when the headers go out)."""
    ctx = request.get(ctx_key)
    if ctx is not None:
        ctx.headers_sent = True
        headers = response.headers
        headers["X-Gateway-Request-ID"] = ctx.request_id
        headers["X-Request-ID"] = ctx.client_request_id or ctx.request_id
        if ctx.deployment is not None:
            headers[OVERHEAD_HEADER] = f"{max(ctx.duration - ctx.upstream_wait, 0.0) * 1000:.2f}"
        if ctx.response_headers:
            headers.update(ctx.response_headers)
            if ctx.client_request_id:  # a request id the client sent is echoed, whatever else
                headers["X-Request-ID"] = ctx.client_request_id
