"""Claude end to end: the official ``openai`` SDK (sync and async, streamed and not, tool calls
reassembled by its stream helpers) -> the gateway on config/examples/anthropic.yaml -> the anthropic
backend -> a fake Anthropic Messages API, all on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.config import ConfigError
from gateway.testing import ServerThread, make_app
from tests.upstreams.anthropic import API_KEY, AnthropicUpstream, Reply, text, tool_use

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "anthropic.yaml"
MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me a joke"},
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
TIME: Any = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}},
}
TOOL_REPLY = Reply(
    blocks=[
        text("Checking."),
        tool_use("toolu_W", "get_weather", {"city": "Paris", "unit": "celsius"}),
        tool_use("toolu_T", "get_time", {"zone": "Europe/Paris"}),
    ],
    stop_reason="tool_use",
    usage={"input_tokens": 40, "output_tokens": 30},
)


@pytest.fixture(scope="module")
def fake() -> Iterator[AnthropicUpstream]:
    upstream = AnthropicUpstream()
    with ServerThread(upstream.app) as server:
        upstream.base_url = server.url
        yield upstream


@pytest.fixture
def claude(fake: AnthropicUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The gateway on the example config, its variables from the environment; its URL."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.base_url)
    monkeypatch.setenv("ANTHROPIC_MODEL", "claude-sonnet-test")
    with ServerThread(make_app(EXAMPLE)) as server:
        yield server.url


@pytest.fixture
def client(claude: str) -> Iterator[OpenAI]:
    with OpenAI(base_url=claude + "/v1", api_key="unused", max_retries=0, timeout=10) as c:
        yield c


def test_the_example_config_serves_a_chat_completion(fake: AnthropicUpstream, client: OpenAI) -> None:
    completion = client.chat.completions.create(model="claude", messages=MESSAGES)
    assert completion.choices[0].message.content == "Hello from Claude"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "claude"
    assert completion.usage is not None and completion.usage.total_tokens == 17
    sent = fake.last.body
    assert sent["model"] == "claude-sonnet-test" and sent["system"] == "You are terse."
    assert sent["max_tokens"] == 4096
    assert fake.last.headers["x-api-key"] == API_KEY


def test_a_stream_with_usage(fake: AnthropicUpstream, client: OpenAI) -> None:
    fake.reply(
        Reply(blocks=[text("Why did the gateway cross the road?")], usage={"input_tokens": 9, "output_tokens": 10})
    )
    stream = client.chat.completions.create(
        model="claude-haiku-test", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Why did the gateway cross the road?"
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 19
    assert fake.last.body["model"] == "claude-haiku-test"


def test_tool_calls_are_reassembled_by_the_sdks_stream_helper(fake: AnthropicUpstream, client: OpenAI) -> None:
    fake.reply(TOOL_REPLY)
    with client.chat.completions.stream(model="claude", messages=MESSAGES, tools=[WEATHER, TIME]) as stream:
        arguments_done = [e.name for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert arguments_done == ["get_weather", "get_time"]
    message = final.choices[0].message
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.content == "Checking."
    assert message.tool_calls is not None
    calls = [(c.id, c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]  # type: ignore[union-attr]
    assert calls == [
        ("toolu_W", "get_weather", {"city": "Paris", "unit": "celsius"}),
        ("toolu_T", "get_time", {"zone": "Europe/Paris"}),
    ]


def test_a_tool_round_trip(fake: AnthropicUpstream, client: OpenAI) -> None:
    fake.reply(TOOL_REPLY, Reply(blocks=[text("21 C and 14:05 in Paris.")]))
    first = client.chat.completions.create(model="claude", messages=MESSAGES, tools=[WEATHER, TIME])
    message = first.choices[0].message
    assert message.tool_calls is not None
    history: Any = [
        *MESSAGES,
        message.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": f"result of {c.id}"} for c in message.tool_calls),
    ]
    second = client.chat.completions.create(model="claude", messages=history, tools=[WEATHER, TIME])
    assert second.choices[0].message.content == "21 C and 14:05 in Paris."
    assert fake.last.body["messages"][-1] == {
        "role": "user",
        "content": [
            {"type": "tool_result", "tool_use_id": "toolu_W", "content": "result of toolu_W"},
            {"type": "tool_result", "tool_use_id": "toolu_T", "content": "result of toolu_T"},
        ],
    }


async def test_the_async_sdk_streams_tool_calls(fake: AnthropicUpstream, claude: str) -> None:
    fake.reply(TOOL_REPLY)
    async with AsyncOpenAI(base_url=claude + "/v1", api_key="unused", max_retries=0, timeout=10) as client:
        async with client.chat.completions.stream(model="claude", messages=MESSAGES, tools=[WEATHER, TIME]) as stream:
            final = await stream.get_final_completion()
    assert [c.function.name for c in final.choices[0].message.tool_calls or ()] == ["get_weather", "get_time"]  # type: ignore[union-attr]


def test_errors_reach_the_sdk_as_its_classes(fake: AnthropicUpstream, client: OpenAI) -> None:
    fake.reply(Reply(status=529, error_message="Overloaded"), Reply(status=401, error_message="invalid x-api-key"))
    with pytest.raises(openai.InternalServerError) as overloaded:
        client.chat.completions.create(model="claude", messages=MESSAGES)
    assert overloaded.value.status_code == 503 and "overloaded" in overloaded.value.message
    with pytest.raises(openai.InternalServerError) as refused:  # the gateway's own key: not the client's fault
        client.chat.completions.create(model="claude", messages=MESSAGES)
    assert refused.value.status_code == 502 and refused.value.code == "upstream_auth_error"
    fake.reply(Reply(error_event_after=5))
    with pytest.raises(openai.APIError, match="is overloaded"):
        for _ in client.chat.completions.create(model="claude", messages=MESSAGES, stream=True):
            pass


def test_the_models_anthropic_lists_are_served(fake: AnthropicUpstream, client: OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == ["claude", "claude-sonnet-test", "claude-haiku-test", "claude-opus-test"]


def test_the_example_config_needs_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY is not set"):
        make_app(EXAMPLE)
