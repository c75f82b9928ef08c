"""The request context: one object that walks down the pipeline and that every hook receives."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from gateway.keys import state_store_key
from gateway.limits import Limits
from gateway.log import CurrentLogger

if TYPE_CHECKING:
    from aiohttp import web

    from gateway.backend import Backend
    from gateway.config import GatewayConfig
    from gateway.generation import Generation
    from gateway.model_table import ModelRoute
    from gateway.resilience.stats import DeploymentStats
    from gateway.state import Store


@dataclass(slots=True, eq=False)
class Principal:
    """Who is calling, as established by ``gateway_authenticate`` (never the key itself); ``limits``
    are the caller's own rate limits (``gateway.limits.Limits``), which a rate limiter applies."""

    name: str
    metadata: dict[str, Any] = field(default_factory=dict)
    limits: Limits | None = None


@dataclass(slots=True, eq=False)
class Deployment:
    """Where a request goes: a backend and the model name to ask it for.

    ``name`` is what ``x-gateway-backend`` reports (default: the backend's name). ``route`` is the
    ``models`` entry it serves, whose retry, timeout and hedging settings the pipeline applies (None:
    one attempt, the backend's timeout). ``stats`` is the deployment's health (in flight, time to first
    byte, circuit breaker), which the pipeline reports every attempt to (None: not tracked).
    """

    backend: Backend
    model: str
    name: str = ""
    route: ModelRoute | None = None
    stats: DeploymentStats | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.backend.name


@dataclass(slots=True, eq=False)
class Attempt:
    """A deployment tried for a request before its first byte: ``error`` is why it failed, or None
    while it still runs (the first leg of a hedged request)."""

    deployment: Deployment
    error: BaseException | None = None


@dataclass(slots=True, eq=False)
class RequestContext:
    """Everything known about one request. Plugins read and edit it; ``state`` is their scratch space.

    ``endpoint`` names the operation (``chat.completions``, ``completions``, ``embeddings``,
    ``messages``, ``responses``, ``models.list``, ``models.retrieve``, ``health``, ``info``, ...; the
    constants of ``gateway.endpoints``) or is empty for a path the gateway does not serve.
    """

    request: web.Request
    request_id: str  # the gateway's own id for the request (X-Gateway-Request-ID, the log's request_id)
    generation: Generation  # the config generation the request is pinned to
    endpoint: str = ""
    client_request_id: str | None = None  # the client's own ``X-Request-ID``, echoed back and logged
    body: dict[str, Any] | None = None  # the parsed JSON body, unknown fields included; editable
    # A front door in another dialect (``/v1/messages``): the request as the client sent it, before
    # its translation into the chat form (``body``). A backend that speaks the dialect gets it as it
    # is (``Backend.native``) unless a plugin changed ``body`` or set ``translate``.
    client_body: dict[str, Any] | None = None
    translate: bool = False  # a plugin must see this front-door request's answer in the chat form
    model: str | None = None  # the model the client asked for, after `default` resolution
    stream: bool = False
    principal: Principal | None = None
    # the key the client sent as ``Authorization: Bearer``; a backend configured to forward it
    # upstream (seed 001) uses it. An auth plugin that takes it as a gateway key clears it.
    client_key: str | None = None
    deployment: Deployment | None = None  # chosen by gateway_select_backend
    attempts: list[Attempt] = field(default_factory=list)  # deployments tried before this one (retries)
    attempt_count: int = 1  # attempts made for the response (what ``X-Gateway-Attempts`` tells the client)
    usage: dict[str, Any] | None = None  # the response's token usage, once known
    usage_estimated: bool = False  # ``usage`` is the gateway's estimate: the backend reported none
    response: dict[str, Any] | None = None  # set in gateway_process_request to answer directly
    response_headers: dict[str, str] = field(default_factory=dict)  # added to the response
    status: int = 0  # the HTTP status sent
    headers_sent: bool = False  # the response's headers are out: it can no longer change
    started: float = field(default_factory=time.perf_counter)
    first_byte: float | None = None  # perf_counter() when the backend's first output arrived
    # Kept by the pipeline for metrics, at the cost of a subtraction per chunk:
    upstream_wait: float = 0.0  # seconds spent inside the backend's iterator, waiting for its output
    chunks: int = 0  # items a streamed response got from the backend
    max_gap: float = 0.0  # the longest wait for a streamed item after the first (seconds)
    streamed_tokens: int = 0  # a stream's output tokens as counted while it passed, for an estimate
    upstream_errors: list[str] = field(default_factory=list)  # class name of each backend failure
    # Reported by retry and fallback code (the metrics plugin counts them when the request ends):
    retries: int = 0  # attempts after a failed one (any deployment, fallbacks included)
    fallbacks: int = 0  # of those, the attempts that went to a fallback model
    # Set by a response cache (the access line and metrics read them): "hit", "miss", "bypass" or ""
    # (not cacheable); a hit's usage is the original answer's, not new spend. ``cache_stored``: bytes
    # this request's answer added to the cache.
    cache: str = ""
    cache_stored: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None  # the exception that ended the request, if any

    log: ClassVar[structlog.typing.FilteringBoundLogger] = CurrentLogger("gateway")  # type: ignore[assignment]

    @property
    def config(self) -> GatewayConfig:
        """The gateway's validated config (the generation this request started on)."""
        return self.generation.config

    @property
    def state_store(self) -> Store:
        """The gateway's shared state store (``gateway.state``: memory, or Redis shared by every instance)."""
        return self.request.app[state_store_key]

    @property
    def generation_state(self) -> dict[str, Any]:
        """Per-generation plugin state: a dict that lives as long as the config generation the request
        is pinned to (a reload starts an empty one). Plugins cache what they build from the config
        here (a router, compiled rules), keyed by their own name; per-request scratch goes in ``state``."""
        return self.generation.state

    @property
    def backend(self) -> Backend | None:
        return self.deployment.backend if self.deployment else None

    @property
    def duration(self) -> float:
        """Seconds since the request arrived."""
        return time.perf_counter() - self.started
