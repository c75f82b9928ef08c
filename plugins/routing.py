"""The default router (``trylast``): the YAML ``models`` table -> a deployment.

A model (an exact name, an alias, or the first pattern that matches) has one or more deployments.
Of those available (weight above 0, circuit not open) the model's strategy picks one: ``weighted``
(smooth weighted round-robin), ``failover`` (the first in the listed order: the others take over
when it fails or its circuit is open), ``least_in_flight``, or ``lowest_latency`` (the moving
average of time to first byte; unmeasured deployments first, and every 20th request in turn so that
every average stays current).

Called again after a failed attempt (``ctx.attempts``), it picks a deployment of the model not tried
yet, else one tried before (up to ``retry.attempts`` tries, within the model's retry budget), else
goes down the model's ``fallbacks`` in order; a model whose context was too short for the request
(``context_length_exceeded``) goes straight to its fallbacks. With nothing left it returns None and
the client gets the last error; when nothing is available before any attempt (every circuit open,
every weight 0), a 503 says when to retry.

Health (requests in flight, time to first byte, circuit) is kept per deployment name and backend,
on the app, so a reload that keeps a backend keeps its deployments' state; /info shows it.
"""

from __future__ import annotations

import math
import weakref
from typing import Any

from aiohttp import web

from gateway import Deployment, hookimpl
from gateway.backend import Backend, BackendRegistry
from gateway.config import GatewayConfig
from gateway.context import Attempt, RequestContext
from gateway.endpoints import INFO
from gateway.errors import ServiceUnavailableError
from gateway.model_table import DeploymentConfig, ModelRoute
from gateway.resilience.retry import RetryBudget, verdict
from gateway.resilience.stats import DeploymentStats

NAME = "routing"
EXPLORE_EVERY = 20  # lowest_latency: every Nth request goes to the next deployment in turn


class HealthRegistry:
    """Every tracked deployment's ``DeploymentStats``, by backend (weakly: a backend a reload dropped
    takes its entries with it) and deployment name."""

    def __init__(self) -> None:
        self._by_backend: weakref.WeakKeyDictionary[Backend, dict[str, DeploymentStats]] = weakref.WeakKeyDictionary()

    def get(self, backend: Backend, name: str, route: ModelRoute) -> DeploymentStats:
        stats = self._by_backend.setdefault(backend, {}).get(name)
        if stats is None:
            stats = self._by_backend[backend][name] = DeploymentStats(name, backend, route.circuit)
        else:
            stats.configure(route.circuit)
        return stats


health_key = web.AppKey("routing_health", HealthRegistry)


class _Target:
    """One deployment of a model, with what the strategies need."""

    __slots__ = ("backend", "config", "current", "fixed", "index", "stats")

    def __init__(self, index: int, config: DeploymentConfig, backend: Backend, stats: DeploymentStats | None) -> None:
        self.index = index
        self.config = config
        self.backend = backend
        self.stats = stats
        self.current = 0.0  # smooth weighted round-robin
        self.fixed: Deployment | None = None  # the Deployment, when the upstream model does not vary

    @property
    def name(self) -> str:
        return self.config.label

    def available(self) -> bool:
        return self.config.weight > 0 and (self.stats is None or self.stats.available())


class _Plan:
    """A model's deployments and how to choose among them."""

    __slots__ = ("budget", "picks", "route", "simple", "targets")

    def __init__(self, route: ModelRoute, backends: BackendRegistry, health: HealthRegistry) -> None:
        self.route = route
        tracked = route.circuit is not None or route.hedge is not None or route.strategy != "weighted"
        self.targets = []
        for i, config in enumerate(route.targets):
            backend = backends[config.backend]
            stats = health.get(backend, config.label, route) if tracked else None
            target = _Target(i, config, backend, stats)
            if config.model is not None or not route.is_pattern:
                target.fixed = Deployment(backend, config.model or route.name, config.label, route, stats)
            self.targets.append(target)
        single = len(self.targets) == 1 and not tracked and self.targets[0].config.weight > 0
        self.simple = self.targets[0] if single else None  # nothing to choose: no work per request
        retries = route.retry.attempts > 1
        self.budget = RetryBudget(route.retry.budget, route.retry.min_retries_per_second) if retries else None
        self.picks = 0

    def deployment(self, target: _Target, requested: str) -> Deployment:
        if target.fixed is not None:
            return target.fixed
        return Deployment(target.backend, self.route.upstream_name(requested), target.name, self.route, target.stats)

    def pick(self, skip: set[str]) -> _Target | None:
        """The strategy's choice among the available deployments not in ``skip``."""
        candidates = [t for t in self.targets if t.name not in skip and t.available()]
        if not candidates:
            return None
        self.picks += 1
        strategy = self.route.strategy
        if len(candidates) == 1 or strategy == "failover":
            chosen = candidates[0]
        elif strategy == "least_in_flight":
            chosen = min(candidates, key=lambda t: (t.stats.in_flight if t.stats else 0, t.index))
        elif strategy == "lowest_latency" and self.picks % EXPLORE_EVERY:
            chosen = min(candidates, key=_latency)
        else:  # weighted, and lowest_latency's turns
            chosen = _smooth_weighted(candidates)
        if chosen.stats is not None:
            chosen.stats.acquire()
        return chosen

    def retry_in(self) -> float:
        """Seconds until a deployment of this model may take a request again (inf: all drained)."""
        circuits = [t.stats.circuit for t in self.targets if t.config.weight > 0 and t.stats is not None]
        waits = [circuit.retry_in() for circuit in circuits if circuit is not None]
        return min(waits) if waits else math.inf


