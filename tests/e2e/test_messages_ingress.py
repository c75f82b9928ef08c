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


@pytest.mark.parametrize("stream", [False, True])
def test_a_stop_sequence_hit_is_stop_sequence(claude: anthropic.Anthropic, stream: bool) -> None:
    request: Any = {"model": MODEL, "max_tokens": 100, "stop_sequences": ["zzz", "joke"], "messages": [
        {"role": "user", "content": PROMPT}
    ]}  # fmt: skip
    if stream:
        with claude.messages.stream(**request) as events:
            message = events.get_final_message()
    else:
        message = claude.messages.create(**request)
    assert message.content[0].type == "text" and message.content[0].text == "Tell me a "
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "joke"
    request["stop_sequences"] = ["absent"]
    assert claude.messages.create(**request).stop_reason == "end_turn"


def test_the_mock_calls_a_named_tool_then_answers_its_result(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "Use get_weather for Paris"}]
    first = claude.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    [block] = first.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "example"}
    messages += [
        {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny, 21C"}]},
    ]
    second = claude.messages.create(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].type == "text" and second.content[0].text == "sunny, 21C"


def test_a_streamed_tool_use_has_input_json_deltas(claude: anthropic.Anthropic) -> None:
    messages: Any = [{"role": "user", "content": "get_weather please"}]
    with claude.messages.stream(model=MODEL, max_tokens=100, tools=[WEATHER], messages=messages) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert deltas and all(e.delta.type == "input_json_delta" and e.index == 0 for e in deltas)
    assert len(deltas) > 1  # the arguments in pieces
    assert final.stop_reason == "tool_use"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "example"}
