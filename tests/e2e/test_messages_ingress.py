"""``POST /v1/messages`` end to end: the official ``anthropic`` SDK -> the gateway on the default
config (config/gateway.yaml: the mock backend serving ``mock-gpt-model``), plus raw bytes for the
exact event order and each error in Anthropic's shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import pytest

from gateway.testing import ServerThread, make_app

DEFAULT = Path(__file__).parents[2] / "config" / "gateway.yaml"
MODEL = "mock-gpt-model"
PROMPT = "Tell me a joke"
WEATHER: Any = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(make_app(DEFAULT)) as server:
        yield server.url


@pytest.fixture
def claude(url: str) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=10)
    yield client
    client.close()


def test_create_answers_a_message(claude: anthropic.Anthropic) -> None:
    message = claude.messages.create(
        model=MODEL, max_tokens=100, system="Be terse.", messages=[{"role": "user", "content": PROMPT}]
    )
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert message.role == "assistant" and message.model == MODEL
    assert message.content[0].type == "text" and PROMPT in message.content[0].text
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_stream_gives_text_and_a_final_message(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(model=MODEL, max_tokens=100, messages=[{"role": "user", "content": PROMPT}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert PROMPT in text
    assert final.content[0].text == text
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens > 0


def test_count_tokens(claude: anthropic.Anthropic) -> None:
    count = claude.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": PROMPT}])
    assert count.input_tokens > 0


def test_tool_use_round_trip_reaches_the_backend_as_chat(claude: anthropic.Anthropic) -> None:
    messages: Any = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    message = claude.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages)
    assert message.stop_reason == "end_turn"
    assert message.content and message.content[0].type == "text"


def test_unknown_model_is_anthropic_not_found(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        claude.messages.create(model="no-such-model", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
    assert caught.value.status_code == 404
    assert caught.value.body["type"] == "error"  # type: ignore[index]
    assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_missing_max_tokens_is_a_400_in_anthropic_shape(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
        async with http.post(f"{url}/v1/messages", json=body) as response:
            assert response.status == 400
            error = await response.json()
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in error["error"]["message"]


async def test_stream_event_order_on_the_wire(url: str) -> None:
    body = {"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "one two"}]}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/messages", json=body) as response:
        assert response.status == 200
        raw = (await response.read()).decode()
    events = [block.split("\n")[0].removeprefix("event: ") for block in raw.strip().split("\n\n")]
    kinds = list(dict.fromkeys(events))
    assert kinds == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0] == "message_start" and events[-1] == "message_stop"
    datas = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in raw.strip().split("\n\n")]
    assert all(d["type"] == e for d, e in zip(datas, events, strict=True))
    assert "[DONE]" not in raw
