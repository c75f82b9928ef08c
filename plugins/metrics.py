"""Prometheus metrics on ``GET /metrics``, recorded once per request when it ends.

Nothing runs per chunk here: the pipeline keeps the stream's timings on the context
(``upstream_wait``, ``chunks``, ``max_gap``) and this plugin observes them in
``gateway_request_finished``. Each app has its own ``CollectorRegistry``. In one process the values
are plain Python numbers, exposed at scrape time (``plugins.metrics_series``); with
``PROMETHEUS_MULTIPROC_DIR`` set in the environment before the gateway starts, they are
prometheus-client's own metrics, whose multiprocess mode adds up every worker process on each scrape.
No ``_created`` series in either; the standard ``process_*`` metrics (of the scraped process) too.
The time histograms observe API requests only, not /health, /info, /metrics or the docs pages.

Other code reports to it through the context and the backends: backend failures are
``ctx.upstream_errors`` (the pipeline fills it), retry and fallback code adds to ``ctx.retries`` and
``ctx.fallbacks``, and circuit-breaking code sets ``backend.circuit_state``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Gauge, ProcessCollector, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder

from gateway import hookimpl, in_flight
from gateway.backend import BackendRegistry
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.endpoints import DOCS, HEALTH, INFO, OPENAPI
from gateway.keys import backends_key, ctx_key
from gateway.openapi import operation
from gateway.state import store_of
from gateway_plugins.metrics_series import (
    Cell,
    MemoryCollector,
    MemorySeries,
    PrometheusSeries,
    Series,
    Spec,
    disable_created,
)

ENDPOINT = "metrics"  # ctx.endpoint of GET /metrics
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CIRCUIT_STATES = ("closed", "half_open", "open")
#: ``ctx.endpoint`` of requests that are counted but not timed: operations and docs, not the API
#: ("": a path nothing serves).
UNTIMED = frozenset({"", HEALTH, INFO, ENDPOINT, DOCS, OPENAPI})

DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GAP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
MODEL = ("model", "backend")
REQUESTS = Spec(
    "gateway_requests",
    "Requests answered, by endpoint, model, backend, HTTP status and streaming",
    ("endpoint", *MODEL, "status", "stream"),
)
DURATION = Spec(
    "gateway_request_duration_seconds",
    "Time from a request's arrival to its last byte",
    ("endpoint", *MODEL, "stream"),
    DURATION_BUCKETS,
)
TTFB = Spec(
    "gateway_time_to_first_byte_seconds",
    "Time from a request's arrival to the backend's first output",
    ("endpoint", *MODEL, "stream"),
    DURATION_BUCKETS,
)
GAP = Spec(
    "gateway_stream_max_gap_seconds",
    "The longest wait between two chunks of a streamed response (one observation per stream)",
    MODEL,
    GAP_BUCKETS,
)
OVERHEAD = Spec(
    "gateway_overhead_seconds",
    "Time of a successful request not spent waiting on the backend (the gateway's own work and writing to the client)",
    ("endpoint", "stream"),
    OVERHEAD_BUCKETS,
)
CHUNKS = Spec("gateway_stream_chunks", "Chunks streamed from backends", MODEL)
TOKENS = Spec(
    "gateway_tokens",
    "Tokens used, by model, backend, API key name and type (prompt or completion)",
    (*MODEL, "key", "type"),
)
UPSTREAM_ERRORS = Spec(
    "gateway_upstream_errors", "Backend failures, by backend and the class of the error", ("backend", "error")
)
RETRIES = Spec("gateway_retries", "Backend attempts repeated after a failure", MODEL)
FALLBACKS = Spec("gateway_fallbacks", "Requests that switched to a fallback deployment", MODEL)
CACHE = Spec(
    "gateway_cache_requests", "Cacheable requests, by endpoint and result (hit, miss, bypass)", ("endpoint", "result")
)
CACHE_STORED = Spec("gateway_cache_stored_bytes", "Bytes of answers stored in the response cache", ("endpoint",))
#: In this order on /metrics, then the in-flight gauge:
SPECS = (
    REQUESTS,
    DURATION,
    TTFB,
    GAP,
    OVERHEAD,
    CHUNKS,
    TOKENS,
    UPSTREAM_ERRORS,
    RETRIES,
    FALLBACKS,
    CACHE,
    CACHE_STORED,
)
TOKEN_KINDS = (("prompt_tokens", "prompt"), ("completion_tokens", "completion"))  # usage field, ``type`` label
IN_FLIGHT = ("gateway_requests_in_flight", "Requests being handled (a scrape counts itself)")


class Metrics:
    """The gateway's metrics, registered in one app's registry.

    With ``in_flight`` (a count of the requests being handled, read at scrape time) the values are
    kept in memory (``MemorySeries``); without it, in prometheus-client's own objects, as
    multiprocess mode needs, and the caller counts requests in flight with ``in_flight_gauge``.
    """

    def __init__(self, registry: CollectorRegistry, in_flight: Callable[[], int] | None = None) -> None:
        self.registry = registry
        self.in_flight_gauge: Gauge | None = None
        series: dict[Spec, Series]
        if in_flight is None:
            series = {spec: PrometheusSeries(spec, registry) for spec in SPECS}
            self.in_flight_gauge = Gauge(*IN_FLIGHT, registry=registry, multiprocess_mode="livesum")
        else:
            memory = {spec: MemorySeries(spec) for spec in SPECS}
            registry.register(MemoryCollector(memory.values(), IN_FLIGHT, in_flight))
            series = dict(memory)
        self.requests, self.duration, self.ttfb, self.gap, self.overhead = (series[s] for s in SPECS[:5])
        self.chunks, self.tokens, self.upstream_errors, self.retries, self.fallbacks = (series[s] for s in SPECS[5:10])
        self.cache, self.cache_stored = series[CACHE], series[CACHE_STORED]
        self._rows: dict[tuple[Any, ...], _Row] = {}

    def observe(self, ctx: RequestContext) -> None:
        """Record one finished request: its row's cells (``_Row``), found with one dict lookup."""
        backend = ctx.deployment.backend.name if ctx.deployment else ""
        # a model name a client made up (404, 400...) would be a new series: only routed or answered ones
        model = (ctx.model or "") if ctx.deployment or ctx.status < 400 else ""
        endpoint = ctx.endpoint
        key = (endpoint, model, backend, ctx.status, ctx.stream)
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = _Row(
                self, endpoint, model, backend, str(ctx.status), "true" if ctx.stream else "false"
            )
        row.requests.inc()
        if endpoint in UNTIMED:
            return
        (row.duration or row.fill("duration")).observe(ctx.duration)
        for error in ctx.upstream_errors:
            self.upstream_errors.inc((backend, error))
        if ctx.retries:
            self.retries.inc((model, backend), ctx.retries)
        if ctx.fallbacks:
            self.fallbacks.inc((model, backend), ctx.fallbacks)
        if ctx.cache:
            self.cache.inc((endpoint, ctx.cache))
            if ctx.cache_stored:
                self.cache_stored.inc((endpoint,), ctx.cache_stored)
        usage = ctx.usage
        if usage and ctx.cache != "hit":  # a hit's tokens were counted when they were spent
            key_name = ctx.principal.name if ctx.principal else ""
            for field, kind in TOKEN_KINDS:
                tokens = usage.get(field)
                if isinstance(tokens, int) and tokens > 0:
                    row.tokens(key_name, kind).inc(tokens)
        if ctx.first_byte is None or not backend:
            return
        (row.ttfb or row.fill("ttfb")).observe(ctx.first_byte - ctx.started)
        if ctx.chunks:
            (row.chunks or row.fill("chunks")).inc(ctx.chunks)
            if ctx.chunks > 1:
                (row.gap or row.fill("gap")).observe(ctx.max_gap)
        if ctx.error is None and ctx.status < 400:
            (row.overhead or row.fill("overhead")).observe(max(ctx.duration - ctx.upstream_wait, 0.0))


