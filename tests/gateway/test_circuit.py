"""The circuit breaker, the latency tracker and a deployment's health counters, on a manual clock;
then through the HTTP API over two deployments: the circuit opens, probes and closes."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.backend import Backend
from gateway.model_table import CircuitConfig
from gateway.resilience.circuit import CircuitBreaker
from gateway.resilience.latency import LatencyTracker
from gateway.resilience.stats import DeploymentStats
from gateway_plugins.backends.mock import MockBackend
from tests.gateway.two_deployments import (
    both,
    post,
    served_by,
    setup,
    until,
)
from tests.upstreams.openai import OpenAIUpstream, Reply


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, failures: int = 3, window: float = 10, cooldown: float = 5) -> CircuitBreaker:
    return CircuitBreaker(CircuitConfig(failures=failures, window=window, cooldown=cooldown), clock)


def test_failures_within_the_window_open_the_circuit() -> None:
    clock = Clock()
    circuit = breaker(clock)
    circuit.failure()
    clock.now += 11  # the first failure leaves the window
    circuit.failure()
    circuit.failure()
    assert circuit.state == "closed" and circuit.available()
    circuit.failure()
    assert circuit.state == "open" and not circuit.available()
    assert circuit.retry_in() == 5
    assert circuit.describe() == {"state": "open", "recent_failures": 0, "probe_in": 5}


def test_one_probe_after_the_cooldown_closes_or_reopens_it() -> None:
    clock = Clock()
    circuit = breaker(clock, failures=1)
    circuit.failure()
    clock.now += 4.9
    assert not circuit.available()
    clock.now += 0.1
    assert circuit.available()
    circuit.acquire()  # this request is the probe
    assert circuit.state == "half_open" and not circuit.available()
    circuit.failure()  # the probe failed: another cool-down
    assert circuit.state == "open" and not circuit.available()
    clock.now += 5
    circuit.acquire()
    circuit.success()
    assert circuit.state == "closed" and circuit.available()


def test_a_probe_that_ends_without_an_outcome_gives_its_slot_back() -> None:
    clock = Clock()
    circuit = breaker(clock, failures=1)
    circuit.failure()
    clock.now += 5
    circuit.acquire()
    circuit.release()  # cancelled: the client left
    assert circuit.state == "open" and circuit.available()


def test_success_in_the_closed_state_does_not_forget_failures() -> None:
    clock = Clock()
    circuit = breaker(clock, failures=2)
    circuit.failure()
    circuit.success()
    circuit.failure()
    assert circuit.state == "open"


def test_latency_average_and_percentiles() -> None:
    tracker = LatencyTracker(alpha=0.5, size=4)
    assert tracker.percentile(95) is None and tracker.average is None
    for seconds in (1.0, 3.0):
        tracker.record(seconds)
    assert tracker.average == 2.0
    for seconds in (0.1, 0.2, 0.3, 0.4):  # the window keeps the last four
        tracker.record(seconds)
    assert tracker.count == 6
    assert tracker.percentile(50) == 0.2
    assert tracker.percentile(95) == 0.4
    assert tracker.percentile(1) == 0.1


def test_deployment_stats_count_attempts_and_publish_the_circuit_state() -> None:
    backend: Backend = MockBackend(MockBackend.Config(name="mock", type="mock"))
    stats = DeploymentStats("east", backend, CircuitConfig(failures=1, cooldown=60))
    stats.begin()
    stats.begin()
    stats.succeeded(0.25)
    assert stats.in_flight == 2
    stats.end()
    stats.failed()
    assert stats.in_flight == 0
    assert backend.circuit_state == "open" and not stats.available()
    assert stats.describe() == {
        "in_flight": 0,
        "ttfb_ms": 250.0,
        "circuit": {"state": "open", "recent_failures": 0, "probe_in": 60.0},
    }
    untracked = DeploymentStats("west")
    untracked.begin()
    untracked.refused()
    assert untracked.available() and untracked.describe() == {"in_flight": 0}


# Circuit breaking --------------------------------------------------------------------------------


async def test_the_circuit_opens_sends_one_probe_after_the_cooldown_and_closes(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    circuit = {"failures": 2, "window": 10, "cooldown": 0.3}
    client = await gateway(setup(primary, secondary, both(circuit=circuit)))
    primary.default = Reply(status=500)
    for _ in range(2):  # primary fails, secondary answers
        assert served_by(await post(client)) == ("secondary", "2")
    info = await (await client.get("/info")).json()
    assert info["deployments"]["primary"]["circuit"]["state"] == "open"
    assert info["deployments"]["secondary"]["circuit"]["state"] == "closed"

    for _ in range(3):  # open: straight to secondary, primary gets nothing
        assert served_by(await post(client)) == ("secondary", "1")
    assert len(primary.requests) == 2

    await asyncio.sleep(0.3)
    primary.default = Reply(delay=0.3)  # healthy again, a little slow: the probe is under way a while
    probe = asyncio.ensure_future(post(client))
    await until(lambda: len(primary.requests) == 3)
    assert served_by(await post(client)) == ("secondary", "1")  # half-open: one probe only
    assert served_by(await probe) == ("primary", "1")
    info = await (await client.get("/info")).json()
    assert info["deployments"]["primary"]["circuit"] == {"state": "closed", "recent_failures": 0}
    assert served_by(await post(client)) == ("primary", "1")


async def test_every_circuit_open_is_a_503_with_retry_after(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    single = {"name": "m", "backend": "primary", "circuit": {"failures": 1, "cooldown": 30}}
    client = await gateway(setup(primary, secondary, single))
    primary.fail(1)
    assert (await post(client)).status == 502
    resp = await post(client)
    assert resp.status == 503 and resp.headers["Retry-After"] in ("29", "30")
    assert (await resp.json())["error"]["code"] == "no_deployment_available"
    assert len(primary.requests) == 1
