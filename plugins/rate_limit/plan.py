"""What a request is charged (the charges of its key's and its model's budgets), the
``x-ratelimit-*`` headers of a grant, and the 429 of a refusal."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.context import Principal, RequestContext
from gateway.endpoints import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES
from gateway.errors import RateLimitError

from .config import RateLimitConfig
from .store import WINDOW, Charge, Quota

#: Each model endpoint's usage estimate: its ``prompt_tokens`` (messages, ``prompt`` or ``input``) is the charge.
ESTIMATES = {endpoint.name: endpoint.estimate_usage for endpoint in (CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES)}
#: The body fields that bound an answer's tokens, in the order they are read (chat, Responses).
MAX_OUTPUT = ("max_completion_tokens", "max_tokens", "max_output_tokens")

Kind = Literal["requests", "tokens", "concurrent"]
MAX_CACHED = 10_000  # plans of keys (and of models) remembered per config (then forgotten, all at once)


@dataclass(frozen=True, slots=True)
class _Planned:
    """A charge and what it means: which limit, and for whom (for messages): a key's limit is
    ``<model> for <scope>``, a model's is ``<scope>``, the model."""

    charge: Charge
    kind: Kind
    scope: str
    of_key: bool = False

    def with_tokens(self, tokens: int) -> _Planned:
        return _Planned(Charge(self.charge.bucket, self.charge.limit, tokens), "tokens", self.scope, self.of_key)


@dataclass(slots=True)
class Plan:
    """The charges of a request (``planned[i]`` says what ``charges[i]`` is), and its prompt
    estimate (what a token charge settles to when the request ends without usage)."""

    planned: Sequence[_Planned]
    charges: Sequence[Charge]
    prompt: int = 0
    tokens: bool = False  # a token charge is among them
    slots: bool = False  # a concurrency slot is among them


_NONE = Plan((), ())


def plan(ctx: RequestContext, settings: RateLimitConfig) -> Plan:
    """The charges of the request: its key's limits (over the section's default), its model's.
    Token charges reserve the prompt's estimate plus the answer's bound (``reserve``). What a key
    or a model is charged is worked out once per config (``RateLimitConfig.plans``), and only a
    token charge's amount per request."""
    keys, models = settings.plans
    principal = ctx.principal
    name, own = (None, None) if principal is None else (principal.name, principal.limits)
    known = keys.get(name)
    if known is None or known[0] is not own:  # a key's limits are one object (else worked out again)
        if len(keys) >= MAX_CACHED:
            keys.clear()
        known = keys[name] = (own, _of_key(principal, settings))
    result = known[1]
    if settings.model_limits:  # the request's model, and an alias's (transforms)
        upstream = ctx.body.get("model") if ctx.body is not None else None
        for model in dict.fromkeys(m for m in (ctx.model, upstream) if isinstance(m, str) and m):
            of_model = models.get(model)
            if of_model is None:
                if len(models) >= MAX_CACHED:
                    models.clear()
                of_model = models[model] = _of_model(model, settings)
            if of_model.planned:
                result = _joined(result, of_model)
    if result.tokens:
        prompt = _estimate(ctx)
        tokens = prompt + reserve(ctx, settings)
        planned = [p.with_tokens(tokens) if p.kind == "tokens" else p for p in result.planned]
        result = Plan(planned, [p.charge for p in planned], prompt, True, result.slots)
    return result


def _of_key(principal: Principal | None, settings: RateLimitConfig) -> Plan:
    """The charges of a key's limits (its own over the section's default)."""
    limits = settings.default_limits
    if principal is not None and principal.limits is not None:
        limits = {**limits, **principal.limits.set()}
    if not limits:
        return _NONE
    name = principal.name if principal is not None else ""
    who = f"key `{name}`" if principal is not None else "callers without a key"
    return _charges(f"k:{name}", who, limits, settings, of_key=True)


def _of_model(model: str, settings: RateLimitConfig) -> Plan:
    limits = settings.for_model(model)
    return _NONE if limits is None else _charges(f"m:{model}", model, limits, settings, of_key=False)


