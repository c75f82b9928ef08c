"""The one orchestration path of an API request: authenticate, pre-process, route, call the
backend, stream or serialise, and render errors. Handlers in routes.py stay thin around it.

The model endpoints (chat completions, legacy completions, embeddings) share one path,
``model_endpoint``; what differs between them is an ``endpoints.Endpoint``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from gateway.context import Deployment, RequestContext
from gateway.endpoints import Endpoint, Ingress
from gateway.errors import (
    AuthenticationError,
    InvalidRequestError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UpstreamTimeoutError,
    WriteTimeoutError,
)
from gateway.formats.chat import include_usage, streamed_chars, usage
from gateway.replies import CLIENT_CLOSED, json_response, render_error
from gateway.resilience.attempts import backend_failure, interrupted
from gateway.resilience.first_output import first_output
from gateway.resilience.watchdog import Watchdog
from gateway.serving.server import BodyTimeout
from gateway.streaming import (
    DONE,
    SSE_HEADERS,
    EventStreamResponse,
    apply_filters,
    decode_items,
    encode_event,
    flush_filters,
)

REPLAY_TIMEOUT = 60.0  # a replayed response never waits; _stream just needs a watchdog

INVALID_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
    "HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


# Steps shared by every API endpoint ------------------------------------------------------------


#: orjson writes at most MAX_DEPTH levels (it reads 1024): a deeper body could not be sent upstream, so
#: one deeper than ALLOWED_DEPTH (room for a backend's own envelope) is refused at the door.
MAX_DEPTH = 254
ALLOWED_DEPTH = 238
TOO_DEEP = f"The request body is nested too deeply (the limit is {ALLOWED_DEPTH} levels)."


async def read_json(request: web.Request) -> Any:
    """The parsed request body: 413 over the size limit (at once when the declared length is over it),
    408 when it stalls (``gateway.serving.server``), 400 when it is not JSON."""
    if (request.content_length or 0) > request.client_max_size:
        raise _too_large(request)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise _too_large(request) from None
    except BodyTimeout as exc:
        raise RequestTimeoutError(str(exc)) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(INVALID_JSON) from None
    if len(raw) > 2 * ALLOWED_DEPTH:  # a shorter body cannot nest that deep
        # orjson tells, at a quarter of the cost of counting the brackets (100 µs for 100 KB)
        wrapped = body
        for _ in range(MAX_DEPTH - ALLOWED_DEPTH):  # room for a backend that nests the body deeper
            wrapped = [wrapped]
        try:
            orjson.dumps(wrapped)
        except TypeError:
            raise InvalidRequestError(TOO_DEEP) from None
    return body


def _too_large(request: web.Request) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body too large: the limit is {request.client_max_size} bytes.")


NOT_UTF8_KEY = "Incorrect API key provided: it is not valid UTF-8."


def refuse_unreadable_keys(ctx: RequestContext) -> None:
    """401 for a key (``Authorization: Bearer`` or ``x-api-key``) that is not valid UTF-8: no plugin
    could match it and no upstream could be sent it (aiohttp keeps such bytes as surrogates)."""
    for key in (ctx.client_key, ctx.request.headers.get("x-api-key")):
        if key is not None and not key.isascii():
            try:
                key.encode()
            except UnicodeEncodeError:
                raise AuthenticationError(NOT_UTF8_KEY) from None


async def admit(ctx: RequestContext, ingress: Ingress | None = None) -> None:
    """Authenticate (``gateway_authenticate``), then (a front door's ``admitted``) pre-process
    (``gateway_process_request``)."""
    hooks = ctx.generation.hooks
    refuse_unreadable_keys(ctx)
    ctx.principal = await hooks.first_result("gateway_authenticate", ctx=ctx) or ctx.principal
    if ingress is not None:
        await ingress.admitted(ctx)
    await hooks.call_all("gateway_process_request", ctx=ctx)


async def json_endpoint(
    ctx: RequestContext, produce: Callable[[RequestContext], Awaitable[dict[str, Any]]]
) -> web.Response:
    """A non-model API endpoint (models, info): admit, produce the response (unless a plugin answered),
    post-process."""
    await admit(ctx)
    response = ctx.response if ctx.response is not None else await produce(ctx)
    return await respond(ctx, response)


async def respond(
    ctx: RequestContext, response: dict[str, Any], endpoint: Endpoint | None = None, ingress: Ingress | None = None
) -> web.Response:
    """A non-streamed answer: ``gateway_process_response``, then JSON (in the endpoint's dialect)."""
    await ctx.generation.hooks.call_all("gateway_process_response", ctx=ctx, response=response)
    translate_out = endpoint.translate_out if endpoint is not None else None
    if translate_out is not None and endpoint is not None and endpoint.native(ctx, ctx.backend):
        translate_out = None  # the backend answered in the client's dialect
    if ingress is not None or translate_out is not None:
        if ctx.usage is not None and not response.get("usage"):
            response["usage"] = ctx.usage
        if ingress is not None:
            response = ingress.answer(response)
            await ingress.finished()  # kept before the client has it
        elif translate_out is not None:
            response = translate_out(response, ctx.model or "")
    return json_response(response)


# Model endpoints: chat completions, completions, embeddings -------------------------------------


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


async def model_endpoint(ctx: RequestContext, endpoint: Endpoint) -> web.StreamResponse:
    """A model endpoint (``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``)
    from parsing to the last byte."""
    ctx.endpoint = endpoint.name
    body = await read_json(ctx.request)
    endpoint.validate(body)
    ingress = endpoint.ingress(ctx, body) if endpoint.ingress is not None else None
    if ingress is not None:
        body = ingress.chat_body()
    elif endpoint.translate_in is not None:  # another dialect's front door: the chat form from here on
        ctx.client_body, body = body, endpoint.translate_in(body)
    resolve_model(ctx, body)
    ctx.body, ctx.stream = body, endpoint.to_chunks is not None and bool(body.get("stream"))
    await admit(ctx, ingress)
    if ctx.response is not None:
        return await _answer_directly(ctx, endpoint, ctx.response, ingress)

    served = await first_output(ctx, endpoint.call, select_backend)  # retries, fallbacks, hedging
    response = None
    try:
        if ctx.stream:
            return await _stream(ctx, served.chunks, served.watchdog, served.first, endpoint, ingress)
        response = served.first
    finally:
        await served.close(ctx)
        if ctx.usage is None:  # the backend reported none
            _estimate_usage(ctx, endpoint, response)
    return await respond(ctx, response, endpoint, ingress)


def _estimate_usage(ctx: RequestContext, endpoint: Endpoint, response: Any) -> None:
    """Set ``ctx.usage`` to an estimate (see ``gateway.formats.chat``): the prompt from the request,
    the completion from the response, or for a stream from what ``_stream`` counted. The response the
    client gets is left as the backend made it."""
    if ctx.stream:
        ctx.usage = usage(endpoint.estimate_usage(ctx.body, {})["prompt_tokens"], ctx.streamed_tokens)
    else:
        ctx.usage = endpoint.estimate_usage(ctx.body, response if isinstance(response, dict) else {})
    ctx.usage_estimated = True


def select_backend(ctx: RequestContext) -> Deployment | None:
    """``gateway_select_backend`` of the request's generation: the deployment for the next attempt."""
    generation = ctx.generation
    return generation.hooks.call("gateway_select_backend", ctx=ctx, backends=generation.backends)


def _failure(ctx: RequestContext, watchdog: Watchdog, exc: BaseException) -> BaseException:
    """What to raise for an exception out of the backend's iterator: ``backend_failure`` for an error;
    for a cancellation the gateway caused itself (the backend's silence, the end of the shutdown
    grace period) the error to answer with; else the exception as it is (the client left)."""
    if isinstance(exc, asyncio.CancelledError):
        return interrupted(ctx, watchdog) or exc
    return backend_failure(ctx, exc) if isinstance(exc, Exception) else exc


async def _stream(
    ctx: RequestContext,
    chunks: AsyncIterator[Any],
    watchdog: Watchdog,
    first: Any,
    endpoint: Endpoint,
    ingress: Ingress | None = None,
) -> web.StreamResponse:
    """Write the backend's first output and the chunks after it as SSE events as they arrive; a
    failure ends the stream with one error event, no [DONE]. Unless the backend ``reports_usage``,
    the output is counted for a usage estimate (``ctx.streamed_tokens``): a chunk dict's text, a
    pass-through block's ``data:`` events (one ``bytes.count``; see ``gateway.formats.chat``)."""
    native = endpoint.translate_in is not None and endpoint.native(ctx, ctx.backend)  # the client's dialect
    filters = ctx.generation.hooks.call("gateway_stream_filter", ctx=ctx)
    if native:  # chunk filters read chat chunks: a native stream passes as it is (see Backend.native)
        filters = []
    # pass-through: the headers go with the first event; a filter may hold that back, so not then
    response = (web.StreamResponse if filters else EventStreamResponse)(headers=SSE_HEADERS)
    await response.prepare(ctx.request)
    ctx.status = response.status
    loop, item, send = watchdog.loop, first, response.write
    watchdog.watch_writes(ctx.config.server.write_timeout)

    async def write(data: bytes) -> None:  # the watchdog cuts a write the client does not accept
        watchdog.writing = loop.time()
        await send(data)
        watchdog.writing = None

    backend = ctx.backend
    # the count is for an estimate, made only if the backend reports no usage, and for an encoder,
    # which tells it when its chunks held none: a pass-through stream stops counting once usage is known
    counting = backend is not None and not backend.reports_usage
    events = chars = 0
    encoder = None
    if ingress is not None:
        encoder = ingress.encoder()
    elif endpoint.stream_encoder is not None and not native:  # another dialect, translated chunk by chunk
        encoder = endpoint.stream_encoder(ctx.model or "", ctx.body or {})
    tail = b""  # the stream's last bytes, sent with its end in one write
    try:  # ConnectionError here comes from a write: the client went away
        try:
            if encoder is not None:
                await write(encoder.start())
            while True:
                ctx.chunks += 1
                if counting and (ctx.usage is None or encoder is not None):  # see ``counting`` above
                    if type(item) is bytes:
                        events += item.count(b"data:") - item.endswith(DONE)
                    else:
                        chars += streamed_chars(item)
                if encoder is not None:  # another dialect: each chunk translated
                    for chunk in apply_filters(filters, decode_items(item)) if filters else decode_items(item):
                        data = encoder.feed(chunk)
                        if data:
                            await write(data)
                elif filters:
                    for chunk in apply_filters(filters, decode_items(item)):
                        await write(encode_event(chunk))
                elif type(item) is not bytes:
                    await write(encode_event(item))
                elif item.endswith(DONE):  # the last block, the upstream's [DONE] in it
                    await response.write_eof(item)  # the events, [DONE] and the end in one write
                else:  # pass-through: the backend's events go out as they are
                    await write(item)
                watchdog.since = since = loop.time()
                try:
                    item = await anext(chunks)
                except StopAsyncIteration:
                    break
                except BaseException as exc:
                    raise _failure(ctx, watchdog, exc) from None
                finally:
                    waited = loop.time() - since
                    ctx.upstream_wait += waited
                watchdog.since = None
                if waited > ctx.max_gap:
                    ctx.max_gap = waited
            watchdog.since = None
            if encoder is not None:
                ending = b"".join(encoder.feed(chunk) for chunk in flush_filters(filters))
                ending += encoder.end(events + (chars + 3) // 4)
                if ingress is not None:
                    await ingress.finished()
                tail = ending
            elif not native:  # a native stream ends as its dialect ends it
                tail = b"".join([*(encode_event(chunk) for chunk in flush_filters(filters)), DONE])
        except ConnectionError:
            raise
        except Exception as exc:  # the backend failed (already a GatewayError), or a plugin's filter
            ctx.error = exc
            if watchdog.reason == "deadline" and isinstance(exc, UpstreamTimeoutError):
                ctx.status = exc.status  # the gateway's own time limit cut it: logged as 504
            rendered = await render_error(ctx, exc)
            if encoder is not None:
                tail = encoder.error(rendered)
            elif native and endpoint.error_event is not None:
                tail = endpoint.error_event(rendered)
            else:
                tail = encode_event(rendered.to_dict())
        await response.write_eof(tail)
    except ConnectionError as exc:
        ctx.status, ctx.error = CLIENT_CLOSED, exc
    except asyncio.CancelledError:
        if not watchdog.expired():
            raise  # the client left, or the shutdown grace period ended (the middleware tells which)
        _cut_while_writing(ctx, watchdog)
    finally:
        if counting:
            ctx.streamed_tokens = events + (chars + 3) // 4
    return response


def _cut_while_writing(ctx: RequestContext, watchdog: Watchdog) -> None:
    """The watchdog fired while a write to the client was blocked (it is not reading): the request's
    time limit (504) or ``server.write_timeout``. No error event could get through: drop the connection."""
    if watchdog.reason == "deadline":
        name = ctx.backend.name if ctx.backend else "?"
        ctx.status, ctx.error = (
            504,
            UpstreamTimeoutError(f"Backend {name!r} did not finish within the request's time limit."),
        )
    else:
        seconds = ctx.config.server.write_timeout
        ctx.status, ctx.error = CLIENT_CLOSED, WriteTimeoutError(f"The client accepted no data for {seconds:g} s.")
        ctx.log.warning("client stopped reading; stream cut", write_timeout=seconds)
    if ctx.request.transport is not None:
        ctx.request.transport.abort()  # its unsent data would keep it open


async def _answer_directly(
    ctx: RequestContext, endpoint: Endpoint, completion: dict[str, Any], ingress: Ingress | None = None
) -> web.StreamResponse:
    """Send a response a plugin set on ``ctx.response``: as it is, or as chunks for a stream."""
    if completion.get("usage") is None:  # a plugin's answer without usage: estimate it
        completion["usage"] = endpoint.estimate_usage(ctx.body, completion)
        ctx.usage_estimated = True
    ctx.usage = completion["usage"]
    if not ctx.stream or endpoint.to_chunks is None:
        return await respond(ctx, completion, endpoint, ingress)
    first, *rest = endpoint.to_chunks(completion, include_usage(ctx.body or {}))

    async def replay() -> AsyncIterator[dict[str, Any]]:
        for chunk in rest:
            yield chunk

    watchdog = Watchdog(REPLAY_TIMEOUT)
    ctx.first_byte = time.perf_counter()
    try:
        return await _stream(ctx, replay(), watchdog, first, endpoint, ingress)
    finally:
        watchdog.stop()
