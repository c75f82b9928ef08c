"""What the gateway knows of one deployment's health: requests in flight, time to first byte and
its circuit breaker. The router reads it to choose; the pipeline reports every attempt to it.

The circuit's state is also published on the backend (``backend.circuit_state``, for /metrics); a
backend behind several deployments shows the state of the one that changed last."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.model_table import CircuitConfig
from gateway.resilience.circuit import CircuitBreaker
from gateway.resilience.latency import LatencyTracker

if TYPE_CHECKING:
    from gateway.backend import Backend


class DeploymentStats:
    """One deployment's counters. An attempt is ``begin()`` then exactly one of ``succeeded()``
    (first output; ``end()`` follows when the response is over), ``failed()`` (an upstream failure:
    5xx, 429, timeout, connection), ``refused()`` (the upstream answered, with a client error) or
    ``dropped()`` (cancelled before it told anything)."""

    __slots__ = ("backend", "circuit", "in_flight", "latency", "name")

    def __init__(self, name: str, backend: Backend | None = None, circuit: CircuitConfig | None = None) -> None:
        self.name = name
        self.backend = backend
        self.in_flight = 0
        self.latency = LatencyTracker()
        self.circuit = CircuitBreaker(circuit) if circuit is not None else None

    def configure(self, circuit: CircuitConfig | None) -> None:
        """New circuit settings (a reload); a breaker already counting keeps its state."""
        if circuit is None:
            return
        if self.circuit is None:
            self.circuit = CircuitBreaker(circuit)
        else:
            self.circuit.config = circuit

    def available(self) -> bool:
        return self.circuit is None or self.circuit.available()

    def acquire(self) -> None:
        """The router picked it (past an open circuit's cool-down, this request is the probe)."""
        if self.circuit is not None:
            self.circuit.acquire()
            self._publish()

    def release(self) -> None:
        """Picked but not tried: a probe slot it took is given back."""
        if self.circuit is not None:
            self.circuit.release()
            self._publish()

    def begin(self) -> None:
        self.in_flight += 1

    def succeeded(self, ttfb: float) -> None:
        self.latency.record(ttfb)
        if self.circuit is not None:
            self.circuit.success()
            self._publish()

    def end(self) -> None:
        self.in_flight -= 1

    def failed(self) -> None:
        self.in_flight -= 1
        if self.circuit is not None:
            self.circuit.failure()
            self._publish()

    def refused(self) -> None:
        self.in_flight -= 1
        if self.circuit is not None:
            self.circuit.success()
            self._publish()

    def dropped(self) -> None:
        self.in_flight -= 1
        self.release()

    def _publish(self) -> None:
        if self.backend is not None and self.circuit is not None:
            self.backend.circuit_state = self.circuit.state

    def describe(self) -> dict[str, Any]:
        """For /info."""
        info: dict[str, Any] = {"in_flight": self.in_flight}
        if self.latency.average is not None:
            info["ttfb_ms"] = round(self.latency.average * 1000, 2)
        if self.circuit is not None:
            info["circuit"] = self.circuit.describe()
        return info
