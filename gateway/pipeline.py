"""The one orchestration path of an API request: authenticate, pre-process, route, call the
backend, stream or serialise, and render errors. Handlers in routes.py stay thin around it."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.chat_format import completion_to_chunks, include_usage
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.keys import backends_key, ctx_key, hooks_key, plugin_manager_key
from gateway.schemas import validate_chat_request
from gateway.streaming import DONE, SSE_HEADERS, Watchdog, apply_filters, decode_items, encode_event, flush_filters

log = structlog.get_logger("gateway")

MAX_REQUEST_ID = 200  # a longer X-Request-ID from a client is replaced by a new one
CLIENT_CLOSED = 499
REPLAY_TIMEOUT = 60.0  # nginx's status for a client that left before the response was complete

INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


# The middleware: one context per request, errors rendered, exactly one request_finished ---------


@web.middleware
async def context_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Give the request its context and id, turn any exception into an OpenAI error object, send
    the response, then call ``gateway_request_finished`` once."""
    request_id = request.headers.get("X-Request-ID")
    if not request_id or len(request_id) > MAX_REQUEST_ID:
        request_id = os.urandom(16).hex()
    ctx = RequestContext(request=request, request_id=request_id)
    request[ctx_key] = ctx
    structlog.contextvars.bind_contextvars(request_id=ctx.request_id)
    try:
        try:
            response = await handler(request)
        except asyncio.CancelledError as exc:  # the client left; nothing more can be sent
            ctx.status, ctx.error = CLIENT_CLOSED, exc
            raise
        except Exception as exc:
            ctx.error = exc
            response = await error_response(ctx, exc)
        ctx.status = ctx.status or response.status
        if not response.prepared:  # send it now, so that request_finished comes after the last byte
            try:
                await response.prepare(request)
                await response.write_eof()
            except ConnectionError as exc:
                ctx.status, ctx.error = CLIENT_CLOSED, exc
    finally:
        await request.app[hooks_key].notify("gateway_request_finished", ctx=ctx, error=ctx.error)
    return response


async def add_response_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: the request id and the headers plugins put on ``ctx.response_headers``."""
    ctx = request.get(ctx_key)
    if ctx is not None:
        response.headers["X-Request-ID"] = ctx.request_id
        if ctx.response_headers:
            response.headers.update(ctx.response_headers)


async def render_error(ctx: RequestContext, exc: BaseException) -> GatewayError:
    """The ``GatewayError`` a client sees for ``exc`` (``gateway_handle_error``; a 500 if that fails)."""
    try:
        error = await ctx.request.app[hooks_key].first_result("gateway_handle_error", ctx=ctx, error=exc)
    except Exception:
        log.exception("gateway_handle_error failed", error=repr(exc))
        error = None
    return (
        error if isinstance(error, GatewayError) else InternalError("The server had an error processing your request.")
    )


async def error_response(ctx: RequestContext, exc: BaseException) -> web.Response:
    error = await render_error(ctx, exc)
    return json_response(error.to_dict(), status=error.status, headers=error.headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


# Steps shared by every API endpoint ------------------------------------------------------------


async def read_json(request: web.Request) -> Any:
    """The parsed request body: 413 over the size limit, 400 when it is not JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise PayloadTooLargeError(f"Request body too large: the limit is {request.client_max_size} bytes.") from None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(INVALID_JSON) from None


async def admit(ctx: RequestContext) -> None:
    """Authenticate (``gateway_authenticate``), then pre-process (``gateway_process_request``)."""
    hooks = ctx.request.app[hooks_key]
    ctx.principal = await hooks.first_result("gateway_authenticate", ctx=ctx)
    await hooks.call_all("gateway_process_request", ctx=ctx)


async def json_endpoint(
    ctx: RequestContext, produce: Callable[[RequestContext], Awaitable[dict[str, Any]]]
) -> web.Response:
    """A non-chat API endpoint: admit, produce the response (unless a plugin answered), post-process."""
    await admit(ctx)
    response = ctx.response if ctx.response is not None else await produce(ctx)
    await ctx.request.app[hooks_key].call_all("gateway_process_response", ctx=ctx, response=response)
    return json_response(response)


# Chat completions ------------------------------------------------------------------------------


def resolve_model(ctx: RequestContext, body: dict[str, Any]) -> None:
    """Apply ``default_model`` to the model `default` (and to no model when ``require_model`` is off)."""
    config = ctx.config
    model = body.get("model")
    if config.default_model and (model == "default" or (not model and not config.require_model)):
        body["model"] = model = config.default_model
    if not model:
        raise InvalidRequestError(
            "You must provide a model parameter.", param="model", code="missing_required_parameter"
        )
    if not isinstance(model, str):
        raise InvalidRequestError("Invalid type for 'model': expected a string.", param="model", code="invalid_type")
    ctx.model = model


