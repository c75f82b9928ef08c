"""Prometheus metrics on ``GET /metrics``, recorded once per request when it ends.

Nothing runs per chunk here: the pipeline keeps the stream's timings on the context
(``upstream_wait``, ``chunks``, ``max_gap``) and this plugin observes them in
``gateway_request_finished``. Each app has its own ``CollectorRegistry``; with
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the gateway starts, prometheus-client's
multiprocess mode adds up the values of every worker process on each scrape.

Other code reports to it through the context and the backends: backend failures are
``ctx.upstream_errors`` (the pipeline fills it), retry and fallback code adds to ``ctx.retries`` and
``ctx.fallbacks``, and circuit-breaking code sets ``backend.circuit_state``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from gateway import hookimpl
from gateway.backend import BackendRegistry
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.keys import backends_key, ctx_key
from gateway.openapi import operation

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CIRCUIT_STATES = ("closed", "half_open", "open")

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)


class Metrics:
    """The gateway's metrics, registered in one app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        model = ("model", "backend")
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by endpoint, model, backend, HTTP status and streaming",
            ("endpoint", *model, "status", "stream"),
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from a request's arrival to its last byte",
            ("endpoint", *model, "stream"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.ttfb = Histogram(
            "gateway_time_to_first_byte_seconds",
            "Time from a request's arrival to the backend's first output",
            ("endpoint", *model, "stream"),
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.gap = Histogram(
            "gateway_stream_max_gap_seconds",
            "The longest wait between two chunks of a streamed response (one observation per stream)",
            model,
            buckets=GAP_BUCKETS,
            registry=registry,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time of a successful request not spent waiting on the backend (the gateway's own work "
            "and writing to the client)",
            ("endpoint", "stream"),
            buckets=OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.chunks = Counter("gateway_stream_chunks", "Chunks streamed from backends", model, registry=registry)
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens used, by model, backend, API key name and type (prompt or completion)",
            (*model, "key", "type"),
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Backend failures, by backend and the class of the error",
            ("backend", "error"),
            registry=registry,
        )
        self.retries = Counter("gateway_retries", "Backend attempts repeated after a failure", model, registry=registry)
        self.fallbacks = Counter(
            "gateway_fallbacks", "Requests that switched to a fallback deployment", model, registry=registry
        )
        self.in_flight = Gauge(
            "gateway_requests_in_flight",
            "Requests being handled (a scrape counts itself)",
            registry=registry,
            multiprocess_mode="livesum",
        )

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (``labels()`` validates and locks: 4-5 µs)."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def observe(self, ctx: RequestContext) -> None:
        """Record one finished request."""
        backend = ctx.deployment.backend.name if ctx.deployment else ""
        # a model name a client made up (404, 400...) would be a new series: only routed or answered ones
        model = (ctx.model or "") if ctx.deployment or ctx.status < 400 else ""
        endpoint, stream = ctx.endpoint, "true" if ctx.stream else "false"
        self.child(self.requests, endpoint, model, backend, str(ctx.status), stream).inc()
        self.child(self.duration, endpoint, model, backend, stream).observe(ctx.duration)
        for error in ctx.upstream_errors:
            self.child(self.upstream_errors, backend, error).inc()
        if ctx.retries:
            self.child(self.retries, model, backend).inc(ctx.retries)
        if ctx.fallbacks:
            self.child(self.fallbacks, model, backend).inc(ctx.fallbacks)
        usage = ctx.usage
        if usage:
            key = ctx.principal.name if ctx.principal else ""
            for kind in ("prompt", "completion"):
                tokens = usage.get(f"{kind}_tokens")
                if isinstance(tokens, int) and tokens > 0:
                    self.child(self.tokens, model, backend, key, kind).inc(tokens)
        if ctx.first_byte is None or not backend:
            return
        self.child(self.ttfb, endpoint, model, backend, stream).observe(ctx.first_byte - ctx.started)
        if ctx.chunks:
            self.child(self.chunks, model, backend).inc(ctx.chunks)
            if ctx.chunks > 1:
                self.child(self.gap, model, backend).observe(ctx.max_gap)
        if ctx.error is None and ctx.status < 400:
            self.child(self.overhead, endpoint, stream).observe(max(ctx.duration - ctx.upstream_wait, 0.0))


class CircuitCollector:
    """``gateway_circuit_state{backend, state}``: 1 for each backend's current state, 0 for the others,
    read from ``backend.circuit_state`` at scrape time (in multiprocess mode: the scraped worker's)."""

    def __init__(self, backends: BackendRegistry) -> None:
        self.backends = backends

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gateway_circuit_state", "Each backend's circuit: 1 for its current state", labels=("backend", "state")
        )
        for name, backend in self.backends.items():
            for state in CIRCUIT_STATES:
                family.add_metric((name, state), 1.0 if backend.circuit_state == state else 0.0)
        return [family]


metrics_key = web.AppKey("metrics", Metrics)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Create this app's metrics, count requests in flight, serve ``GET /metrics``."""
    registry = CollectorRegistry()
    app[metrics_key] = metrics = Metrics(registry)
    circuits = CircuitCollector(app[backends_key])
    if multiprocess_mode():
        scrape = _multiprocess_registry(circuits)
    else:
        registry.register(circuits)

        def scrape() -> CollectorRegistry:
            return registry

    @web.middleware
    async def in_flight(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        gauge = metrics.in_flight
        gauge.inc()
        try:
            return await handler(request)
        finally:
            gauge.dec()

    @operation("Prometheus metrics", tag="operations", content_type="text/plain")
    async def serve_metrics(request: web.Request) -> web.Response:
        request[ctx_key].endpoint = "metrics"
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(scrape()), headers={"Content-Type": content_type})

    app.middlewares.append(in_flight)
    app.router.add_get("/metrics", serve_metrics)


def _multiprocess_registry(circuits: CircuitCollector) -> Callable[[], CollectorRegistry]:
    """A fresh registry per scrape that adds up every process's files (prometheus-client's recipe)."""

    def scrape() -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(circuits)
        return registry

    return scrape


@hookimpl
def gateway_cleanup_ctx(app: web.Application, config: GatewayConfig) -> Callable[..., AsyncIterator[None]] | None:
    """In multiprocess mode, drop this process's live gauges when it stops."""
    if not multiprocess_mode():
        return None

    async def mark_dead(app: web.Application) -> AsyncIterator[None]:
        yield
        multiprocess.mark_process_dead(os.getpid())

    return mark_dead


@hookimpl
def gateway_request_finished(ctx: RequestContext) -> None:
    """Count the request and observe its timings and tokens."""
    ctx.request.app[metrics_key].observe(ctx)
