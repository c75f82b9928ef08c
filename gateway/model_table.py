"""The ``models`` table of the YAML: model names (exact, aliases, glob patterns) -> deployments, with
the resilience settings of each model (strategy, retries, fallbacks, timeouts, circuit, hedging).

These are config models only; the ``routing`` plugin turns them into decisions, the pipeline into
retries, timeouts and hedged requests.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentConfig(_Section):
    """One place a model is served: a backend and the model name to ask it for."""

    backend: str = Field(description="name of the backend")
    model: str | None = Field(None, description="model name sent to the backend (default: the requested name)")
    name: str | None = Field(
        None, description="the deployment's name in `x-gateway-backend`, /info and logs (default: the backend's)"
    )
    weight: float = Field(1.0, ge=0, description="share of the traffic (weighted strategy); 0 drains it")

    @property
    def label(self) -> str:
        return self.name or self.backend


class RetryConfig(_Section):
    """Retries before the first byte reaches the client (never after)."""

    attempts: int = Field(1, ge=1, description="tries per request across the model's deployments (1: no retry)")
    backoff: float = Field(0.1, ge=0, description="seconds before retrying a deployment; doubled each time, jittered")
    max_backoff: float = Field(2.0, ge=0, description="the longest back-off")
    max_retry_after: float = Field(
        10.0, ge=0, description="longest upstream Retry-After waited for; longer: that deployment is not retried"
    )
    deadline: float | None = Field(None, gt=0, description="seconds after arrival when no new attempt may start")
    budget: float = Field(
        0.2, ge=0, description="retries may add this fraction of the model's requests (over the last 10 seconds)"
    )
    min_retries_per_second: float = Field(5.0, ge=0, description="retries always allowed, whatever the budget")
    on_status: list[int] | None = Field(
        None,
        description="upstream HTTP statuses that are retried (default: 429 and every 5xx); timeouts and "
        "broken connections always are",
    )

    @field_validator("on_status")
    @classmethod
    def _statuses(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(not 400 <= status <= 599 for status in value):
            raise ValueError("each status must be an HTTP error status, from 400 to 599")
        return value


class TimeoutsConfig(_Section):
    """Seconds; unset: the backend's ``timeout`` (first byte, idle) or no limit (total). Connecting is
    bounded by the backend's own connect timeout, and by ``first_byte``."""

    first_byte: float | None = Field(None, gt=0, description="for the first output of an attempt (may fall back)")
    idle: float | None = Field(None, gt=0, description="between two streamed chunks")
    total: float | None = Field(None, gt=0, description="for the whole response, retries and stream included")


class CircuitConfig(_Section):
    """A circuit breaker per deployment: ``failures`` within ``window`` seconds open it; after
    ``cooldown`` seconds one probe request is let through (half-open), whose outcome closes or reopens it."""

    failures: int = Field(5, ge=1, description="failures within the window that open the circuit")
    window: float = Field(30.0, gt=0, description="seconds over which failures are counted")
    cooldown: float = Field(30.0, gt=0, description="seconds an open circuit turns requests away before a probe")


_PERCENTILE = re.compile(r"^p([1-9][0-9]?)$")


class HedgeConfig(_Section):
    """Hedged requests: when the first deployment has sent nothing after ``delay``, the same request
    starts on a second deployment; the first to answer is served, the other cancelled."""

    delay: float | str = Field(
        "p95", description="seconds, or a percentile of the first deployment's measured time to first byte (`p95`)"
    )
    initial_delay: float = Field(1.0, gt=0, description="the delay while fewer than `min_samples` are measured")
    min_samples: int = Field(20, ge=1, description="first-byte times measured before a percentile is trusted")
    min_delay: float = Field(0.0, ge=0, description="the shortest delay a percentile may give")

    @field_validator("delay")
    @classmethod
    def _delay(cls, value: float | str) -> float | str:
        if isinstance(value, str) and not _PERCENTILE.match(value):
            raise ValueError("must be a number of seconds or a percentile such as `p95`")
        if isinstance(value, float | int) and value < 0:
            raise ValueError("must not be negative")
        return value

    @property
    def percentile(self) -> int | None:
        return int(self.delay[1:]) if isinstance(self.delay, str) else None


Strategy = Literal["weighted", "failover", "least_in_flight", "lowest_latency"]


