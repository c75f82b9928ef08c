"""Seed 003 end to end: the official ``openai`` SDK -> the gateway on config/examples/http_api.yaml ->
http_template -> a fake custom chat API (tests/upstreams/chat_api.py), all on 127.0.0.1."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.config import ConfigError
from gateway.testing import ServerThread, make_app
from tests.upstreams.chat_api import ChatAPI, Reply

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "http_api.yaml"
KEY = "chat-api-key-from-the-environment"
CONVERSATION: Any = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather like today?"},
    {"role": "assistant", "content": "Sunny."},
    {"role": "user", "content": "And tomorrow?"},
]


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[ChatAPI, str]]:
    fake = ChatAPI()
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/chatting"


@pytest.fixture
def gateway_url(api: tuple[ChatAPI, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The gateway on the example config, CHAT_API_URL from the environment and no key; its URL."""
    api[0].key = None
    monkeypatch.setenv("CHAT_API_URL", api[1])
    monkeypatch.delenv("CHAT_API_KEY", raising=False)
    with ServerThread(make_app(EXAMPLE)) as server:
        yield server.url


def sdk(url: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=10)


def test_the_sdk_chats_with_the_custom_api(api: Any, gateway_url: str) -> None:
    fake, _ = api
    with sdk(gateway_url) as client:
        completion = client.chat.completions.create(model="custom-chat", messages=CONVERSATION, temperature=0.7)
        models = [m.id for m in client.models.list()]
    assert completion.choices[0].message.content == "You said: And tomorrow?"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "custom-chat"
    assert completion.usage is not None and completion.usage.completion_tokens > 0
    assert fake.last.body == {"message": "And tomorrow?", "history": CONVERSATION[:3]}
    assert "authorization" not in {k.lower() for k in fake.last.headers}
    assert models == ["custom-chat"]


def test_the_sdk_streams_the_reply_word_by_word(api: Any, gateway_url: str) -> None:
    fake, _ = api
    fake.reply(Reply(text="It will rain tomorrow."))
    with sdk(gateway_url) as client:
        stream = client.chat.completions.create(
            model="custom-chat", messages=CONVERSATION, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert pieces == ["It ", "will ", "rain ", "tomorrow."]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 6


def test_a_client_naming_no_model_gets_custom_chat(api: Any, gateway_url: str) -> None:
    import requests

    resp = requests.post(gateway_url + "/v1/chat/completions", json={"messages": CONVERSATION[1:2]}, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"] == "custom-chat"


def test_the_key_from_the_environment_goes_as_a_bearer_header(
    api: tuple[ChatAPI, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = api
    fake.key = KEY
    monkeypatch.setenv("CHAT_API_URL", url)
    monkeypatch.setenv("CHAT_API_KEY", KEY)
    try:
        with ServerThread(make_app(EXAMPLE)) as server, sdk(server.url) as client:
            completion = client.chat.completions.create(model="custom-chat", messages=CONVERSATION[1:2])
    finally:
        fake.key = None
    assert completion.choices[0].message.content == "You said: What is the weather like today?"
    assert fake.last.headers["Authorization"] == f"Bearer {KEY}"


def test_an_unreachable_api_is_a_502_the_sdk_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("CHAT_API_URL", f"http://127.0.0.1:{port}/chatting")
    with ServerThread(make_app(EXAMPLE)) as server, sdk(server.url) as client:
        with pytest.raises(openai.InternalServerError) as raised:
            client.chat.completions.create(model="custom-chat", messages=CONVERSATION[1:2])
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="custom-chat", messages=CONVERSATION[1:2], stream=True)
    assert raised.value.status_code == 502
    assert raised.value.body["message"] == "Backend 'chat-api' is unreachable: connection refused."  # type: ignore[index]


def test_without_chat_api_url_the_gateway_does_not_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CHAT_API_URL", raising=False)
    with pytest.raises(ConfigError, match="environment variable CHAT_API_URL is not set"):
        make_app(EXAMPLE)


async def test_the_async_sdk_streams_and_chats(aiohttp_server: Any, aiohttp_client: Any, monkeypatch: Any) -> None:
    fake = ChatAPI()
    server = await aiohttp_server(fake.app)
    monkeypatch.setenv("CHAT_API_URL", str(server.make_url("/chatting")))
    http = await aiohttp_client(make_app(EXAMPLE))
    async with AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="unused", max_retries=0) as client:
        completion = await client.chat.completions.create(model="custom-chat", messages=CONVERSATION)
        stream = await client.chat.completions.create(model="custom-chat", messages=CONVERSATION, stream=True)
        pieces = [c.choices[0].delta.content async for c in stream if c.choices and c.choices[0].delta.content]
    assert completion.choices[0].message.content == "You said: And tomorrow?"
    assert pieces == ["You ", "said: ", "And ", "tomorrow?"]
    assert fake.requests[0].body == fake.requests[1].body
