"""``/v1/messages`` over an OpenAI-compatible upstream: the official ``anthropic`` SDK -> the gateway
-> ``openai_compat`` -> a fake OpenAI API (tests/upstreams/openai.py) that answers text and tool
calls, streamed in pieces and not; errors (bad key, rate limit, missing ``max_tokens``, unknown model)
raised as the SDK's own exception classes; the endpoint's name on /metrics and the access line."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import pytest

from gateway.log import setup_logging
from tests.upstreams.openai import OpenAIUpstream, Reply

MODEL = "gpt-4o-mini"
GATEWAY_KEY = "gw-key-0123456789"
PROMPT: Any = [{"role": "user", "content": "What is the weather in Paris and the time?"}]
TOOLS: Any = [
    {"name": "get_weather", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
    {"name": "get_time", "input_schema": {"type": "object", "properties": {"zone": {"type": "string"}}}},
]
WEATHER_ARGS = '{"city": "Paris", "unit": "celsius"}'
TIME_ARGS = '{"zone": "Europe/Paris"}'
TOOL_REPLY = Reply(
    content="Checking both.",
    tool_calls=[("get_weather", WEATHER_ARGS), ("get_time", TIME_ARGS)],  # ids call_0, call_1
    usage=(30, 12),
)

Start = Callable[..., Awaitable[anthropic.AsyncAnthropic]]


@pytest.fixture
async def start(gateway: Any, upstream: OpenAIUpstream) -> AsyncIterator[Start]:
    """``claude = await start(plugins=None, api_key="unused")``: an AsyncAnthropic on the gateway."""
    clients: list[anthropic.AsyncAnthropic] = []

    async def run(plugins: Any = None, **options: Any) -> anthropic.AsyncAnthropic:
        backend = {"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up"}  # type: ignore[attr-defined]
        config = {"backends": [backend], "models": [{"name": MODEL, "backend": "up"}], "plugins": plugins or {}}
        http = await gateway(config)
        options.setdefault("api_key", "unused")
        client = anthropic.AsyncAnthropic(base_url=str(http.make_url("")), max_retries=0, timeout=10, **options)
        clients.append(client)
        return client

    yield run
    for client in clients:
        await client.close()


async def test_create_and_count_tokens(upstream: OpenAIUpstream, start: Start) -> None:
    claude = await start()
    message = await claude.messages.create(model=MODEL, max_tokens=50, system="Be terse.", messages=PROMPT)
    assert message.content[0].type == "text" and message.content[0].text == "Hello from upstream"
    assert message.stop_reason == "end_turn" and message.model == MODEL
    assert (message.usage.input_tokens, message.usage.output_tokens) == (11, 4)
    sent = upstream.last.body
    assert sent["messages"][0] == {"role": "system", "content": "Be terse."}
    assert sent["max_tokens"] == 50
    count = await claude.messages.count_tokens(model=MODEL, system="Be terse.", messages=PROMPT)
    assert count.input_tokens > 0
    assert len(upstream.requests) == 1  # counting asks no upstream


async def test_stream_text_and_final_message(upstream: OpenAIUpstream, start: Start) -> None:
    claude = await start()
    upstream.reply(Reply(content="one two three", usage=(9, 3)))
    async with claude.messages.stream(model=MODEL, max_tokens=50, messages=PROMPT) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert pieces == ["one ", "two ", "three"]
    assert final.content[0].text == "one two three" and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 3)
    assert upstream.last.body["stream_options"] == {"include_usage": True}


async def test_tool_use_round_trip(upstream: OpenAIUpstream, start: Start) -> None:
    claude = await start()
    upstream.reply(TOOL_REPLY, Reply(content="Sunny, and it is noon."))
    first = await claude.messages.create(model=MODEL, max_tokens=50, tools=TOOLS, messages=PROMPT)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content] == ["text", "tool_use", "tool_use"]
    weather, time = first.content[1], first.content[2]
    assert (weather.id, weather.name, weather.input) == ("call_0", "get_weather", json.loads(WEATHER_ARGS))  # type: ignore[union-attr]
    assert (time.id, time.input) == ("call_1", json.loads(TIME_ARGS))  # type: ignore[union-attr]
    assert upstream.last.body["tools"][0] == {
        "type": "function",
        "function": {"name": "get_weather", "parameters": TOOLS[0]["input_schema"]},
    }
    results: Any = [
        {"type": "tool_result", "tool_use_id": "call_0", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_1", "content": [{"type": "text", "text": "12:00"}]},
    ]
    messages = [*PROMPT, {"role": "assistant", "content": first.content}, {"role": "user", "content": results}]
    second = await claude.messages.create(model=MODEL, max_tokens=50, tools=TOOLS, messages=messages)
    assert second.content[0].text == "Sunny, and it is noon." and second.stop_reason == "end_turn"  # type: ignore[union-attr]
    sent = upstream.last.body["messages"]
    assert sent[1]["tool_calls"][0] == {
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps(json.loads(WEATHER_ARGS), separators=(",", ":"))},
    }
    assert sent[2:] == [
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny"},
        {"role": "tool", "tool_call_id": "call_1", "content": "12:00"},
    ]


async def test_streamed_tool_calls_are_input_json_deltas_of_their_blocks(
    upstream: OpenAIUpstream, start: Start
) -> None:
    claude = await start()
    upstream.reply(TOOL_REPLY)
    async with claude.messages.stream(model=MODEL, max_tokens=50, tools=TOOLS, messages=PROMPT) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_message()
    starts = [(e.index, e.content_block.type) for e in events if e.type == "content_block_start"]
    assert starts == [(0, "text"), (1, "tool_use"), (2, "tool_use")]
    json_deltas: dict[int, str] = {}
    for e in events:
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta":
            json_deltas[e.index] = json_deltas.get(e.index, "") + e.delta.partial_json
    assert json_deltas == {1: WEATHER_ARGS, 2: TIME_ARGS}
    assert sum(1 for e in events if e.type == "content_block_delta" and e.index == 1) > 1  # in pieces
    assert final.stop_reason == "tool_use"
    assert [b.input for b in final.content[1:]] == [json.loads(WEATHER_ARGS), json.loads(TIME_ARGS)]  # type: ignore[union-attr]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_string_the_upstream_reports_is_stop_sequence(
    upstream: OpenAIUpstream, start: Start, stream: bool
) -> None:
    claude = await start()
    upstream.reply(Reply(content="one two", stop_reason="END"), Reply(content="one two"))
    request: Any = {"model": MODEL, "max_tokens": 50, "messages": PROMPT, "stop_sequences": ["END"]}
    if stream:
        async with claude.messages.stream(**request) as events:
            message = await events.get_final_message()
    else:
        message = await claude.messages.create(**request)
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert upstream.last.body["stop"] == ["END"]
    message = await claude.messages.create(**request)  # only finish_reason stop: end_turn
    assert (message.stop_reason, message.stop_sequence) == ("end_turn", None)


@pytest.mark.parametrize("header", ["x-api-key", "bearer"])
async def test_a_bad_key_is_an_authentication_error(start: Start, header: str) -> None:
    plugins = {"auth_api_keys": {"mode": "required", "keys": [{"name": "team", "key": GATEWAY_KEY}]}}
    as_token = header == "bearer"
    bad = await start(plugins, **({"api_key": None, "auth_token": "wrong"} if as_token else {"api_key": "wrong"}))
    with pytest.raises(anthropic.AuthenticationError) as caught:
        await bad.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    good = await start(
        plugins, **({"api_key": None, "auth_token": GATEWAY_KEY} if as_token else {"api_key": GATEWAY_KEY})
    )
    assert (await good.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)).content


async def test_rate_limits_are_rate_limit_errors_with_retry_after(upstream: OpenAIUpstream, start: Start) -> None:
    limited = {"auth_api_keys": {"keys": [{"name": "team", "key": GATEWAY_KEY, "limits": {"requests_per_minute": 1}}]}}
    claude = await start(limited, api_key=GATEWAY_KEY)
    await claude.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    with pytest.raises(anthropic.RateLimitError) as caught:  # the gateway's own limit
        await claude.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    assert int(caught.value.response.headers["retry-after"]) > 0
    claude = await start()
    upstream.reply(Reply(status=429, headers={"Retry-After": "7"}))
    with pytest.raises(anthropic.RateLimitError) as caught:  # the upstream's
        await claude.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    assert caught.value.response.headers["retry-after"] == "7"


async def test_missing_max_tokens_and_unknown_model(start: Start) -> None:
    claude = await start()
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model=MODEL, max_tokens=anthropic.omit, messages=PROMPT)  # type: ignore[arg-type]
    assert bad.value.status_code == 400
    assert bad.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "max_tokens" in bad.value.body["error"]["message"]  # type: ignore[index]
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="no-such-model", max_tokens=5, messages=PROMPT)
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


async def test_metrics_and_the_access_line_name_the_endpoint(start: Start) -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    claude = await start()
    await claude.messages.create(model=MODEL, max_tokens=5, messages=PROMPT)
    await claude.messages.count_tokens(model=MODEL, messages=PROMPT)
    async with aiohttp.ClientSession() as http, http.get(str(claude.base_url).rstrip("/") + "/metrics") as response:
        text = await response.text()
    assert 'endpoint="messages",model="gpt-4o-mini"' in text
    assert 'endpoint="messages.count_tokens"' in text
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    access = {line["path"]: line for line in lines if line["event"] == "request"}
    assert access["/v1/messages"]["endpoint"] == "messages" and access["/v1/messages"]["backend"] == "up"
    assert access["/v1/messages"]["prompt_tokens"] == 11
    assert access["/v1/messages/count_tokens"]["endpoint"] == "messages.count_tokens"
    assert access["/v1/messages/count_tokens"]["status"] == 200
