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
kept ``idempotency_ttl`` seconds. State is per process, kept per config generation; with
``state.store: redis`` (and ``store: auto``) answers, single-flight locks and idempotency records are
in Redis, shared by every instance (``gateway_plugins.cache.shared``), and a Redis fault is a bypass.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway import hookimpl
from gateway.errors import InvalidRequestError
from gateway.formats.chat import chunks_to_completion
from gateway.formats.request_key import request_key
from gateway.state import StoreUnavailable
from gateway_plugins.cache.shared import Held, IdempotencyConflict, SharedCache
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
    store: Literal["auto", "memory"] = Field(
        "auto", description="auto: the state store when it is redis (shared by every instance), else memory"
    )
    max_entry_bytes: int = Field(1024 * 1024, gt=0, description="largest answer stored (bounds the Redis store)")
    lock_ttl: float = Field(
        5.0, gt=0, le=600, description="Redis: seconds a single-flight lock lives unless its holder renews it"
    )


class IdempotencyConflictError(InvalidRequestError):
    status = 409
    code = "idempotency_key_reused"


class Pending:
    """What a request that goes upstream owes: the cache entry and flight, the idempotency record."""

    __slots__ = ("answer", "cache_key", "chunks", "flight", "held", "record")

    def __init__(self) -> None:
        self.cache_key: str | None = None
        self.flight: Flight | None = None
        self.record: Flight | None = None
        self.answer: dict[str, Any] | None = None
        self.chunks: list[dict[str, Any]] | None = None
        self.held = Held()  # the Redis lock and idempotency record (state.store: redis)

    def owes(self) -> bool:
        """Whether the answer is to be stored or handed on (else the request holds nothing)."""
        return bool(self.cache_key or self.flight or self.record or self.held.record)


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``cache`` section."""
    register(SECTION, CacheConfig)


def _state(ctx: RequestContext, settings: CacheConfig) -> CacheState:
    state = ctx.generation_state.get(SECTION)
    if state is None:
        store = ctx.state_store
        shared = settings.store == "auto" and store.config.store == "redis"
        state = CacheState(settings.max_bytes, SharedCache(store, settings.lock_ttl) if shared else None)
        ctx.generation_state[SECTION] = state
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
def gateway_process_request(ctx: RequestContext) -> Awaitable[None] | None:
    """Answer from the cache or an idempotency record, wait for an identical request in flight, or
    note what the answer must be stored as. (Sync, and async only for a request it has work for.)"""
    if ctx.endpoint not in CACHEABLE or ctx.body is None or ctx.response is not None:
        return None
    settings: CacheConfig = ctx.config.plugin_config(SECTION)
    idempotency = ctx.request.headers.get("Idempotency-Key")
    if not settings.enabled and not idempotency:
        return None
    return _process_request(ctx, settings, idempotency)


async def _process_request(ctx: RequestContext, settings: CacheConfig, idempotency: str | None) -> None:
    state, pending = _state(ctx, settings), Pending()
    ctx.state[SECTION] = pending  # from here on, request_finished releases what it holds
    caller = _caller(ctx)
    if idempotency and (answer := await _idempotent(ctx, state, settings, pending, caller, idempotency)):
        _serve(ctx, answer)
        ctx.response_headers[REPLAYED] = "true"
        del ctx.state[SECTION]
        return
    try:
        await _lookup(ctx, state, settings, pending, caller)
    finally:
        if not pending.owes():
            ctx.state.pop(SECTION, None)


async def _lookup(ctx: RequestContext, state: CacheState, settings: CacheConfig, pending: Pending, caller: str) -> None:
    """The cache's part: a hit, a wait for the identical request in flight, or a miss to store."""
    body, headers = ctx.body or {}, ctx.request.headers
    control = headers.get("Cache-Control", "").lower()
    nondeterministic = (body.get("temperature") or 0) > 0 and not settings.cache_nondeterministic
    if not settings.enabled:
        return  # no X-Gateway-Cache: the endpoint is not cacheable
    if "no-store" in control or nondeterministic:
        ctx.cache = ctx.response_headers[HEADER] = "bypass"
        return
    key = request_key(ctx.endpoint, body, body.get("model"), "" if settings.shared else caller)
    read = "no-cache" not in control
    flight = state.flights.get(key)
    answer = None
    if read:
        answer = state.memory.get(key) if state.shared is None else None
        if answer is None and flight is not None:
            answer = await _await(flight, settings.wait)
    if answer is None and key not in state.flights:
        pending.flight = state.flights[key] = Flight(key)
    if answer is None and state.shared is not None:
        try:
            answer = await state.shared.lookup(key, read, settings.wait, pending.held)
        except StoreUnavailable:  # served without the cache; the store's breaker logs the outage once
            ctx.cache = ctx.response_headers[HEADER] = "bypass"
            return
    if answer is not None:
        _serve(ctx, answer)
        await _settle(ctx, state, pending, answer)
        pending.flight = pending.record = None
        return
    if state.shared is not None:
        state.shared.keep(pending.held)
    pending.cache_key = key
    ctx.cache = ctx.response_headers[HEADER] = "miss"


