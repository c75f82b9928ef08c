"""The response cache (``plugins: cache:``), single-flight and ``Idempotency-Key``.

Cache (``enabled: true``): a chat completion or embeddings request is looked up by its canonical
request key (``gateway.formats.request_key``, scoped by the caller's API key unless ``shared``). A hit
answers in ``gateway_process_request`` by setting ``ctx.response`` (the pipeline streams it as chunks
when the client asked for a stream); a miss stores the final answer when the request ends without an
error: non-streamed from ``gateway_process_response``, streamed from a chunk filter whose flush marks
the stream's clean end (a stream cut mid-way stores nothing). ``X-Gateway-Cache: hit | miss | bypass``
on every answer of those endpoints; ``Cache-Control: no-cache`` skips the lookup, ``no-store`` the
lookup and the store. Requests with ``temperature > 0`` bypass unless ``cache_nondeterministic``.

Single-flight: while a cacheable request is in flight, an identical one waits for its answer.
``Idempotency-Key`` (cache on or off): the same key again gets the first answer (waiting while the
first runs), the same key with another request is a 409 ``idempotency_key_reused``; scoped by API key,
kept ``idempotency_ttl`` seconds. State is per process, kept per config generation.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway import hookimpl
from gateway.errors import InvalidRequestError
from gateway.formats.chat import chunks_to_completion
from gateway.formats.request_key import request_key
from gateway_plugins.cache.store import CacheState, Flight

if TYPE_CHECKING:
    from gateway.context import RequestContext

SECTION = "cache"
HEADER = "X-Gateway-Cache"
REPLAYED = "Idempotent-Replayed"
CACHEABLE = frozenset({"chat.completions", "embeddings"})


class CacheConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="cache answers (Idempotency-Key works either way)")
    ttl: float = Field(300.0, gt=0, description="seconds an answer is kept")
    max_bytes: int = Field(64 * 1024 * 1024, gt=0, description="memory store bound (LRU)")
    shared: bool = Field(False, description="one cache for every API key (default: scoped per key)")
    cache_nondeterministic: bool = Field(False, description="also cache requests with temperature > 0")
    idempotency_ttl: float = Field(86400.0, gt=0, description="seconds an Idempotency-Key is remembered")
    wait: float = Field(600.0, gt=0, description="seconds a follower waits for the request in flight")


class IdempotencyConflictError(InvalidRequestError):
    status = 409
    code = "idempotency_key_reused"


class Pending:
    """What a request that goes upstream owes: the cache entry and flight, the idempotency record."""

    __slots__ = ("answer", "cache_key", "chunks", "flight", "record")

    def __init__(self) -> None:
        self.cache_key: str | None = None
        self.flight: Flight | None = None
        self.record: Flight | None = None
        self.answer: dict[str, Any] | None = None
        self.chunks: list[dict[str, Any]] | None = None


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``cache`` section."""
    register(SECTION, CacheConfig)


def _state(ctx: RequestContext, settings: CacheConfig) -> CacheState:
    state = ctx.generation_state.get(SECTION)
    if state is None:
        state = ctx.generation_state[SECTION] = CacheState(settings.max_bytes)
    return state


def _caller(ctx: RequestContext) -> str:
    """The API key's name (or the client's own key, hashed in the request key), else anonymous."""
    if ctx.principal is not None:
        return "principal:" + ctx.principal.name
    return "key:" + ctx.client_key if ctx.client_key else "anonymous"


def _serve(ctx: RequestContext, answer: bytes) -> None:
    ctx.response = orjson.loads(answer)
    ctx.cache = "hit"
    ctx.response_headers[HEADER] = "hit"


async def _await(flight: Flight, seconds: float) -> bytes | None:
    try:
        return await asyncio.wait_for(asyncio.shield(flight.answer), seconds)
    except TimeoutError:
        return None


