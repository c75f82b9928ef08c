"""What a request is charged (the charges of its key's and its model's budgets), the
``x-ratelimit-*`` headers of a grant, and the 429 of a refusal."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.context import RequestContext
from gateway.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES
from gateway.errors import RateLimitError

from .config import RateLimitConfig
from .store import Charge, Quota

#: Each model endpoint's usage estimate: its ``prompt_tokens`` (messages, ``prompt`` or ``input``) is the charge.
ESTIMATES = {endpoint.name: endpoint.estimate_usage for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES)}
#: The body fields that bound an answer's tokens, in the order they are read (chat, Responses).
MAX_OUTPUT = ("max_completion_tokens", "max_tokens", "max_output_tokens")

Kind = Literal["requests", "tokens", "concurrent"]


@dataclass(frozen=True, slots=True)
class _Planned:
    """A charge and what it means: which limit, and for whom (for messages)."""

    charge: Charge
    kind: Kind
    scope: str


@dataclass(slots=True)
class Plan:
    """The charges of a request, and its prompt estimate (what a token charge settles to when the
    request ends without usage)."""

    charges: list[_Planned]
    prompt: int = 0


def plan(ctx: RequestContext, settings: RateLimitConfig) -> Plan:
    """The charges of the request: its key's limits (over the section's default), its model's.
    Token charges reserve the prompt's estimate plus the answer's bound (``reserve``)."""
    principal = ctx.principal
    key_limits = settings.default_limits
    own = principal.limits if principal is not None else None
    if own is not None:
        key_limits = {**key_limits, **own.set()}
    scopes: list[tuple[str, str, Mapping[str, Any]]] = []
    if key_limits:
        name = principal.name if principal is not None else ""
        who = f"key `{name}`" if principal is not None else "callers without a key"
        scopes.append((f"k:{name}", f"{ctx.model} for {who}", key_limits))
    models: Iterable[Any] = ()
    if settings.model_limits:  # the request's model, and an alias's (transforms)
        upstream = ctx.body.get("model") if ctx.body is not None else None
        models = dict.fromkeys(m for m in (ctx.model, upstream) if isinstance(m, str) and m)
    for model in models:
        model_limits = settings.for_model(model)
        if model_limits is not None:
            scopes.append((f"m:{model}", model, model_limits))
    planned: list[_Planned] = []
    result = Plan(planned)
    tokens: int | None = None
    for bucket, scope, limits in scopes:
        if "requests_per_minute" in limits:
            planned.append(_Planned(Charge(f"{bucket}:requests", limits["requests_per_minute"]), "requests", scope))
        if "tokens_per_minute" in limits:
            if tokens is None:
                result.prompt = _estimate(ctx)
                tokens = result.prompt + reserve(ctx, settings)
            charge = Charge(f"{bucket}:tokens", limits["tokens_per_minute"], tokens)
            planned.append(_Planned(charge, "tokens", scope))
        if "concurrent_requests" in limits:
            lease = settings.concurrency_lease_seconds
            charge = Charge(f"{bucket}:concurrent", limits["concurrent_requests"], window=None, lease=lease)
            planned.append(_Planned(charge, "concurrent", scope))
    return result


def reserve(ctx: RequestContext, settings: RateLimitConfig) -> int:
    """The tokens reserved for the answer: the body's bound (``max_completion_tokens``,
    ``max_tokens`` or ``max_output_tokens``), else ``default_max_tokens``; none for embeddings."""
    if ctx.endpoint == EMBEDDINGS.name or ctx.body is None:
        return 0
    for name in MAX_OUTPUT:
        bound = ctx.body.get(name)
        if type(bound) is int and bound >= 0:
            return bound
    return settings.default_max_tokens


def _estimate(ctx: RequestContext) -> int:
    """The request's prompt tokens, estimated from what its endpoint reads (0 for an unknown endpoint)."""
    estimate = ESTIMATES.get(ctx.endpoint)
    return estimate(ctx.body, {})["prompt_tokens"] if estimate is not None else 0


def headers_of(planned: Sequence[_Planned], quotas: Sequence[Quota]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for requests and tokens: the bucket with the least left."""
    least: dict[str, Quota] = {}
    for p, q in zip(planned, quotas, strict=True):
        if q.remaining is not None and p.kind != "concurrent":
            known = least.get(p.kind)
            if known is None or q.remaining < (known.remaining or 0):
                least[p.kind] = q
    headers: dict[str, str] = {}
    for kind in ("requests", "tokens"):
        quota = least.get(kind)
        if quota is not None:
            headers[f"x-ratelimit-limit-{kind}"] = str(quota.limit)
            headers[f"x-ratelimit-remaining-{kind}"] = str(quota.remaining)
            headers[f"x-ratelimit-reset-{kind}"] = duration(quota.reset)
    return headers


def refusal(planned: Sequence[_Planned], quotas: Sequence[Quota], headers: dict[str, str]) -> RateLimitError:
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
                f"Rate limit reached for {p.scope} on {label}: Limit {q.limit}, Used {q.limit - (q.remaining or 0)}, "
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
