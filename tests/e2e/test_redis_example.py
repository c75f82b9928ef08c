"""config/examples/redis.yaml: separate ``gateway serve`` processes share one limit through a real
redis-server, exactly; Redis stopped mid-run and restarted, in both ``on_error`` modes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.gateway.test_cli import Server, free_port
from tests.upstreams.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config" / "examples" / "redis.yaml"
KEY = "sk-gw-redis-0123456789"
CHAT = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}]}


def slack(tmp_path: Path, on_error: str = "allow") -> Path:
    """The example with more time per Redis call than its 50 ms: on a loaded 2-core test machine a
    fresh connection plus the scripts' first load can take longer, and a timed-out call is (rightly)
    served uncounted under on_error: allow or refused under deny, which is not what these tests measure."""
    text = EXAMPLE.read_text()
    assert "timeout_ms: 50 " in text and "on_error: allow" in text
    config = tmp_path / "redis.yaml"
    config.write_text(text.replace("timeout_ms: 50 ", "timeout_ms: 2000 ").replace("allow", on_error))
    return config


@pytest.fixture
def start(redis_url: str) -> Iterator[object]:
    servers: list[Server] = []

    def start(rpm: int, config: Path = EXAMPLE, url: str = redis_url) -> str:
        port = free_port()
        env = {"REDIS_URL": url, "GATEWAY_API_KEY": KEY, "GATEWAY_RPM": str(rpm)}
        server = Server(["--config", str(config), "--port", str(port)], env)
        servers.append(server)
        return server.wait_up(port, timeout=30)

    yield start
    for server in servers:
        server.kill()


def chat(url: str) -> requests.Response:
    return requests.post(
        url + "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
    )


def test_two_instances_share_one_limit_exactly(start: object, tmp_path: Path) -> None:
    urls = [start(8, slack(tmp_path)), start(8, slack(tmp_path))]  # type: ignore[operator]
    answers = [chat(urls[i % 2]) for i in range(20)]
    statuses = [answer.status_code for answer in answers]
    assert statuses == [200] * 8 + [429] * 12
    for answer in answers[8:]:
        assert int(answer.headers["Retry-After"]) >= 1
        assert answer.json()["error"]["code"] == "rate_limit_exceeded"
        assert answer.headers["x-ratelimit-remaining-requests"] == "0"
    assert answers[7].headers["x-ratelimit-limit-requests"] == "8"


def test_racing_requests_over_both_instances_pass_exactly_the_limit(start: object, tmp_path: Path) -> None:
    config = slack(tmp_path)
    urls = [start(10, config), start(10, config)]  # type: ignore[operator]
    with ThreadPoolExecutor(16) as pool:
        statuses = [a.status_code for a in pool.map(lambda i: chat(urls[i % 2]), range(40))]
    for url in urls:
        info = requests.get(url + "/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=3).json()
        assert info["state"]["errors"] == 0
    assert statuses.count(200) == 10
    assert statuses.count(429) == 30


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_redis_stopped_mid_run_and_restarted(start: object, on_error: str, tmp_path: Path) -> None:
    redis = RedisServer().start()
    try:
        url = start(2, slack(tmp_path, on_error), redis.url)  # type: ignore[operator]
        assert [chat(url).status_code for _ in range(2)] == [200, 200]  # at its limit (a 429 would be cached)
        redis.stop()
        for _ in range(5):
            started = time.monotonic()
            answer = chat(url)
            assert time.monotonic() - started < 3
            if on_error == "allow":
                assert answer.status_code == 200
                assert not [h for h in answer.headers if h.lower().startswith("x-ratelimit-")]  # none invented
            else:
                assert answer.status_code == 503
                assert answer.json()["error"]["code"] == "state_store_unavailable"
        assert requests.get(url + "/health", timeout=3).status_code == 200
        info = requests.get(url + "/info", headers={"Authorization": f"Bearer {KEY}"}, timeout=3).json()
        assert info["state"]["connected"] is False and info["state"]["errors"] >= 1
        redis.start()  # empty (no persistence): counting starts again
        deadline = time.monotonic() + 5
        statuses: list[int] = []
        while time.monotonic() < deadline:
            time.sleep(0.3)  # the breaker lets a probe through after breaker_s
            statuses = [chat(url).status_code for _ in range(3)]
            if statuses[-1] == 429:
                break
        assert statuses[-1] == 429, statuses
    finally:
        redis.stop()
