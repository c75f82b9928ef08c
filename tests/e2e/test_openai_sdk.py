"""The official ``openai`` SDK as the client: sync ``OpenAI`` against a server thread, async
``AsyncOpenAI`` against the ``gateway`` fixture; typed results, streaming, errors, tools."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.testing import MOCK_MODEL, ServerThread, mock_config, run_in_thread

PROMPT = "Say hello to the gateway tests"
MESSAGES: list[Any] = [{"role": "user", "content": PROMPT}]
TIMEOUT = 10.0
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
FORCE_WEATHER: Any = {"type": "function", "function": {"name": "get_weather"}}


# Fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with run_in_thread() as s:
        yield s


@pytest.fixture
def sync_client(server: ServerThread) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
async def async_client(gateway: Any) -> AsyncIterator[Any]:
    """``oai = await async_client(config=None)``: an AsyncOpenAI on a fresh gateway app."""
    clients: list[AsyncOpenAI] = []

    async def start(config: Any = None) -> AsyncOpenAI:
        http = await gateway(config)
        oai = AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="unused", max_retries=0, timeout=TIMEOUT)
        clients.append(oai)
        return oai

    yield start
    for oai in clients:
        await oai.close()


# Non-streaming ----------------------------------------------------------------------------------


def test_sync_create_returns_typed_completion_echoing_the_prompt(sync_client: OpenAI) -> None:
    completion = sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.object == "chat.completion"
    assert completion.model == MOCK_MODEL
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert choice.message.content == PROMPT
    assert completion.usage is not None
    assert completion.usage.completion_tokens == len(PROMPT.split())
    assert completion.usage.prompt_tokens > 0
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens


async def test_async_create_returns_typed_completion_echoing_the_prompt(async_client: Any) -> None:
    oai = await async_client()
    completion = await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.choices[0].message.content == PROMPT
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id.startswith("chatcmpl")


def test_sync_n_2_gives_two_choices(sync_client: OpenAI) -> None:
    completion = sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, n=2)
    assert [c.index for c in completion.choices] == [0, 1]
    assert [c.message.content for c in completion.choices] == [PROMPT, PROMPT]


def test_sync_extra_body_unknown_fields_are_accepted(sync_client: OpenAI) -> None:
    completion = sync_client.chat.completions.create(
        model=MOCK_MODEL,
        messages=MESSAGES,
        extra_body={"some_future_parameter": {"nested": [1, 2]}, "another_one": True},
    )
    assert completion.choices[0].message.content == PROMPT


def test_sync_max_tokens_cuts_the_reply(sync_client: OpenAI) -> None:
    completion = sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == "Say hello "


def test_sync_with_raw_response_exposes_request_id(sync_client: OpenAI) -> None:
    raw = sync_client.chat.completions.with_raw_response.create(model=MOCK_MODEL, messages=MESSAGES)
    request_id = raw.headers.get("x-request-id")
    assert request_id and len(request_id) >= 16
    assert raw.http_response.status_code == 200
    assert raw.parse().choices[0].message.content == PROMPT


def test_sync_client_request_id_is_echoed(sync_client: OpenAI) -> None:
    raw = sync_client.chat.completions.with_raw_response.create(
        model=MOCK_MODEL, messages=MESSAGES, extra_headers={"X-Request-ID": "sdk-test-request-1"}
    )
    assert raw.headers["x-request-id"] == "sdk-test-request-1"


async def test_async_with_raw_response_exposes_request_id(async_client: Any) -> None:
    oai = await async_client()
    raw = await oai.chat.completions.with_raw_response.create(model=MOCK_MODEL, messages=MESSAGES)
    assert raw.headers.get("x-request-id")
    assert (raw.parse()).choices[0].message.content == PROMPT


# Streaming --------------------------------------------------------------------------------------


def test_sync_stream_yields_typed_chunks_joining_to_the_prompt(sync_client: OpenAI) -> None:
    stream = sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == PROMPT
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content_chunks) == len(PROMPT.split())  # streamed word by word
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)


async def test_async_stream_yields_chunks_joining_to_the_prompt(async_client: Any) -> None:
    oai = await async_client()
    stream = await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    parts: list[str] = []
    finish: list[str | None] = []
    async for chunk in stream:
        assert isinstance(chunk, openai.types.chat.ChatCompletionChunk)
        for choice in chunk.choices:
            parts.append(choice.delta.content or "")
            finish.append(choice.finish_reason)
    assert "".join(parts) == PROMPT
    assert finish[-1] == "stop"
    assert finish[:-1] == [None] * (len(finish) - 1)


def test_sync_stream_include_usage_ends_with_a_usage_chunk(sync_client: OpenAI) -> None:
    stream = sync_client.chat.completions.create(
        model=MOCK_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == len(PROMPT.split())
    assert last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == PROMPT


async def test_async_stream_include_usage_ends_with_a_usage_chunk(async_client: Any) -> None:
    oai = await async_client()
    stream = await oai.chat.completions.create(
        model=MOCK_MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [c async for c in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(PROMPT.split())


def test_sync_stream_n_2_interleaves_two_choices(sync_client: OpenAI) -> None:
    stream = sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True, n=2)
    texts = {0: "", 1: ""}
    finish: dict[int, str | None] = {}
    for chunk in stream:
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finish[choice.index] = choice.finish_reason
    assert texts == {0: PROMPT, 1: PROMPT}
    assert finish == {0: "stop", 1: "stop"}


def test_sync_stream_with_raw_response_exposes_request_id(sync_client: OpenAI) -> None:
    raw = sync_client.chat.completions.with_raw_response.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    assert raw.headers.get("x-request-id")
    assert raw.headers["content-type"].startswith("text/event-stream")
    stream = raw.parse()
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == PROMPT


# Models -----------------------------------------------------------------------------------------


def test_sync_models_list_and_retrieve(sync_client: OpenAI) -> None:
    models = sync_client.models.list()
    ids = [m.id for m in models]
    assert MOCK_MODEL in ids
    model = sync_client.models.retrieve(MOCK_MODEL)
    assert isinstance(model, openai.types.Model)
    assert model.id == MOCK_MODEL
    assert model.object == "model"
    assert model.owned_by == "mock"


async def test_async_models_list_and_retrieve(async_client: Any) -> None:
    oai = await async_client()
    ids = [m.id async for m in oai.models.list()]
    assert ids == [MOCK_MODEL]
    assert (await oai.models.retrieve(MOCK_MODEL)).id == MOCK_MODEL


def test_sync_models_retrieve_unknown_is_not_found(sync_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sync_client.models.retrieve("no-such-model")
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.code == "model_not_found"


# Errors -----------------------------------------------------------------------------------------


def test_sync_invalid_temperature_is_bad_request(sync_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sync_client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, temperature=5)
    error = info.value
    assert error.status_code == 400
    assert isinstance(error.body, dict)
    assert error.body["param"] == "temperature"
    assert error.body["type"] == "invalid_request_error"
    assert error.param == "temperature"
    assert error.type == "invalid_request_error"
    assert "temperature" in error.message
    assert error.response.headers.get("x-request-id")


async def test_async_invalid_temperature_is_bad_request(async_client: Any) -> None:
    oai = await async_client()
    with pytest.raises(openai.BadRequestError) as info:
        await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, temperature=5)
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "temperature"


def test_sync_unknown_model_is_not_found(sync_client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sync_client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"
    assert info.value.body["param"] is None  # as OpenAI sends it
    assert "no-such-model" in info.value.body["message"]


async def test_async_unknown_model_is_not_found_also_when_streaming(async_client: Any) -> None:
    oai = await async_client()
    with pytest.raises(openai.NotFoundError) as info:
        await oai.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "model_not_found"


async def test_async_upstream_error_is_502(async_client: Any) -> None:
    oai = await async_client(mock_config(failure={"mode": "error", "status": 503}))
    with pytest.raises(openai.InternalServerError) as info:
        await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    error = info.value
    assert isinstance(error, openai.APIStatusError)
    assert error.status_code == 502
    assert isinstance(error.body, dict)
    assert error.body["type"] == "upstream_error"
    assert error.body["code"] == "bad_gateway"
    assert "503" in error.body["message"]


async def test_async_upstream_error_before_the_stream_is_a_502_status_error(async_client: Any) -> None:
    oai = await async_client(mock_config(failure={"mode": "error", "status": 503}))
    with pytest.raises(openai.APIStatusError) as info:
        await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    assert info.value.status_code == 502


def test_sync_upstream_error_is_502() -> None:
    with (
        run_in_thread(mock_config(failure={"mode": "error", "status": 503})) as server,
        OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) as client,
        pytest.raises(openai.InternalServerError) as info,
    ):
        client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert info.value.status_code == 502


async def test_async_midstream_failure_raises_api_error_during_iteration(async_client: Any) -> None:
    oai = await async_client(mock_config(failure={"mode": "midstream", "after_chunks": 3}))
    stream = await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 3  # the chunks before the break arrive first
    assert "".join(c.choices[0].delta.content or "" for c in received) == "Say hello "
    assert not isinstance(info.value, openai.APIStatusError)  # the status was already 200
    assert isinstance(info.value.body, dict)
    assert info.value.body["type"] == "upstream_error"
    assert "broke off" in info.value.message


def test_sync_midstream_failure_raises_api_error_during_iteration() -> None:
    count = 0
    with (
        run_in_thread(mock_config(failure={"mode": "midstream", "after_chunks": 2})) as server,
        OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) as client,
    ):
        stream = client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="broke off"):
            for _ in stream:
                count += 1
    assert count == 2


async def test_async_backend_timeout_is_504(async_client: Any) -> None:
    oai = await async_client(mock_config(failure={"mode": "hang"}, timeout=0.2))
    with pytest.raises(openai.APIStatusError) as info:
        await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert info.value.status_code == 504
    assert isinstance(info.value.body, dict)
    assert info.value.body["code"] == "upstream_timeout"


# Tools ------------------------------------------------------------------------------------------


def _check_weather_arguments(arguments: str) -> None:
    parsed = json.loads(arguments)
    assert isinstance(parsed, dict)
    assert set(WEATHER_TOOL["function"]["parameters"]["required"]) <= parsed.keys()
    assert isinstance(parsed["city"], str)
    assert parsed["unit"] in ("celsius", "fahrenheit")
    assert isinstance(parsed["days"], int) and 1 <= parsed["days"] <= 7


def test_sync_required_tool_call(sync_client: OpenAI) -> None:
    completion = sync_client.chat.completions.create(
        model=MOCK_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    _check_weather_arguments(call.function.arguments)


async def test_async_forced_tool_call_streamed(async_client: Any) -> None:
    oai = await async_client()
    stream = await oai.chat.completions.create(
        model=MOCK_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER, stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish: str | None = None
    deltas = 0
    async for chunk in stream:
        for choice in chunk.choices:
            if choice.finish_reason:
                finish = choice.finish_reason
            for delta in choice.delta.tool_calls or ():
                deltas += 1
                call = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                if delta.id:
                    call["id"] = delta.id
                if delta.function is not None:
                    call["name"] += delta.function.name or ""
                    call["arguments"] += delta.function.arguments or ""
    assert finish == "stop"  # a named function, as OpenAI answers it
    assert list(calls) == [0]
    assert deltas > 2  # the arguments arrive in several fragments
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    _check_weather_arguments(calls[0]["arguments"])


def test_sync_forced_tool_call_streamed(sync_client: OpenAI) -> None:
    stream = sync_client.chat.completions.create(
        model=MOCK_MODEL, messages=MESSAGES, tools=[WEATHER_TOOL], tool_choice=FORCE_WEATHER, stream=True
    )
    arguments: dict[int, str] = {}
    names: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or ():
                arguments[delta.index] = arguments.get(delta.index, "") + (
                    delta.function.arguments or "" if delta.function else ""
                )
                if delta.function is not None and delta.function.name:
                    names[delta.index] = names.get(delta.index, "") + delta.function.name
    assert names == {0: "get_weather"}
    _check_weather_arguments(arguments[0])


def test_sync_tool_choice_naming_an_unknown_function_is_bad_request(sync_client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sync_client.chat.completions.create(
            model=MOCK_MODEL,
            messages=MESSAGES,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "nope"}},
        )
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "tool_choice"
