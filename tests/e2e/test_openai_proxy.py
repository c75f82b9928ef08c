"""Seed 001 end to end: the official ``openai`` SDK -> the gateway on config/examples/openai.yaml ->
openai_compat -> a fake OpenAI API, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.config import ConfigError
from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "openai.yaml"
KEY = "sk-from-the-environment-123456"
MESSAGES: Any = [{"role": "user", "content": "Hello! Provide 3 bullet points why the ocean is important."}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[OpenAIUpstream, str]]:
    fake = OpenAIUpstream()
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


@pytest.fixture
def proxy(upstream: tuple[OpenAIUpstream, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The gateway on the example config, its variables from the environment; its URL."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_BASE", upstream[1])
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    with ServerThread(make_app(EXAMPLE)) as server:
        yield server.url


def sdk(url: str, key: str = "unused") -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_the_sdk_chats_through_the_proxy_with_its_own_key(upstream: Any, proxy: str) -> None:
    fake, _ = upstream
    with sdk(proxy, "sk-the-clients-own") as client:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        completion = raw.parse()
    assert completion.choices[0].message.content == "Hello from upstream"
    assert completion.usage is not None and completion.usage.total_tokens == 15
    assert fake.last.headers["Authorization"] == "Bearer sk-the-clients-own"  # seed 001: a client's key wins
    assert completion._request_id == f"req_{len(fake.requests)}"


def test_the_environment_key_and_default_model_serve_a_client_that_sends_neither(upstream: Any, proxy: str) -> None:
    import requests

    fake, _ = upstream
    resp = requests.post(proxy + "/v1/chat/completions", json={"messages": MESSAGES}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert fake.last.headers["Authorization"] == f"Bearer {KEY}"
    assert fake.last.body["model"] == "gpt-4o-mini"  # OPENAI_MODEL's default


def test_streaming_through_the_proxy(upstream: Any, proxy: str) -> None:
    fake, _ = upstream
    with sdk(proxy) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from upstream"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert fake.last.body["model"] == "gpt-4o"


def test_every_upstream_model_is_listed(upstream: Any, proxy: str) -> None:
    fake, _ = upstream
    with sdk(proxy) as client:
        assert [m.id for m in client.models.list()] == fake.models


def test_upstream_errors_reach_the_sdk_as_its_error_classes(upstream: Any, proxy: str) -> None:
    fake, _ = upstream
    not_found = {"error": {"message": "The model `gpt-9` does not exist", "type": "invalid_request_error",
                           "param": None, "code": "model_not_found"}}  # fmt: skip
    fake.reply(Reply(status=404, error=not_found), Reply(status=500), Reply(status=429, headers={"Retry-After": "1"}))
    with sdk(proxy) as client:
        with pytest.raises(openai.NotFoundError) as found:
            client.chat.completions.create(model="gpt-9", messages=MESSAGES)
        assert found.value.code == "model_not_found"
        with pytest.raises(openai.APIStatusError) as failed:
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert failed.value.status_code == 502
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)


def test_info_shows_the_theme_and_no_secret(proxy: str) -> None:
    import requests

    info = requests.get(proxy + "/info", timeout=10).json()
    assert info["theme"]["primary"] == "#2563EB"
    assert KEY not in str(info)


async def test_the_async_sdk_streams(aiohttp_server: Any, aiohttp_client: Any, monkeypatch: Any) -> None:
    fake = OpenAIUpstream()
    upstream = await aiohttp_server(fake.app)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_BASE", str(upstream.make_url("/v1")))
    http = await aiohttp_client(make_app(EXAMPLE))
    async with AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="x", max_retries=0) as client:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from upstream"


def test_the_key_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    unset = r"openai\.yaml:\d+: backends\[0\]\.api_key: environment variable OPENAI_API_KEY"
    with pytest.raises(ConfigError, match=unset):
        make_app(EXAMPLE)


def test_a_dotenv_file_configures_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_API_BASE", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("OPENAI_API_KEY=sk-REPLACE_ME\nOPENAI_MODEL=gpt-4o\n")
    app = make_app(EXAMPLE)  # the tests run in tmp_path (conftest): ./.env is read
    from gateway.keys import generations_key

    assert app[generations_key].current.config.default_model == "gpt-4o"