def _latency(target: _Target) -> tuple[float, int]:
    average = target.stats.latency.average if target.stats else None
    return (average if average is not None else 0.0, target.index)


def _smooth_weighted(candidates: list[_Target]) -> _Target:
    """nginx's smooth weighted round-robin: even spread, in proportion to the weights."""
    total = 0.0
    best = candidates[0]
    for target in candidates:
        target.current += target.config.weight
        total += target.config.weight
        if target.current > best.current:
            best = target
    best.current -= total
    return best


class Router:
    """The routing decisions of one config generation."""

    def __init__(self, config: GatewayConfig, backends: BackendRegistry, health: HealthRegistry) -> None:
        self.config = config
        self.index = config.model_index
        self.plans = {id(route): _Plan(route, backends, health) for route in config.models}
        self.health = [t.stats for plan in self.plans.values() for t in plan.targets if t.stats is not None]

    def select(self, ctx: RequestContext) -> Deployment | None:
        model = ctx.body["model"] if ctx.body else ctx.model
        route = self.index.find(model)
        if route is None:
            return None
        plan = self.plans[id(route)]
        attempts = ctx.attempts
        if not attempts:
            if route.response_model is not None:
                ctx.model = route.response_model
            if plan.simple is not None:
                return plan.deployment(plan.simple, model)
        chain = [(plan, model)]
        for name in route.fallbacks:
            fallback = self.index.find(name)
            if fallback is not None:
                chain.append((self.plans[id(fallback)], name))
        for candidate, name in chain:
            target = _choose(candidate, [a for a in attempts if a.deployment.route is candidate.route])
            if target is not None:
                return candidate.deployment(target, name)
        if not attempts:
            wait = min(c.retry_in() for c, _ in chain)
            headers = {"Retry-After": str(max(1, math.ceil(wait)))} if wait < math.inf else None
            raise ServiceUnavailableError(
                f"No deployment of the model `{model}` is available now"
                + (f" (circuits open; retry in {wait:.1f} seconds)." if headers else "."),
                code="no_deployment_available",
                headers=headers,
            )
        return None


def _choose(plan: _Plan, mine: list[Attempt]) -> _Target | None:
    """The next deployment of ``plan``'s model given its attempts so far (None: go to the next model)."""
    failed = [a for a in mine if a.error is not None]
    if any(verdict(a.error) == "fallback" for a in failed):  # type: ignore[arg-type]
        return None
    if failed and len(failed) >= plan.route.retry.attempts:
        return None
    running = {a.deployment.name for a in mine if a.error is None}
    target = plan.pick(running | {a.deployment.name for a in failed})
    if target is None and failed:
        target = plan.pick(running)  # a deployment that failed, once more
    if target is None:
        return None
    if failed:
        if plan.budget is not None and not plan.budget.withdraw():
            if target.stats is not None:
                target.stats.release()
            return None
    elif not mine and plan.budget is not None:
        plan.budget.request()
    return target


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """The deployments' health, kept across reloads."""
    app[health_key] = HealthRegistry()


@hookimpl(trylast=True)
def gateway_select_backend(ctx: RequestContext, backends: BackendRegistry) -> Deployment | None:
    """Route ``ctx.body["model"]`` through the ``models`` table (see the module docstring); None when
    no entry serves it, or when every deployment and fallback has been tried."""
    router = _router(ctx, backends)
    return router.select(ctx)


@hookimpl
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """/info: each tracked deployment's requests in flight, time to first byte and circuit state."""
    if ctx.endpoint == INFO:
        router = _router(ctx, ctx.generation.backends)
        response["deployments"] = {stats.name: stats.describe() for stats in router.health}


def _router(ctx: RequestContext, backends: BackendRegistry) -> Router:
    """The router of the request's config generation, built on first use."""
    state = ctx.generation_state
    router = state.get(NAME)
    if router is None:
        router = state[NAME] = Router(ctx.config, backends, ctx.request.app[health_key])
    return router