def _charges(bucket: str, scope: str, limits: Mapping[str, int], settings: RateLimitConfig, *, of_key: bool) -> Plan:
    """The charges of one budget (a token charge's amount is set per request)."""
    planned: list[_Planned] = []
    if "requests_per_minute" in limits:
        planned.append(_Planned(Charge(f"{bucket}:requests", limits["requests_per_minute"]), "requests", scope, of_key))
    if "tokens_per_minute" in limits:
        planned.append(_Planned(Charge(f"{bucket}:tokens", limits["tokens_per_minute"], 0), "tokens", scope, of_key))
    if "concurrent_requests" in limits:
        lease = settings.concurrency_lease_seconds
        charge = Charge(f"{bucket}:concurrent", limits["concurrent_requests"], window=None, lease=lease)
        planned.append(_Planned(charge, "concurrent", scope, of_key))
    charges = tuple(p.charge for p in planned)
    return Plan(tuple(planned), charges, tokens="tokens_per_minute" in limits, slots="concurrent_requests" in limits)


def _joined(first: Plan, second: Plan) -> Plan:
    if not first.planned:
        return second
    planned, charges = (*first.planned, *second.planned), (*first.charges, *second.charges)
    return Plan(planned, charges, tokens=first.tokens or second.tokens, slots=first.slots or second.slots)


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


#: The header names of each kind of window limit, in the order they are sent.
_NAMES = {
    kind: tuple(f"x-ratelimit-{what}-{kind}" for what in ("limit", "remaining", "reset"))
    for kind in ("requests", "tokens")
}


def headers_of(planned: Sequence[_Planned], quotas: Sequence[Quota]) -> dict[str, str]:
    """OpenAI's ``x-ratelimit-*`` headers, for requests and tokens: the bucket with the least left."""
    if len(quotas) == 1:  # one limit: no comparing
        p, q = planned[0], quotas[0]
        if q.remaining is None or p.kind == "concurrent":
            return {}
        limit, remaining, reset = _NAMES[p.kind]
        left = _FULL if q.reset == WINDOW else duration(q.reset)
        return {limit: str(q.limit), remaining: str(q.remaining), reset: left}
    least: dict[str, Quota] = {}
    for p, q in zip(planned, quotas, strict=True):
        if q.remaining is not None and p.kind != "concurrent":
            known = least.get(p.kind)
            if known is None or q.remaining < (known.remaining or 0):
                least[p.kind] = q
    headers: dict[str, str] = {}
    for kind, (limit, remaining, reset) in _NAMES.items():
        quota = least.get(kind)
        if quota is not None:
            headers[limit] = str(quota.limit)
            headers[remaining] = str(quota.remaining)
            headers[reset] = _FULL if quota.reset == WINDOW else duration(quota.reset)
    return headers


def refusal(
    planned: Sequence[_Planned], quotas: Sequence[Quota], headers: dict[str, str], model: str | None
) -> RateLimitError:
    """The 429 for the first limit the request broke; ``Retry-After`` when all of them will let it in."""
    refused = [(p, q) for p, q in zip(planned, quotas, strict=True) if q.wait != 0]
    too_large = [(p, q) for p, q in refused if q.wait == math.inf]
    p, q = too_large[0] if too_large else refused[0]
    scope = f"{model} for {p.scope}" if p.of_key else p.scope
    if too_large:
        message = (
            f"Request too large for {scope} on tokens per min (TPM): Limit {q.limit}, Requested {p.charge.amount}. "
            "The input or output tokens must be reduced in order to run successfully."
        )
    else:
        wait = max((w for _, quota in refused if (w := quota.wait) is not None), default=1.0)
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        if p.kind == "concurrent":
            message = f"Too many concurrent requests for {scope}: Limit {q.limit}. Please try again when one ends."
        else:
            label = "requests per min (RPM)" if p.kind == "requests" else "tokens per min (TPM)"
            message = (
                f"Rate limit reached for {scope} on {label}: Limit {q.limit}, Used {q.limit - (q.remaining or 0)}, "
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


_FULL = duration(WINDOW)  # a granted memory charge's reset, written once
