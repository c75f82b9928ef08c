"""The metrics plugin: ``GET /metrics`` after known traffic, over real sockets (and, for the
multiprocess mode, two ``gateway serve`` processes sharing one metrics directory)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI
from prometheus_client.parser import text_string_to_metric_families

from gateway import hookimpl
from gateway.context import Principal, RequestContext
from gateway.keys import backends_key
from gateway.testing import MOCK_MODEL, mock_config
from gateway_plugins.metrics import metrics_key

ROOT = Path(__file__).resolve().parents[2]
CHAT = "chat.completions"
FIRST_DELAY = 0.2  # the mock backend's first_chunk_delay: a floor for durations and time to first byte
CHUNK_DELAY = 0.06  # its chunk_delay: a floor for the longest gap of a stream
MODEL = {"model": MOCK_MODEL, "backend": "mock"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape(client: TestClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return parse(await response.text())


def ask(text: str = "one two three", **extra: Any) -> dict[str, Any]:
    return {"model": MOCK_MODEL, "messages": [{"role": "user", "content": text}], **extra}


async def test_counts_timings_and_tokens_after_known_traffic(gateway: Any) -> None:
    client = await gateway(mock_config(first_chunk_delay=FIRST_DELAY, chunk_delay=CHUNK_DELAY))
    usages = []
    for text in ("hello there", "one two three four"):
        response = await client.post("/v1/chat/completions", json=ask(text))
        usages.append((await response.json())["usage"])
    response = await client.post(
        "/v1/chat/completions", json=ask("a b c", stream=True, stream_options={"include_usage": True})
    )
    events = [line for line in (await response.text()).splitlines() if line.startswith("data: {")]
    usages.append(json.loads(events[-1][6:])["usage"])
    assert (await client.post("/v1/chat/completions", json={**ask(), "model": "made-up"})).status == 404
    assert (await client.get("/health")).status == 200

    m = await scrape(client)
    requests_total = "gateway_requests_total"
    assert value(m, requests_total, endpoint=CHAT, **MODEL, status="200", stream="false") == 2
    assert value(m, requests_total, endpoint=CHAT, **MODEL, status="200", stream="true") == 1
    # a model nothing serves is not a label value (clients could make up any number of them)
    assert value(m, requests_total, endpoint=CHAT, model="", backend="", status="404", stream="false") == 1
    assert value(m, requests_total, endpoint="health", model="", backend="", status="200", stream="false") == 1

    for kind in ("prompt", "completion"):
        expected = sum(u[f"{kind}_tokens"] for u in usages)
        assert value(m, "gateway_tokens_total", **MODEL, key="", type=kind) == expected

    duration = "gateway_request_duration_seconds"
    plain = {"endpoint": CHAT, **MODEL, "stream": "false"}
    assert value(m, f"{duration}_count", **plain) == 2
    assert value(m, f"{duration}_bucket", **plain, le="0.1") == 0  # each took at least FIRST_DELAY
    assert value(m, f"{duration}_bucket", **plain, le="+Inf") == 2
    ttfb = "gateway_time_to_first_byte_seconds"
    streamed = {"endpoint": CHAT, **MODEL, "stream": "true"}
    assert value(m, f"{ttfb}_bucket", **streamed, le="0.1") == 0
    assert value(m, f"{ttfb}_bucket", **streamed, le="+Inf") == 1

    gap = "gateway_stream_max_gap_seconds"
    assert value(m, f"{gap}_count", **MODEL) == 1  # one observation per stream
    assert value(m, f"{gap}_bucket", **MODEL, le="0.05") == 0  # every chunk after the first waited CHUNK_DELAY
    assert value(m, f"{gap}_sum", **MODEL) >= CHUNK_DELAY
    assert value(m, "gateway_stream_chunks_total", **MODEL) == len(events)

    # overhead = duration - time waiting on the backend, which is at least FIRST_DELAY per request
    overhead = sum(value(m, "gateway_overhead_seconds_sum", endpoint=CHAT, stream=s) for s in ("false", "true"))
    durations = sum(value(m, f"{duration}_sum", **labels) for labels in (plain, streamed))
    assert value(m, "gateway_overhead_seconds_count", endpoint=CHAT, stream="false") == 2
    assert 0 < overhead <= durations - 3 * FIRST_DELAY

    assert value(m, "gateway_requests_in_flight") == 1  # the scrape itself
    assert client.app[metrics_key].registry.get_sample_value("gateway_requests_in_flight") == 0


async def test_in_flight_counts_a_stream_until_it_ends(gateway: Any) -> None:
    client = await gateway(mock_config(chunk_delay=0.1))
    response = await client.post("/v1/chat/completions", json=ask("a b c d", stream=True))
    await response.content.readline()  # the stream has started
    assert value(await scrape(client), "gateway_requests_in_flight") == 2
    await response.read()
    assert client.app[metrics_key].registry.get_sample_value("gateway_requests_in_flight") == 0


class KeyNames:
    """Names the caller after the key it sends (as an auth plugin would)."""

    @hookimpl
    def gateway_authenticate(self, ctx: RequestContext) -> Principal | None:
        return Principal(name=f"team-{ctx.client_key}") if ctx.client_key else None


async def test_tokens_by_key_name_through_the_openai_sdk(gateway: Any) -> None:
    client = await gateway(plugins=[KeyNames()])
    base_url = str(client.make_url("/v1"))
    totals: dict[str, dict[str, int]] = {}
    for key, texts in (("a", ["one", "one two three"]), ("b", ["four five"])):
        async with AsyncOpenAI(base_url=base_url, api_key=key) as sdk:
            for text in texts:
                reply = await sdk.chat.completions.create(
                    model=MOCK_MODEL, messages=[{"role": "user", "content": text}]
                )
                assert reply.usage is not None
                total = totals.setdefault(key, {"prompt": 0, "completion": 0})
                total["prompt"] += reply.usage.prompt_tokens
                total["completion"] += reply.usage.completion_tokens
    m = await scrape(client)
    for key, total in totals.items():
        for kind, expected in total.items():
            assert value(m, "gateway_tokens_total", **MODEL, key=f"team-{key}", type=kind) == expected


async def test_upstream_errors_by_class(gateway: Any) -> None:
    config = {
        "backends": [
            {"name": "failing", "type": "mock", "models": ["bad"], "failure": {"mode": "error", "status": 500}},
            {"name": "silent", "type": "mock", "models": ["slow"], "failure": {"mode": "hang"}, "timeout": 0.2},
        ],
        "models": [{"name": "bad", "backend": "failing"}, {"name": "slow", "backend": "silent"}],
    }
    client = await gateway(config)
    assert (await client.post("/v1/chat/completions", json={**ask(), "model": "bad"})).status == 502
    assert (await client.post("/v1/chat/completions", json={**ask(), "model": "slow"})).status == 504
    m = await scrape(client)
    assert value(m, "gateway_upstream_errors_total", backend="failing", error="UpstreamError") == 1
    assert value(m, "gateway_upstream_errors_total", backend="silent", error="UpstreamTimeoutError") == 1
    labels = {"endpoint": CHAT, "model": "slow", "backend": "silent", "stream": "false"}
    assert value(m, "gateway_requests_total", **labels, status="504") == 1
    assert value(m, "gateway_overhead_seconds_count", endpoint=CHAT, stream="false") is None  # failures: no overhead


class Recovery:
    """Reports what retry and fallback code would: two retries and one fallback per request."""

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        ctx.retries += 2
        ctx.fallbacks += 1


async def test_retries_fallbacks_and_circuit_state_reported_by_other_code(gateway: Any) -> None:
    client = await gateway(plugins=[Recovery()])
    for _ in range(2):
        assert (await client.post("/v1/chat/completions", json=ask())).status == 200
    m = await scrape(client)
    assert value(m, "gateway_retries_total", **MODEL) == 4
    assert value(m, "gateway_fallbacks_total", **MODEL) == 2
    assert value(m, "gateway_circuit_state", backend="mock", state="closed") == 1

    client.app[backends_key]["mock"].circuit_state = "open"
    m = await scrape(client)
    assert value(m, "gateway_circuit_state", backend="mock", state="open") == 1
    assert value(m, "gateway_circuit_state", backend="mock", state="closed") == 0


async def test_openmetrics_on_request(gateway: Any) -> None:
    client = await gateway()
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")


async def test_disabled_plugin_serves_no_metrics(gateway: Any) -> None:
    client = await gateway({**mock_config(), "plugins": {"disabled": ["metrics"]}})
    assert (await client.get("/metrics")).status == 404


# Multiprocess mode -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve(config: Path, port: int, metrics_dir: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "GATEWAY_CONFIG")}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    args = ["serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    with (metrics_dir.parent / f"serve-{port}.log").open("wb") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


def wait_up(url: str, proc: subprocess.Popen[bytes], log_dir: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            logs = "".join(p.read_text() for p in log_dir.glob("serve-*.log"))
            pytest.fail(f"gateway serve exited with {proc.returncode}:\n{logs}")
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.05)
    pytest.fail(f"{url} did not come up")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes")
def test_multiprocess_mode_adds_up_every_process(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"backends: [{{name: mock, type: mock, models: [{MOCK_MODEL}]}}]\n")
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    ports = [free_port(), free_port()]
    procs = [serve(config, port, metrics_dir) for port in ports]
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url, proc in zip(urls, procs, strict=True):
            wait_up(url, proc, tmp_path)
        sent = {urls[0]: 2, urls[1]: 3}
        prompt_tokens = 0
        for url, count in sent.items():
            for _ in range(count):
                response = requests.post(url + "/v1/chat/completions", json=ask(), timeout=5)
                assert response.status_code == 200
                prompt_tokens += response.json()["usage"]["prompt_tokens"]
        for url in urls:  # either process reports both processes' requests
            text = requests.get(url + "/metrics", timeout=5).text
            assert "_created" not in text
            m = parse(text)
            assert value(m, "process_resident_memory_bytes") > 0  # type: ignore[operator]  # the scraped worker's
            assert value(m, "gateway_requests_total", endpoint=CHAT, **MODEL, status="200", stream="false") == 5
            assert value(m, "gateway_request_duration_seconds_count", endpoint=CHAT, **MODEL, stream="false") == 5
            assert (
                value(m, "gateway_time_to_first_byte_seconds_bucket", endpoint=CHAT, **MODEL, stream="false", le="+Inf")
                == 5
            )
            assert value(m, "gateway_tokens_total", **MODEL, key="", type="prompt") == prompt_tokens
            assert value(m, "gateway_requests_in_flight") == 1  # live processes only: the scrape itself
        procs[1].terminate()
        procs[1].wait(10)
        assert not list(metrics_dir.glob(f"gauge_livesum_{procs[1].pid}.db"))  # its live gauge is gone
        m = parse(requests.get(urls[0] + "/metrics", timeout=5).text)
        assert value(m, "gateway_requests_total", endpoint=CHAT, **MODEL, status="200", stream="false") == 5
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


async def test_no_created_series_and_the_process_metrics(gateway: Any) -> None:
    client = await gateway()
    assert (await client.post("/v1/chat/completions", json=ask())).status == 200
    text = await (await client.get("/metrics")).text()
    assert "_created" not in text
    m = parse(text)
    assert value(m, "process_resident_memory_bytes") > 0  # type: ignore[operator]
    assert value(m, "process_open_fds") is not None
    assert value(m, "gateway_requests_total", endpoint=CHAT, **MODEL, status="200", stream="false") == 1


async def test_only_api_requests_are_timed(gateway: Any) -> None:
    client = await gateway()
    for path in ("/health", "/info", "/openapi.json", "/docs", "/metrics", "/nowhere"):
        await client.get(path)
    await client.get("/v1/models")
    assert (await client.post("/v1/chat/completions", json=ask())).status == 200
    m = await scrape(client)
    timed = {dict(labels)["endpoint"] for name, labels in m if name == "gateway_request_duration_seconds_count"}
    assert timed == {CHAT, "models.list"}
    assert (
        value(m, "gateway_requests_total", endpoint="health", model="", backend="", status="200", stream="false") == 1
    )


async def test_a_metrics_only_key_scrapes_and_does_nothing_else(gateway: Any) -> None:
    keys = [
        {"name": "app", "key": "sk-app-0123456789"},
        {"name": "prometheus", "key": "sk-scrape-0123456789", "metrics_only": True},
    ]
    client = await gateway({**mock_config(), "plugins": {"auth_api_keys": {"keys": keys}}})
    scraper = {"Authorization": "Bearer sk-scrape-0123456789"}
    assert (await client.get("/metrics")).status == 401
    assert (await client.get("/metrics", headers=scraper)).status == 200
    assert (await client.get("/metrics", headers={"Authorization": "Bearer sk-app-0123456789"})).status == 200
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/info")):
        response = await client.request(method, path, json=ask() if method == "POST" else None, headers=scraper)
        assert response.status == 403, path
        error = (await response.json())["error"]
        assert error["code"] == "permission_denied"
        assert "may only scrape /metrics" in error["message"]