async def _idempotent(
    ctx: RequestContext, state: CacheState, settings: CacheConfig, pending: Pending, caller: str, idempotency: str
) -> bytes | None:
    """The first answer given to ``Idempotency-Key`` (waiting while it runs), else None with the
    record now this request's; 409 for the key with another request."""
    ikey = request_key("idempotency", {"key": idempotency}, scope=caller)
    exact = request_key(ctx.endpoint, ctx.body or {}, scope=caller)
    if state.shared is not None:
        try:
            answer = await state.shared.claim_record(ikey, exact, settings.wait, pending.held)
        except IdempotencyConflict:
            raise _conflict() from None
        except StoreUnavailable:
            if ctx.state_store.config.on_error == "deny":
                raise
            return None  # on_error: allow: served, without the record (the breaker logs the outage)
        state.shared.keep(pending.held)
        return answer
    record = state.idempotency_record(ikey)
    if record is not None:
        if record.request != exact:
            raise _conflict()
        answer = await _await(record, settings.wait)
        if answer is not None:
            return answer
    pending.record = state.idempotency[ikey] = Flight(exact, time.monotonic() + settings.idempotency_ttl)
    return None


def _conflict() -> IdempotencyConflictError:
    return IdempotencyConflictError(
        "This Idempotency-Key was already used with a different request body.", param="Idempotency-Key"
    )


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
    return _Collect(pending) if pending is not None and pending.owes() else None


@hookimpl
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
    """Store the answer (none after an error, a cut stream or a non-200) and release the followers."""
    pending: Pending | None = ctx.state.pop(SECTION, None)
    return None if pending is None else _finished(ctx, error, pending)


async def _finished(ctx: RequestContext, error: BaseException | None, pending: Pending) -> None:
    state = ctx.generation_state[SECTION]
    answer = None
    if error is None and ctx.status == 200:
        if pending.chunks is not None:
            answer = chunks_to_completion(pending.chunks, ctx.usage)
        elif pending.answer is not None:
            answer = pending.answer if pending.answer.get("usage") else {**pending.answer, "usage": ctx.usage}
    data = orjson.dumps(answer) if answer is not None else None
    settings: CacheConfig = ctx.config.plugin_config(SECTION)
    key = pending.cache_key if data is not None and len(data) <= settings.max_entry_bytes else None
    if key is not None:
        if state.shared is None:
            ctx.cache_stored = state.memory.set(key, data, settings.ttl)
        else:
            ctx.cache_stored = len(data)  # written below, unless Redis fails
    await _settle(ctx, state, pending, data, key)


async def _settle(
    ctx: RequestContext, state: CacheState, pending: Pending, data: bytes | None, key: str | None = None
) -> None:
    """Hand ``data`` (None: the request failed) to the followers and the idempotency record; with
    Redis, store it under ``key`` and release what the request holds there."""
    if pending.flight is not None:
        pending.flight.settle(data)
        if state.flights.get(pending.flight.request) is pending.flight:
            del state.flights[pending.flight.request]
    record = pending.record
    if record is not None:
        record.settle(data)
        if data is None:  # the first attempt failed: a retry with the key may try again
            for ikey, kept in list(state.idempotency.items()):
                if kept is record:
                    del state.idempotency[ikey]
    held = pending.held
    held.stop()
    if state.shared is not None and (key or held.lock or held.record):
        # a task of its own, so that a client who leaves (a cancellation) never leaves a lock behind
        task = asyncio.ensure_future(_write(state.shared, ctx.config.plugin_config(SECTION), held, key, data))
        state.writes.add(task)
        task.add_done_callback(state.writes.discard)
        await asyncio.shield(task)


async def _write(shared: SharedCache, settings: CacheConfig, held: Held, key: str | None, data: bytes | None) -> None:
    """The answer into Redis, the idempotency record settled, the lock released (or let expire)."""
    try:
        if key is not None and data is not None:
            await shared.store_answer(key, data, settings.ttl, held)
        await shared.settle_record(data, settings.idempotency_ttl, held)
        await shared.release(held)
    except StoreUnavailable:
        pass  # what is held expires by itself after lock_ttl
