"""Rate limits per key and per model: requests and tokens per minute, and concurrent requests.

A key's limits come from ``ctx.principal.limits`` (a ``gateway.limits.Limits``:
``requests_per_minute``, ``tokens_per_minute``, ``concurrent_requests``; the ``auth_api_keys``
plugin puts a key's ``limits`` there), field by field over this section's ``default``, which also
applies to each key without limits of its own; callers without a key share one budget. ``models``
gives a model (exact name or glob) a budget shared by every caller, charged whether the model is
asked for by its name or by an alias that sends the request to it (``ctx.body["model"]`` after
pre-processing). Only calls with a body count (chat completions, completions, embeddings): not
``GET /v1/models``, nor requests refused before pre-processing (by auth).

Windows slide over the last 60 seconds. Tokens are reserved at admission (the prompt's estimate
plus the answer's bound: ``max_completion_tokens``, ``max_tokens`` or ``max_output_tokens``, else
``default_max_tokens``) and settled to the actual usage when the request finishes (to the prompt's
estimate when it reported none), in ``gateway_request_finished``, which runs in the request's
``finally`` (cancellation and a client that leaves included); a concurrency slot is held until then
(a stream's last byte, or the client leaving). Over a limit -> 429 ``rate_limit_exceeded`` with
``Retry-After``; every counted response carries OpenAI's ``x-ratelimit-*`` headers (in place of an
upstream's), unless the store could not tell (Redis down under ``on_error: allow``).

The counters live in a ``LimitStore`` stored on the app under ``store_key``: ``MemoryStore`` here,
or with ``state.store: redis`` ``rate_limit.shared.SharedStore`` over the gateway's state store.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import hookimpl
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.keys import ctx_key
from gateway.state import store_of

from .config import SECTION, RateLimitConfig
from .plan import Plan, duration, headers_of, plan, refusal
from .store import WINDOW, Charge, Grant, LimitStore, MemoryStore, Quota, store_key

__all__ = [
    "WINDOW",
    "Charge",
    "Grant",
    "LimitStore",
    "MemoryStore",
    "Quota",
    "RateLimitConfig",
    "duration",
    "store_key",
]


HELD = f"{SECTION}.held"  # ctx.state: what a request holds (SECTION: its x-ratelimit-* headers)


@dataclass(slots=True)
class _Held:
    """What a granted request holds until it finishes."""

    store: LimitStore
    prompt: int  # the prompt's estimate: what the tokens settle to without usage
    tokens: list[Any] | None = None  # receipts of token charges, settled with the actual usage
    slots: list[Any] | None = None  # receipts of concurrency slots, released


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``rate_limit`` section."""
    register(SECTION, RateLimitConfig)


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """The in-memory store (a test or another plugin may put a different one under ``store_key``),
    and the limits' headers on every response a limit counted."""
    shared = store_of(app)
    if shared.config.store == "redis":  # counters shared by every instance (rate_limit.shared)
        from gateway_plugins.rate_limit.shared import SharedStore

        app[store_key] = limits = SharedStore(shared)
        app.on_cleanup.append(lambda app: limits.close())
    else:
        app[store_key] = MemoryStore()
    app.on_response_prepare.append(_add_headers)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``, after the core's: this gateway's ``x-ratelimit-*`` headers replace
    those a backend passed on from its upstream (the provider account's budget, not the caller's)."""
    ctx = request.get(ctx_key)
    headers = ctx.state.get(SECTION) if ctx is not None else None
    if headers:
        response.headers.update(headers)


@hookimpl(trylast=True)  # after the other pre-processing: refused requests don't count, prompts are final
def gateway_process_request(ctx: RequestContext) -> Awaitable[None] | None:
    """Charge the request to its key's and its model's budgets, or refuse it with 429. (Not ``async
    def``: with the memory store nothing waits, so no coroutine is made; another store's is awaited.)"""
    if ctx.body is None:  # models, info: not counted
        return None
    settings: RateLimitConfig = ctx.config.plugin_config(SECTION)
    principal = ctx.principal
    if not settings.limits_anything and (principal is None or principal.limits is None):
        return None
    planned = plan(ctx, settings)
    if not planned.charges:
        return None
    store = ctx.request.app[store_key]
    if isinstance(store, MemoryStore):
        _admit(ctx, store, planned, store.acquire_now(planned.charges))
        return None
    return _acquire(ctx, store, planned)


async def _acquire(ctx: RequestContext, store: LimitStore, planned: Plan) -> None:
    _admit(ctx, store, planned, await store.acquire(planned.charges))


def _admit(ctx: RequestContext, store: LimitStore, planned: Plan, grant: Grant) -> None:
    """Hold what ``grant`` took until the request finishes, or refuse the request."""
    headers = headers_of(planned.planned, grant.quotas)
    if not grant.granted:
        raise refusal(planned.planned, grant.quotas, headers, ctx.model)
    ctx.state[SECTION] = headers
    if not (planned.tokens or planned.slots):
        return  # nothing to give back when the request ends
    held = ctx.state[HELD] = _Held(store, planned.prompt)
    if planned.tokens:
        held.tokens = [r for p, r in zip(planned.planned, grant.receipts, strict=True) if p.kind == "tokens"]
    if planned.slots:
        held.slots = [r for p, r in zip(planned.planned, grant.receipts, strict=True) if p.kind == "concurrent"]


@hookimpl(tryfirst=True)  # before other observers: a slow (or cancelled) one must not hold the slots
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
    """Free the concurrency slots, and settle the tokens reserved to the actual usage (directly in
    the memory store; another store's coroutine is awaited)."""
    held: _Held | None = ctx.state.pop(HELD, None)
    if held is None:
        return None
    settles: list[tuple[Any, int]] = []
    if held.tokens:
        usage = ctx.usage
        total = usage.get("total_tokens") if usage else None
        if not isinstance(total, int):
            total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0) if usage else held.prompt
        settles = [(receipt, total) for receipt in held.tokens]
    slots = held.slots or ()
    if isinstance(held.store, MemoryStore):
        held.store.finish_now(slots, settles)
        return None
    return held.store.finish(slots, settles)