@hookimpl(trylast=True)
async def gateway_process_request(ctx: RequestContext) -> None:
    """Answer from the cache or an idempotency record, wait for an identical request in flight, or
    note what the answer must be stored as."""
    body = ctx.body
    if ctx.endpoint not in CACHEABLE or body is None or ctx.response is not None:
        return
    settings: CacheConfig = ctx.config.plugin_config(SECTION)
    headers = ctx.request.headers
    idempotency = headers.get("Idempotency-Key")
    if not settings.enabled and not idempotency:
        return
    state, pending, caller = _state(ctx, settings), Pending(), _caller(ctx)
    if idempotency:
        ikey = request_key("idempotency", {"key": idempotency}, scope=caller)
        exact = request_key(ctx.endpoint, body, scope=caller)
        record = state.idempotency_record(ikey)
        if record is not None:
            if record.request != exact:
                raise IdempotencyConflictError(
                    "This Idempotency-Key was already used with a different request body.", param="Idempotency-Key"
                )
            answer = await _await(record, settings.wait)
            if answer is not None:
                _serve(ctx, answer)
                ctx.response_headers[REPLAYED] = "true"
                return
        record = state.idempotency[ikey] = Flight(exact, time.monotonic() + settings.idempotency_ttl)
        pending.record = record
    control = headers.get("Cache-Control", "").lower()
    nondeterministic = (body.get("temperature") or 0) > 0 and not settings.cache_nondeterministic
    if not settings.enabled:
        pass  # no X-Gateway-Cache: the endpoint is not cacheable
    elif "no-store" in control or nondeterministic:
        ctx.cache = "bypass"
    else:
        key = request_key(ctx.endpoint, body, body.get("model"), "" if settings.shared else caller)
        flight = state.flights.get(key)
        if "no-cache" not in control:
            answer = state.memory.get(key)
            if answer is None and flight is not None:
                answer = await _await(flight, settings.wait)
            if answer is not None:
                _serve(ctx, answer)
                if pending.record is not None:
                    _settle(state, pending, answer)
                return
        ctx.cache = "miss"
        pending.cache_key = key
        if key not in state.flights:
            pending.flight = state.flights[key] = Flight(key)
    if ctx.cache:
        ctx.response_headers[HEADER] = ctx.cache
    if pending.cache_key or pending.record:
        ctx.state[SECTION] = pending


@hookimpl(trylast=True)
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Keep a non-streamed answer to store when the request ends well."""
    pending = ctx.state.get(SECTION)
    if pending is not None:
        pending.answer = response


class _Collect:
    """The chunk filter of a stream to store: keeps every chunk; the flush marks the clean end."""

    __slots__ = ("kept", "pending")

    def __init__(self, pending: Pending) -> None:
        self.pending, self.kept = pending, []

    def __call__(self, chunk: dict[str, Any] | None) -> dict[str, Any] | None:
        if chunk is None:
            self.pending.chunks = self.kept
            return None
        self.kept.append(chunk)
        return chunk


@hookimpl(trylast=True)
def gateway_stream_filter(ctx: RequestContext) -> Any:
    pending = ctx.state.get(SECTION)
    return _Collect(pending) if pending is not None else None


@hookimpl
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> None:
    """Store the answer (none after an error, a cut stream or a non-200) and release the followers."""
    pending: Pending | None = ctx.state.pop(SECTION, None)
    if pending is None:
        return
    state = ctx.generation_state[SECTION]
    answer = None
    if error is None and ctx.status == 200:
        if pending.chunks is not None:
            answer = chunks_to_completion(pending.chunks, ctx.usage)
        elif pending.answer is not None:
            answer = pending.answer if pending.answer.get("usage") else {**pending.answer, "usage": ctx.usage}
    data = orjson.dumps(answer) if answer is not None else None
    if data is not None and pending.cache_key is not None:
        settings: CacheConfig = ctx.config.plugin_config(SECTION)
        ctx.cache_stored = state.memory.set(pending.cache_key, data, settings.ttl)
    _settle(state, pending, data)


def _settle(state: CacheState, pending: Pending, data: bytes | None) -> None:
    if pending.flight is not None:
        pending.flight.settle(data)
        if state.flights.get(pending.flight.request) is pending.flight:
            del state.flights[pending.flight.request]
    record = pending.record
    if record is not None:
        record.settle(data)
        if data is None:  # the first attempt failed: a retry with the key may try again
            for key, kept in list(state.idempotency.items()):
                if kept is record:
                    del state.idempotency[key]