class _Row:
    """The cells one kind of request records into (endpoint, model, backend, status, stream): each
    looked up in its series when first used (a series shows only label values it recorded), then kept."""

    __slots__ = ("chunks", "duration", "gap", "labels", "metrics", "overhead", "requests", "token_cells", "ttfb")

    def __init__(self, metrics: Metrics, endpoint: str, model: str, backend: str, status: str, stream: str) -> None:
        self.metrics = metrics
        self.labels = {
            "duration": (metrics.duration, (endpoint, model, backend, stream)),
            "ttfb": (metrics.ttfb, (endpoint, model, backend, stream)),
            "chunks": (metrics.chunks, (model, backend)),
            "gap": (metrics.gap, (model, backend)),
            "overhead": (metrics.overhead, (endpoint, stream)),
        }
        self.requests = metrics.requests.cell((endpoint, model, backend, status, stream))
        self.duration = self.ttfb = self.chunks = self.gap = self.overhead = None
        self.token_cells: dict[tuple[str, str], Cell] = {}

    def fill(self, name: str) -> Cell:
        """The cell ``name`` (``duration``, ``ttfb``...), looked up in its series and kept."""
        series, labels = self.labels[name]
        cell = series.cell(labels)
        setattr(self, name, cell)
        return cell

    def tokens(self, key: str, kind: str) -> Cell:
        found = self.token_cells.get((key, kind))
        if found is None:
            model, backend = self.labels["chunks"][1]
            found = self.token_cells[key, kind] = self.metrics.tokens.cell((model, backend, key, kind))
        return found


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


