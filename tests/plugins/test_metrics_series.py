"""Where the metrics plugin records: in-memory series expose exactly what prometheus-client's own
objects would for the same requests, and recording one touches none of prometheus-client's values."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import prometheus_client.metrics
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.values import MutexValue

from gateway.testing import MOCK_MODEL, mock_config
from gateway_plugins.metrics import Metrics
from gateway_plugins.metrics_series import disable_created

# values on, between, below and above the bounds (a value on a bound belongs to that bucket)
DURATIONS = (0.0, 0.005, 0.0051, 0.1, 1, 2.4999, 600, 601.5, 1e-9)


def contexts() -> Iterator[Any]:
    """Finished requests of every kind ``Metrics.observe`` tells apart."""
    for i in range(40):
        backend = None if i % 7 == 3 else SimpleNamespace(name=("mock", "other")[i % 3 == 0])
        yield SimpleNamespace(
            deployment=backend and SimpleNamespace(backend=backend),
            model=f"m{i % 4}",
            status=(200, 200, 404, 502, 200)[i % 5],
            endpoint=("chat.completions", "completions", "health")[i % 3],
            stream=i % 2 == 1,
            duration=DURATIONS[i % len(DURATIONS)],
            upstream_errors=["UpstreamError", "UpstreamTimeoutError"][: i % 3],
            retries=i % 4,
            fallbacks=i % 5 == 1,
            usage={"prompt_tokens": i, "completion_tokens": 2 * i, "total_tokens": 3 * i} if i % 6 else None,
            principal=SimpleNamespace(name=f"key{i % 2}") if i % 3 else None,
            started=100.0,
            first_byte=None if i % 8 == 7 else 100.0 + DURATIONS[i % 5] / 2,
            chunks=i % 5,
            max_gap=0.001 * i,
            error=ValueError() if i % 9 == 0 else None,
            upstream_wait=DURATIONS[i % 4] / 3,
            cache=("", "hit", "miss", "bypass")[i % 4],
            cache_stored=(0, 0, 120 + i, 0)[i % 4],
        )


def test_in_memory_exposition_equals_prometheus_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus_client.metrics, "_use_created", True)
    disable_created()  # what the metrics plugin does at start-up
    memory = Metrics(CollectorRegistry(), in_flight=lambda: 3)
    reference = Metrics(CollectorRegistry())  # prometheus-client's Counter, Histogram and Gauge objects
    assert reference.in_flight_gauge is not None
    reference.in_flight_gauge.set(3)
    for ctx in contexts():
        memory.observe(ctx)
        reference.observe(ctx)
    for encode in (generate_latest, openmetrics_latest):
        text = encode(memory.registry)
        assert text == encode(reference.registry)
    lines = text.decode().splitlines()
    assert len([line for line in lines if line.startswith("gateway_request_duration_seconds_bucket{")]) > 100
    assert "_created" not in text.decode()
    assert "gateway_requests_in_flight 3.0" in lines


@pytest.fixture
def value_calls(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """Counts every prometheus-client value created, changed or read (each one holds a lock)."""
    calls: collections.Counter[str] = collections.Counter()

    def counting(name: str, original: Any) -> Any:
        def counted(self: MutexValue, *args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return original(self, *args, **kwargs)

        return counted

    for name in ("__init__", "inc", "set", "get"):
        monkeypatch.setattr(MutexValue, name, counting(name, getattr(MutexValue, name)))
    return calls


async def test_one_process_records_without_prometheus_values(gateway: Any, value_calls: collections.Counter) -> None:
    client = await gateway(mock_config())
    ask = {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "one two"}]}
    assert (await client.post("/v1/chat/completions", json=ask)).status == 200
    assert (await (await client.post("/v1/chat/completions", json={**ask, "stream": True})).read()).endswith(
        b"[DONE]\n\n"
    )
    assert (await client.post("/v1/chat/completions", json={**ask, "model": "made-up"})).status == 404
    text = await (await client.get("/metrics")).text()
    assert f'gateway_tokens_total{{backend="mock",key="",model="{MOCK_MODEL}",type="prompt"}}' in text
    assert "gateway_requests_in_flight 1.0" in text
    assert value_calls == {}


def test_the_count_sees_prometheus_client_objects(value_calls: collections.Counter) -> None:
    """The guard above can fail: the same request recorded in prometheus-client's objects is counted."""
    metrics = Metrics(CollectorRegistry())
    ctx = next(c for c in contexts() if c.deployment and c.chunks > 1 and c.status == 200 and c.error is None)
    metrics.observe(ctx)
    created = value_calls["__init__"]
    metrics.observe(ctx)
    assert value_calls["__init__"] == created  # children are looked up once
    assert value_calls["inc"] >= 2 * 8
