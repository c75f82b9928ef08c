"""config/examples/failover.yaml end to end: the official ``openai`` SDK -> the gateway -> two fake
OpenAI upstreams (``primary`` and ``secondary``), failing over from the first to the second."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from openai import OpenAI

from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "failover.yaml"
KEY = "sk-shared-upstream-key-42"
MESSAGES: Any = [{"role": "user", "content": "Hello!"}]


@pytest.fixture
def upstreams() -> Iterator[tuple[OpenAIUpstream, OpenAIUpstream, str, str]]:
    primary, secondary = OpenAIUpstream(), OpenAIUpstream()
    primary.default = Reply(content="from primary")
    secondary.default = Reply(content="from secondary")
    with ServerThread(primary.app) as one, ServerThread(secondary.app) as two:
        yield primary, secondary, one.url + "/v1", two.url + "/v1"


def start(monkeypatch: pytest.MonkeyPatch, primary_url: str, secondary_url: str) -> ServerThread:
    monkeypatch.setenv("PRIMARY_BASE_URL", primary_url)
    monkeypatch.setenv("SECONDARY_BASE_URL", secondary_url)
    monkeypatch.setenv("UPSTREAM_API_KEY", KEY)
    return ServerThread(make_app(EXAMPLE))


def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def ask(client: OpenAI) -> tuple[str, str, str]:
    raw = client.chat.completions.with_raw_response.create(model="mock-gpt-model", messages=MESSAGES)
    return raw.headers["x-gateway-backend"], raw.headers["x-gateway-attempts"], raw.parse().choices[0].message.content


def test_primary_serves_while_it_is_healthy(upstreams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    primary, secondary, one, two = upstreams
    with start(monkeypatch, one, two) as gateway, sdk(gateway.url) as client:
        assert ask(client) == ("primary", "1", "from primary")
    assert primary.last.headers["Authorization"] == f"Bearer {KEY}"
    assert primary.last.body["model"] == "mock-gpt-model" and not secondary.requests


def test_a_failing_primary_fails_over_to_secondary(upstreams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    primary, secondary, one, two = upstreams
    primary.reply(Reply(status=503), Reply(status=429, headers={"Retry-After": "20"}))
    with start(monkeypatch, one, two) as gateway, sdk(gateway.url) as client:
        assert ask(client) == ("secondary", "2", "from secondary")
        stream = client.chat.completions.create(model="mock-gpt-model", messages=MESSAGES, stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "from secondary"
        assert ask(client) == ("primary", "1", "from primary")  # healthy again
    assert secondary.last.headers["Authorization"] == f"Bearer {KEY}"


def test_an_unreachable_primary_opens_its_circuit(upstreams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, secondary, _, two = upstreams
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        nothing_there = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    with start(monkeypatch, nothing_there, two) as gateway, sdk(gateway.url) as client:
        assert [ask(client)[:2] for _ in range(3)] == [("secondary", "2")] * 3
        info = requests.get(gateway.url + "/info", timeout=5).json()
        assert info["deployments"]["primary"]["circuit"]["state"] == "open"
        assert ask(client)[:2] == ("secondary", "1")  # straight to secondary while primary cools down
    assert len(secondary.requests) == 4


def test_when_both_fail_the_client_gets_the_last_error(upstreams: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    primary, secondary, one, two = upstreams
    primary.default = secondary.default = Reply(status=500)
    with start(monkeypatch, one, two) as gateway:
        resp = requests.post(
            gateway.url + "/v1/chat/completions", json={"model": "mock-gpt-model", "messages": MESSAGES}, timeout=10
        )
    assert resp.status_code == 502 and resp.json()["error"]["code"] == "bad_gateway"
    assert resp.headers["x-gateway-attempts"] == "3" and resp.headers["x-gateway-backend"] == "primary"
    assert (len(primary.requests), len(secondary.requests)) == (2, 1)


def test_a_key_both_upstreams_refuse_is_a_502_naming_the_backends_credentials(
    upstreams: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK reads a 401 as its own key being wrong; the gateway's upstream key is what failed."""
    primary, secondary, one, two = upstreams
    refused = {
        "error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}
    }
    primary.default = secondary.default = Reply(status=401, error=refused)
    with start(monkeypatch, one, two) as gateway:
        resp = requests.post(
            gateway.url + "/v1/chat/completions", json={"model": "mock-gpt-model", "messages": MESSAGES}, timeout=10
        )
    assert resp.status_code == 502
    error = resp.json()["error"]
    assert error["code"] == "upstream_auth_error" and "refused the gateway's credentials" in error["message"]