class StateCollector:
    """The state store (``gateway.state``) at scrape time: ``gateway_state_store_connected``,
    ``gateway_state_store_errors_total`` and the Redis round-trip histogram
    ``gateway_state_store_latency_seconds`` (in multiprocess mode: the scraped worker's)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    def collect(self) -> list[Any]:
        state = store_of(self.app).describe()
        store = (state["store"],)
        connected = GaugeMetricFamily(
            "gateway_state_store_connected", "1 while the state store answers", labels=("store",)
        )
        connected.add_metric(store, 1.0 if state["connected"] else 0.0)
        errors = CounterMetricFamily("gateway_state_store_errors", "Failed state store calls", labels=("store",))
        errors.add_metric(store, float(state.get("errors", 0)))
        families: list[Any] = [connected, errors]
        latency = state.get("latency_seconds")
        if latency is not None:
            histogram = HistogramMetricFamily(
                "gateway_state_store_latency_seconds", "State store round trips", labels=("store",)
            )
            histogram.add_metric(store, list(latency["buckets"].items()), latency["sum"])
            families.append(histogram)
        return families


metrics_key = web.AppKey("metrics", Metrics)


def multiprocess_mode() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Create this app's metrics and serve ``GET /metrics``. In one process the in-flight gauge is
    the core's count of requests being handled; in multiprocess mode a middleware counts them."""
    disable_created()
    registry = CollectorRegistry()
    circuits = CircuitCollector(app[backends_key])
    state = StateCollector(app)
    if multiprocess_mode():
        app[metrics_key] = metrics = Metrics(registry)
        scrape = _multiprocess_registry(circuits, state)
        app.middlewares.append(_in_flight_middleware(metrics))
    else:
        app[metrics_key] = Metrics(registry, in_flight=lambda: in_flight(app))
        registry.register(circuits)
        registry.register(state)
        ProcessCollector(registry=registry)

        def scrape() -> CollectorRegistry:
            return registry

    @operation("Prometheus metrics", tag="operations", content_type="text/plain")
    async def serve_metrics(request: web.Request) -> web.Response:
        request[ctx_key].endpoint = ENDPOINT
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(scrape()), headers={"Content-Type": content_type})

    app.router.add_get("/metrics", serve_metrics)


def _in_flight_middleware(metrics: Metrics) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Counts requests in flight in the live-summed gauge that every worker's scrape adds up."""
    gauge = metrics.in_flight_gauge
    assert gauge is not None

    @web.middleware
    async def in_flight(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        gauge.inc()
        try:
            return await handler(request)
        finally:
            gauge.dec()

    return in_flight


def _multiprocess_registry(circuits: CircuitCollector, state: StateCollector) -> Callable[[], CollectorRegistry]:
    """A fresh registry per scrape that adds up every process's files (prometheus-client's recipe)."""

    def scrape() -> CollectorRegistry:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(circuits)
        registry.register(state)
        ProcessCollector(registry=registry)  # the scraped worker's
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