async def chat_completions(ctx: RequestContext) -> web.StreamResponse:
    """``POST /v1/chat/completions`` from parsing to the last byte."""
    ctx.endpoint = "chat.completions"
    body = await read_json(ctx.request)
    validate_chat_request(body)
    resolve_model(ctx, body)
    ctx.body, ctx.stream = body, bool(body.get("stream"))
    await admit(ctx)
    if ctx.response is not None:
        return await _answer_directly(ctx, ctx.response)

    app = ctx.request.app
    deployment = app[plugin_manager_key].hook.gateway_select_backend(ctx=ctx, backends=app[backends_key])
    if deployment is None:
        raise ModelNotFoundError(ctx.body["model"])
    ctx.deployment = deployment
    backend = deployment.backend
    watchdog = Watchdog(backend.config.timeout)
    chunks = backend.chat(ctx)
    try:
        if ctx.stream:
            return await _stream(ctx, chunks, watchdog)
        response = await _first(ctx, chunks, watchdog)
    finally:
        watchdog.stop()
        await close(chunks)
    await app[hooks_key].call_all("gateway_process_response", ctx=ctx, response=response)
    return json_response(response)


async def close(chunks: AsyncIterator[Any]) -> None:
    """Close a backend's iterator (an async generator ends its upstream call here)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


async def _first(ctx: RequestContext, chunks: AsyncIterator[Any], watchdog: Watchdog) -> Any:
    """The backend's first output, within its timeout."""
    watchdog.waiting()
    try:
        item = await anext(chunks)
    except StopAsyncIteration:
        raise UpstreamError(f"Backend {ctx.backend.name!r} returned no response.") from None
    except asyncio.CancelledError:
        if watchdog.expired():
            raise _timeout(ctx) from None
        raise
    watchdog.idle()
    ctx.first_byte = time.perf_counter()
    return item


def _timeout(ctx: RequestContext) -> UpstreamTimeoutError:
    backend = ctx.backend
    return UpstreamTimeoutError(f"Backend {backend.name!r} did not respond within {backend.config.timeout:g} seconds.")


async def _stream(ctx: RequestContext, chunks: AsyncIterator[Any], watchdog: Watchdog) -> web.StreamResponse:
    """Write the backend's chunks as SSE events as they arrive; errors before the first chunk
    propagate (a JSON error), later ones end the stream with an error event."""
    first = await _first(ctx, chunks, watchdog)
    filters = ctx.request.app[plugin_manager_key].hook.gateway_stream_filter(ctx=ctx)
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(ctx.request)
    ctx.status = response.status
    write, loop = response.write, watchdog.loop
    try:
        try:
            item = first
            if not filters:  # pass-through: the backend's events go out as they are
                while True:
                    await write(encode_event(item))
                    watchdog.since = loop.time()
                    item = await anext(chunks)
                    watchdog.since = None
            else:
                while True:
                    for chunk in apply_filters(filters, decode_items(item)):
                        await write(encode_event(chunk))
                    watchdog.since = loop.time()
                    item = await anext(chunks)
                    watchdog.since = None
        except StopAsyncIteration:
            watchdog.since = None
        except asyncio.CancelledError:
            if watchdog.expired():
                raise _timeout(ctx) from None
            raise
        for chunk in flush_filters(filters):
            await write(encode_event(chunk))
        await write(DONE)
    except ConnectionError as exc:  # the client went away mid-stream
        ctx.status, ctx.error = CLIENT_CLOSED, exc
    except Exception as exc:
        ctx.error = exc
        error = await render_error(ctx, exc)
        try:
            await write(encode_event(error.to_dict()))
        except ConnectionError:
            ctx.status = CLIENT_CLOSED
    return response


async def _answer_directly(ctx: RequestContext, completion: dict[str, Any]) -> web.StreamResponse:
    """Send a response a plugin set on ``ctx.response``: as it is, or as chunks for a stream."""
    if not ctx.stream:
        await ctx.request.app[hooks_key].call_all("gateway_process_response", ctx=ctx, response=completion)
        return json_response(completion)

    async def replay() -> AsyncIterator[dict[str, Any]]:
        for chunk in completion_to_chunks(completion, include_usage(ctx.body or {})):
            yield chunk

    watchdog = Watchdog(REPLAY_TIMEOUT)  # a replay never waits; _stream just needs one
    try:
        return await _stream(ctx, replay(), watchdog)
    finally:
        watchdog.stop()