class ModelRoute(_Section):
    """One entry of the ``models`` table. ``backend`` (+ ``model``) is the short form of one deployment."""

    name: str = Field(min_length=1, description="model name clients use; glob patterns such as `openai/*` allowed")
    aliases: list[str] = Field(default_factory=list, description="other exact names clients may use for it")
    backend: str | None = Field(None, description="name of the backend that serves it (one deployment)")
    model: str | None = Field(None, description="model name sent to the backend (default: the requested name)")
    deployments: list[DeploymentConfig] = Field(default_factory=list, description="several places that serve it")
    strategy: Strategy = Field(
        "weighted", description="weighted (round-robin) | failover (in order) | least_in_flight | lowest_latency"
    )
    fallbacks: list[str] = Field(default_factory=list, description="models to try, in order, when this one fails")
    retry: RetryConfig = Field(default_factory=RetryConfig)
    timeouts: TimeoutsConfig = Field(default_factory=TimeoutsConfig)
    circuit: CircuitConfig | None = Field(None, description="a circuit breaker per deployment (default: none)")
    hedge: HedgeConfig | None = Field(None, description="hedged requests (default: off)")
    response_model: str | None = Field(None, description="the model name responses show (default: the one asked for)")
    strip_prefix: bool = Field(
        True,
        description="a provider wildcard (`openai/*`) asks its deployments for the name without `openai/`; "
        "false: for the name as requested (an upstream whose own names carry it)",
    )

    @model_validator(mode="after")
    def _one_form(self) -> ModelRoute:
        if self.backend is not None and self.deployments:
            raise ValueError("give either `backend` (one deployment) or `deployments`, not both")
        if self.backend is None:
            if not self.deployments:
                raise ValueError("needs a `backend` or a list of `deployments`")
            if self.model is not None:
                raise ValueError("`model` goes on each deployment when `deployments` is given")
        labels = [d.label for d in self.deployments]
        if len(set(labels)) != len(labels):
            raise ValueError("two deployments have the same name (set `name` on each deployment of the same backend)")
        return self

    @cached_property  # plain attributes once computed: read on every request
    def targets(self) -> list[DeploymentConfig]:
        """The deployments of this model, the short form included."""
        return self.deployments or [DeploymentConfig(backend=self.backend, model=self.model)]  # type: ignore[arg-type]

    @property
    def is_pattern(self) -> bool:
        return is_pattern(self.name)

    @cached_property
    def prefix(self) -> str | None:
        """``openai/`` for a provider wildcard ``openai/*``: the part its deployments are not asked
        for (``openai/gpt-4o`` -> ``gpt-4o``) and that its backends' listed models get on /v1/models."""
        head = self.name[:-1]
        return head if self.strip_prefix and self.name.endswith("/*") and not is_pattern(head) else None

    def upstream_name(self, requested: str) -> str:
        """The model name a deployment without its own ``model`` is asked for."""
        return requested[len(self.prefix) :] if self.prefix and requested.startswith(self.prefix) else requested

    @cached_property
    def resilient(self) -> bool:
        """Whether requests for this model may take more than one plain attempt."""
        return self.retry.attempts > 1 or bool(self.fallbacks) or self.hedge is not None


class RouterConfig(_Section):
    """Defaults of every entry of ``models`` (the top-level ``router:``): ``retry``, ``timeouts`` and
    ``circuit`` are merged key by key (an entry's own keys win; ``circuit: null`` turns it off),
    ``fallbacks`` is inherited as a whole list unless the entry gives its own."""

    retry: RetryConfig | None = Field(None, description="retries of every model")
    timeouts: TimeoutsConfig | None = Field(None, description="timeouts of every model")
    circuit: CircuitConfig | None = Field(None, description="a circuit breaker for every model's deployments")
    fallbacks: list[str] | None = Field(None, description="models every model falls back to (not itself)")


INHERITED = ("retry", "timeouts", "circuit")


def inherit(entry: Any, defaults: Mapping[str, Any]) -> Any:
    """A raw ``models`` entry with the ``router`` defaults (raw, already validated) it does not set."""
    if not isinstance(entry, Mapping):
        return entry
    out = dict(entry)
    for key in INHERITED:
        base = defaults.get(key)
        own = entry.get(key, {})
        if isinstance(base, Mapping) and isinstance(own, Mapping):
            out[key] = {**base, **own}
    if "fallbacks" not in entry and defaults.get("fallbacks"):
        out["fallbacks"] = list(defaults["fallbacks"])
    return out


def is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


#: Pattern lookups ``ModelIndex`` remembers (names a client sent that matched a pattern, or none).
MATCHES_KEPT = 1024


class ModelIndex:
    """Exact names and aliases in a dict, patterns in order: ``find`` is one lookup for a known name,
    and for a name a pattern served before (up to ``MATCHES_KEPT`` of them, then it starts again)."""

    __slots__ = ("exact", "matched", "patterns")

    def __init__(self, routes: list[ModelRoute]) -> None:
        self.exact: dict[str, ModelRoute] = {}
        self.patterns: list[ModelRoute] = []
        self.matched: dict[str, ModelRoute | None] = {}
        for route in routes:
            if route.is_pattern:
                self.patterns.append(route)
            else:
                self.exact.setdefault(route.name, route)
            for alias in route.aliases:
                self.exact.setdefault(alias, route)

    def find(self, model: str) -> ModelRoute | None:
        """The route of an exact name or alias, else of the first pattern that matches."""
        route = self.exact.get(model)
        if route is not None or not self.patterns:
            return route
        try:
            return self.matched[model]
        except KeyError:
            pass
        route = next((route for route in self.patterns if fnmatchcase(model, route.name)), None)
        if len(self.matched) >= MATCHES_KEPT:  # many distinct names (a client's typos, a scan): start again
            self.matched.clear()
        self.matched[model] = route
        return route


def table_problems(routes: list[ModelRoute], backends: set[str]) -> list[tuple[str, str]]:
    """Problems a single entry cannot see: unknown backends, pattern aliases, fallbacks nothing serves.
    A name or alias given twice is not one: the first entry wins, as for patterns."""
    problems: list[tuple[str, str]] = []
    known = ", ".join(sorted(backends)) or "none"
    for i, route in enumerate(routes):
        where = f"models[{i}]"
        for j, target in enumerate(route.targets):
            if target.backend not in backends:
                path = f"{where}.backend" if route.backend is not None else f"{where}.deployments[{j}].backend"
                problems.append((path, f"no backend named {target.backend!r} (configured: {known})"))
        for j, alias in enumerate(route.aliases):
            if is_pattern(alias):
                problems.append((f"{where}.aliases[{j}]", f"an alias is an exact name, not a pattern ({alias!r})"))
    index = ModelIndex(routes)
    for i, route in enumerate(routes):
        for j, fallback in enumerate(route.fallbacks):
            found = index.find(fallback)
            if found is None:
                problems.append((f"models[{i}].fallbacks[{j}]", f"no entry in models serves {fallback!r}"))
            elif found is route:
                problems.append((f"models[{i}].fallbacks[{j}]", f"{fallback!r} is this model itself"))
    return problems
