"""``config/examples/auth.yaml`` as the README shows it: started from the file with the two keys in
the environment, every rule it states checked with the openai SDK and raw HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from openai import OpenAI

from gateway.app import create_app
from gateway.testing import ServerThread
from gateway_plugins.rate_limit import MemoryStore, store_key

CONFIG = Path(__file__).parents[2] / "config" / "examples" / "auth.yaml"
API_KEY = "gw-example-admin-5d1c9e7a"
LIMITED_KEY = "gw-example-limited-8b2f4a6e"
MESSAGES: list = [{"role": "user", "content": "Hello!"}]
TIMEOUT = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch, clock: Clock) -> Iterator[ServerThread]:
    monkeypatch.setenv("GATEWAY_API_KEY", API_KEY)
    monkeypatch.setenv("GATEWAY_LIMITED_KEY", LIMITED_KEY)
    app = create_app(CONFIG)
    app[store_key] = MemoryStore(clock)
    with ServerThread(app) as s:
        yield s


def client(server: ServerThread, key: str) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def test_the_admin_key_uses_every_model_without_limits(server: ServerThread) -> None:
    with client(server, API_KEY) as admin:
        assert [m.id for m in admin.models.list()] == ["mock-gpt-model", "mock-gpt-large"]
        for i in range(10):
            model = ("mock-gpt-model", "mock-gpt-large")[i % 2]
            raw = admin.chat.completions.with_raw_response.create(model=model, messages=MESSAGES, stream=i % 3 == 0)
            assert "x-ratelimit-limit-requests" not in raw.headers


def test_the_limited_key_has_one_model_and_three_chat_requests_a_minute(server: ServerThread, clock: Clock) -> None:
    with client(server, LIMITED_KEY) as limited, client(server, "gw-not-a-key-0000") as wrong:
        # none of these count: model listings, refusals by auth and by the allowlist
        for _ in range(3):
            assert [m.id for m in limited.models.list()] == ["mock-gpt-model"]
            with pytest.raises(openai.PermissionDeniedError):
                limited.chat.completions.create(model="mock-gpt-large", messages=MESSAGES)
            with pytest.raises(openai.AuthenticationError):
                wrong.chat.completions.create(model="mock-gpt-model", messages=MESSAGES)
        with pytest.raises(openai.NotFoundError):
            limited.models.retrieve("mock-gpt-large")
        # three chat requests a minute, streamed or not, the model `default` included
        for remaining, model, stream in (("2", "mock-gpt-model", False), ("1", "default", True), ("0", None, False)):
            raw = limited.chat.completions.with_raw_response.create(
                model=model or "mock-gpt-model", messages=MESSAGES, stream=stream
            )
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert raw.headers["x-ratelimit-remaining-requests"] == remaining
            assert raw.headers["x-ratelimit-reset-requests"] == "1m0s"
        clock.now = 45.0
        with pytest.raises(openai.RateLimitError) as caught:
            limited.chat.completions.create(model="mock-gpt-model", messages=MESSAGES)
        assert caught.value.response.headers["retry-after"] == "15"
        assert caught.value.code == "rate_limit_exceeded"
        with client(server, API_KEY) as admin:  # the other key is not affected
            assert admin.chat.completions.create(model="mock-gpt-model", messages=MESSAGES).choices
        clock.now = 60.0
        reply = limited.chat.completions.create(model="mock-gpt-model", messages=MESSAGES)
        assert reply.choices[0].message.content == "Hello!"


def test_no_key_no_service_but_health(server: ServerThread) -> None:
    chat = {"model": "mock-gpt-model", "messages": MESSAGES}
    refused = requests.post(server.url + "/v1/chat/completions", json=chat, timeout=TIMEOUT)
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(server.url + "/v1/models", timeout=TIMEOUT).status_code == 401
    assert requests.get(server.url + "/info", timeout=TIMEOUT).status_code == 401
    assert requests.get(server.url + "/health", timeout=TIMEOUT).json() == {"status": "ok"}
    info = requests.get(server.url + "/info", headers={"x-api-key": LIMITED_KEY}, timeout=TIMEOUT)
    assert info.status_code == 200
    assert API_KEY not in info.text and LIMITED_KEY not in info.text
