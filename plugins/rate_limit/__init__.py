"""Rate limits per key and per model: requests and tokens per minute, and concurrent requests.

A key's limits come from ``ctx.principal.metadata["limits"]`` (``requests_per_minute``,
``tokens_per_minute``, ``concurrent_requests``; the ``auth_api_keys`` plugin puts a key's ``limits``
there), field by field over this section's ``default``, which also applies to each key without
limits of its own; callers without a key share one budget. ``models`` gives a model (exact name or
glob) a budget shared by every caller, charged whether the model is asked for by its name or by an
alias that sends the request to it (``ctx.body["model"]`` after pre-processing). Only calls with a
body count (chat completions, completions, embeddings): not ``GET /v1/models``, nor requests refused
before pre-processing (by auth).

Windows slide over the last 60 seconds. Tokens are charged with the prompt's estimate before the
call and corrected with the actual usage when the request finishes; a concurrency slot is held until
then (a stream's last byte, or the client leaving). Over a limit -> 429 ``rate_limit_exceeded`` with
``Retry-After``; every counted response carries OpenAI's ``x-ratelimit-*`` headers (in place of an
upstream's).

The counters live in a ``LimitStore`` (``MemoryStore`` here; one shared by several instances fits
the same interface), stored on the app under ``store_key``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from gateway import hookimpl
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from gateway.errors import RateLimitError
from gateway.keys import ctx_key
from gateway_plugins.rate_limit.store import (
    Charge,
    Kind,
    LimitStore,
    MemoryStore,
    Quota,
    store_key,
)

SECTION = "rate_limit"
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")
#: Each model endpoint's usage estimate: its ``prompt_tokens`` (messages, ``prompt`` or ``input``) is the charge.
ESTIMATES = {endpoint.name: endpoint.estimate_usage for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS)}


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt estimated before, corrected after")
    concurrent_requests: int | None = Field(None, ge=1, description="requests (streams included) in progress")


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Limits = Field(default_factory=Limits, description="each key's limits unless the key sets its own")
    models: dict[str, Limits] = Field(
        default_factory=dict, description="model name or glob -> a budget shared by every caller"
    )

    _default: dict[str, int] = PrivateAttr(default_factory=dict)
    _models: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

    def model_post_init(self, context: Any) -> None:
        """The limits as plain dicts, once: requests only read them."""
        self._default = self.default.model_dump(exclude_none=True)
        self._models = {name: limits.model_dump(exclude_none=True) for name, limits in self.models.items()}

    @functools.cached_property
    def limits_anything(self) -> bool:
        """Whether any limit is set here (a key's own limits aside): when not, and the caller's key
        sets none, a request needs no planning at all."""
        return bool(self._default or self._models)

    def for_model(self, model: str) -> dict[str, int] | None:
        """The limits of ``model``: its exact entry, else the first pattern that matches."""
        if model in self._models:
            return self._models[model]
        return next((limits for pattern, limits in self._models.items() if fnmatchcase(model, pattern)), None)


@dataclass(frozen=True, slots=True)
class _Planned:
    """A charge and what it means: which limit, and for whom (for messages)."""

    charge: Charge
    kind: Kind
    scope: str


@dataclass(slots=True)
class _Held:
    """What a granted request holds until it finishes."""

    store: LimitStore
    headers: dict[str, str]  # OpenAI's x-ratelimit-* headers of this grant
    tokens: list[Any] = field(default_factory=list)  # receipts of token charges, settled with the actual usage
    slots: list[Any] = field(default_factory=list)  # receipts of concurrency slots, released


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``rate_limit`` section."""
    register(SECTION, RateLimitConfig)


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """The in-memory store (a test or another plugin may put a different one under ``store_key``),
    and the limits' headers on every response a limit counted."""
    app[store_key] = MemoryStore()
    app.on_response_prepare.append(_add_headers)


async def _add_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``, after the core's: this gateway's ``x-ratelimit-*`` headers replace
    those a backend passed on from its upstream (the provider account's budget, not the caller's)."""
    ctx = request.get(ctx_key)
    held = ctx.state.get(SECTION) if ctx is not None else None
    if held is not None:
        response.headers.update(held.headers)


@hookimpl(trylast=True)  # after the other pre-processing: refused requests don't count, prompts are final
async def gateway_process_request(ctx: RequestContext) -> None:
    """Charge the request to its key's and its model's budgets, or refuse it with 429."""
    if ctx.body is None:  # models, info: not counted
        return
    settings: RateLimitConfig = ctx.config.plugin_config(SECTION)
    principal = ctx.principal
    if not settings.limits_anything and (principal is None or "limits" not in principal.metadata):
        return
    planned = _plan(ctx, settings)
    if not planned:
        return
    store = ctx.request.app[store_key]
    grant = await store.acquire([p.charge for p in planned])
    headers = _headers(planned, grant.quotas)
    if not grant.granted:
        raise _refusal(planned, grant.quotas, headers)
    held = _Held(store, headers)
    for p, receipt in zip(planned, grant.receipts, strict=True):
        if p.kind == "tokens":
            held.tokens.append(receipt)
        elif p.kind == "concurrent":
            held.slots.append(receipt)
    ctx.state[SECTION] = held


@hookimpl(tryfirst=True)  # before other observers: a slow (or cancelled) one must not hold the slots
async def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> None:
    """Free the concurrency slots, and charge the actual tokens instead of the estimate."""
    held: _Held | None = ctx.state.pop(SECTION, None)
    if held is None:
        return
    for receipt in held.slots:
        await held.store.release(receipt)
    usage = ctx.usage
    if usage and held.tokens:
        total = usage.get("total_tokens")
        if not isinstance(total, int):
            total = (usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0)
        for receipt in held.tokens:
            await held.store.settle(receipt, total)


def _plan(ctx: RequestContext, settings: RateLimitConfig) -> list[_Planned]:
    principal = ctx.principal
    key_limits = settings._default
    own = principal.metadata.get("limits") if principal is not None else None
    if isinstance(own, Mapping):
        key_limits = {**key_limits, **{name: own[name] for name in LIMIT_FIELDS if own.get(name) is not None}}
    scopes: list[tuple[str, str, Mapping[str, Any]]] = []
    if key_limits:
        name = principal.name if principal is not None else ""
        who = f"key `{name}`" if principal is not None else "callers without a key"
        scopes.append((f"key:{name}", f"{ctx.model} for {who}", key_limits))
    upstream = ctx.body.get("model") if ctx.body is not None else None  # an alias's model (transforms)
    for model in dict.fromkeys(m for m in (ctx.model, upstream) if isinstance(m, str) and m):
        model_limits = settings.for_model(model)
        if model_limits is not None:
            scopes.append((f"model:{model}", model, model_limits))
    planned: list[_Planned] = []
    tokens: int | None = None
    for bucket, scope, limits in scopes:
        if "requests_per_minute" in limits:
            planned.append(_Planned(Charge(f"{bucket}:requests", limits["requests_per_minute"]), "requests", scope))
        if "tokens_per_minute" in limits:
            if tokens is None:
                tokens = _estimate(ctx)
            charge = Charge(f"{bucket}:tokens", limits["tokens_per_minute"], tokens)
            planned.append(_Planned(charge, "tokens", scope))
        if "concurrent_requests" in limits:
            charge = Charge(f"{bucket}:concurrent", limits["concurrent_requests"], window=None)
            planned.append(_Planned(charge, "concurrent", scope))
    return planned


def _estimate(ctx: RequestContext) -> int:
    """The request's prompt tokens, estimated from what its endpoint reads (0 for an unknown endpoint)."""
    estimate = ESTIMATES.get(ctx.endpoint)
    return estimate(ctx.body, {})["prompt_tokens"] if estimate is not None else 0


def _headers(planned: Sequence[_Planned], quotas: Sequence[Quota]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for requests and tokens: the bucket with the least left."""
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        found = [q for p, q in zip(planned, quotas, strict=True) if p.kind == kind]
        if found:
            quota = min(found, key=lambda q: q.remaining)
            headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(quota.reset)
    return headers


def _refusal(planned: Sequence[_Planned], quotas: Sequence[Quota], headers: dict[str, str]) -> RateLimitError:
    """The 429 for the first limit the request broke; ``Retry-After`` when all of them will let it in."""
    refused = [(p, q) for p, q in zip(planned, quotas, strict=True) if q.wait != 0]
    too_large = [(p, q) for p, q in refused if q.wait == math.inf]
    p, q = too_large[0] if too_large else refused[0]
    if too_large:
        message = (
            f"Request too large for {p.scope} on tokens per min (TPM): Limit {q.limit}, Requested {p.charge.amount}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
    else:
        wait = max((w for _, quota in refused if (w := quota.wait) is not None), default=1.0)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if p.kind == "concurrent":
            message = f"Too many concurrent requests for {p.scope}: Limit {q.limit}. Please try again when one ends."
        else:
            label = "requests per min (RPM)" if p.kind == "requests" else "tokens per min (TPM)"
            message = (
                f"Rate limit reached for {p.scope} on {label}: Limit {q.limit}, Used {q.limit - q.remaining}, "
                f"Requested {p.charge.amount}. Please try again in {duration(wait)}."
            )
    error = RateLimitError(message, headers=headers)
    if p.kind == "tokens":
        error.type = "tokens"  # type: ignore[misc]  # OpenAI's type names the limit
    return error


def duration(seconds: float) -> str:
    """A duration as OpenAI's reset headers write it (Go's format): ``17ms``, ``1s``, ``6m0s``, ``1h2m3.5s``."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    milliseconds = round(seconds * 1000)
    hours, rest = divmod(milliseconds, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"
