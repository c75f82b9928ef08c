"""The mock backend, driven directly (no app): replies, streaming shape, tools, failures, cancellation."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any, Literal

import jsonschema
import pluggy
import pytest
from pydantic import BaseModel, Field, ValidationError

from gateway import hookspecs
from gateway.backend import BackendConfig
from gateway.context import Deployment, RequestContext
from gateway.errors import InvalidRequestError, ModelNotFoundError, RateLimitError, UpstreamError
from gateway.formats.json_schema import example_value
from gateway_plugins.backends import mock
from gateway_plugins.backends.mock import NO_USER_MESSAGE_REPLY, MockBackend

MODEL = "mock-gpt-model"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "minLength": 10},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
            "required": ["query", "tags"],
        },
    },
}


def backend(**config: Any) -> MockBackend:
    return MockBackend(MockBackend.Config(name="mock", type="mock", **config))


def context(b: MockBackend, body: dict[str, Any], *, stream: bool = False, served: str = MODEL) -> RequestContext:
    return RequestContext(
        request=None,
        request_id="t",
        generation=None,
        body=body,
        model="client-model",
        stream=stream,
        deployment=Deployment(b, served),
    )


def ask(text: str | None = "Hello there, mock world!", **body: Any) -> dict[str, Any]:
    return {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}], **body}


async def run(b: MockBackend, body: dict[str, Any], *, stream: bool = False) -> tuple[list[dict[str, Any]], Any]:
    ctx = context(b, body, stream=stream)
    return [item async for item in b.chat(ctx)], ctx.usage


async def complete(b: MockBackend, body: dict[str, Any]) -> dict[str, Any]:
    items, _ = await run(b, body)
    assert len(items) == 1
    return items[0]


async def drain(iterator: Any, into: list[dict[str, Any]]) -> None:
    async for item in iterator:
        into.append(item)


def choice_deltas(chunks: list[dict[str, Any]], index: int = 0) -> list[tuple[dict[str, Any], str | None]]:
    return [
        (c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
        for c in chunks
        if c["choices"][0]["index"] == index
    ]


def content_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(d.get("content") or "" for d, _ in choice_deltas(chunks, index))


# Non-streaming ---------------------------------------------------------------------------------


async def test_echoes_the_last_user_message_as_an_exact_chat_completion() -> None:
    body = ask()
    body["messages"] += [{"role": "assistant", "content": "earlier"}, {"role": "user", "content": "last one"}]
    result, usage = await run(backend(), body)
    completion = result[0]
    assert set(completion) == {"id", "object", "created", "model", "choices", "usage"}
    assert completion["id"].startswith("chatcmpl-")
    assert len(completion["id"]) >= 9 + 24
    assert completion["object"] == "chat.completion"
    assert completion["model"] == "client-model"
    assert abs(completion["created"] - time.time()) < 5
    assert completion["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "last one", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert completion["usage"] == usage == {"prompt_tokens": 28, "completion_tokens": 2, "total_tokens": 30}


async def test_echoes_text_parts_and_falls_back_without_a_user_message() -> None:
    parts = [
        {"type": "text", "text": "first"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "second"},
    ]
    completion = await complete(backend(), ask(parts))
    assert completion["choices"][0]["message"]["content"] == "first\nsecond"
    completion = await complete(backend(), {"messages": [{"role": "system", "content": "hi"}]})
    assert completion["choices"][0]["message"]["content"] == NO_USER_MESSAGE_REPLY


async def test_fixed_reply_and_n_choices() -> None:
    completion = await complete(backend(reply="Fixed answer."), ask(n=3))
    assert [c["index"] for c in completion["choices"]] == [0, 1, 2]
    assert {c["message"]["content"] for c in completion["choices"]} == {"Fixed answer."}
    assert completion["usage"]["completion_tokens"] == 3 * 2


async def test_max_tokens_cuts_with_length_and_max_completion_tokens_wins() -> None:
    b = backend(reply="one two three four five")
    completion = await complete(b, ask(max_tokens=2))
    assert completion["choices"][0]["message"]["content"] == "one two "
    assert completion["choices"][0]["finish_reason"] == "length"
    assert completion["usage"]["completion_tokens"] == 2
    completion = await complete(b, ask(max_tokens=1, max_completion_tokens=3))
    assert completion["choices"][0]["message"]["content"] == "one two three "
    completion = await complete(b, ask(max_tokens=5))
    assert completion["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("stop", "expected"), [("world", "Hello "), (["!", "lo"], "Hel"), (["absent"], "Hello world!")]
)
async def test_stop_cuts_before_the_first_stop_string(stop: Any, expected: str) -> None:
    completion = await complete(backend(reply="Hello world!"), ask(stop=stop))
    assert completion["choices"][0]["message"]["content"] == expected
    assert completion["choices"][0]["finish_reason"] == "stop"


async def test_unknown_model_is_refused() -> None:
    b = backend(models=["other"])
    with pytest.raises(ModelNotFoundError) as info:
        await run(b, ask())
    assert info.value.status == 404
    assert "client-model" in info.value.message


# Streaming -------------------------------------------------------------------------------------


async def test_stream_word_by_word_with_role_first_and_one_finish() -> None:
    text = "  Hello   there,\nmock world!  "
    chunks, usage = await run(backend(), ask(text), stream=True)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert chunks[0]["id"].startswith("chatcmpl-")
    for c in chunks:
        assert set(c) == {"id", "object", "created", "model", "choices"}
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == "client-model"
        assert set(c["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    deltas = choice_deltas(chunks)
    assert deltas[0] == ({"role": "assistant", "content": "", "refusal": None}, None)
    assert deltas[-1] == ({}, "stop")
    assert [f for _, f in deltas].count("stop") == 1
    assert all(f is None for _, f in deltas[:-1])
    pieces = [d["content"] for d, _ in deltas[1:-1]]
    assert pieces == ["  Hello   ", "there,\n", "mock ", "world!  "]
    assert "".join(pieces) == text
    assert usage["completion_tokens"] == 4


async def test_stream_interleaves_n_choices() -> None:
    chunks, usage = await run(backend(reply="a b c"), ask(n=2), stream=True)
    assert [c["choices"][0]["index"] for c in chunks] == [0, 1] * 5
    for index in (0, 1):
        deltas = choice_deltas(chunks, index)
        assert deltas[0][0] == {"role": "assistant", "content": "", "refusal": None}
        assert [f for _, f in deltas] == [None] * 4 + ["stop"]
        assert content_of(chunks, index) == "a b c"
    assert usage["completion_tokens"] == 6


async def test_stream_honours_max_tokens_and_stop() -> None:
    chunks, usage = await run(backend(reply="one two three four"), ask(max_tokens=3), stream=True)
    assert content_of(chunks) == "one two three "
    assert choice_deltas(chunks)[-1] == ({}, "length")
    assert usage["completion_tokens"] == 3
    chunks, _ = await run(backend(reply="one two. three"), ask(stop="."), stream=True)
    assert content_of(chunks) == "one two"
    assert choice_deltas(chunks)[-1] == ({}, "stop")


async def test_include_usage_adds_null_usage_and_a_final_usage_chunk() -> None:
    chunks, usage = await run(backend(reply="a b"), ask(stream_options={"include_usage": True}), stream=True)
    *body, last = chunks
    assert all("usage" in c and c["usage"] is None for c in body)
    assert last["choices"] == []
    assert last["id"] == body[0]["id"]
    assert last["usage"] == usage == {"prompt_tokens": 18, "completion_tokens": 2, "total_tokens": 20}
    chunks, _ = await run(backend(), ask(stream_options={"include_usage": False}), stream=True)
    assert all("usage" not in c for c in chunks)


async def test_chunks_splits_into_exactly_that_many_content_chunks() -> None:
    text = "The quick brown fox jumps over the lazy dog, " * 3
    chunks, usage = await run(backend(chunks=20), ask(text), stream=True)
    content = [d["content"] for d, _ in choice_deltas(chunks)[1:-1]]
    assert len(content) == 20
    assert "".join(content) == text
    assert max(map(len, content)) - min(map(len, content)) <= 1
    assert usage["completion_tokens"] == 20


async def test_delays_sleep_only_when_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float) -> None:
        slept.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(mock.asyncio, "sleep", recording_sleep)
    options = {"stream_options": {"include_usage": True}}
    chunks, _ = await run(backend(reply="a b c", first_chunk_delay=0.3, chunk_delay=0.1), ask(**options), stream=True)
    assert slept == [0.3] + [0.1] * (len(chunks) - 1)
    slept.clear()
    await run(backend(reply="a b c", first_chunk_delay=0.3, chunk_delay=0.1), ask())
    assert slept == [0.3]
    slept.clear()
    chunks, _ = await run(backend(reply="a b c"), ask(**options), stream=True)
    assert len(chunks) == 6
    assert slept == []


# Tool calls ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool_choice", "tool"),
    [("required", WEATHER), ({"type": "function", "function": {"name": "search"}}, SEARCH)],
)
async def test_forced_tool_call_has_schema_valid_arguments(tool_choice: Any, tool: dict[str, Any]) -> None:
    completion = await complete(backend(), ask(tools=[WEATHER, SEARCH], tool_choice=tool_choice, n=2))
    ids = set()
    for choice in completion["choices"]:
        assert choice["finish_reason"] == ("tool_calls" if tool_choice == "required" else "stop")
        message = choice["message"]
        assert message["content"] is None
        assert message["refusal"] is None
        [call] = message["tool_calls"]
        assert set(call) == {"id", "type", "function"}
        assert call["type"] == "function"
        assert call["id"].startswith("call_")
        ids.add(call["id"])
        assert call["function"]["name"] == tool["function"]["name"]
        jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])
    assert len(ids) == 2


async def test_auto_and_none_tool_choice_reply_with_text() -> None:
    for tool_choice in ("auto", "none", None):
        completion = await complete(backend(reply="plain"), ask(tools=[WEATHER], tool_choice=tool_choice))
        assert completion["choices"][0]["message"] == {"role": "assistant", "content": "plain", "refusal": None}


async def test_streamed_tool_call_deltas() -> None:
    chunks, usage = await run(backend(), ask(tools=[WEATHER], tool_choice="required"), stream=True)
    deltas = choice_deltas(chunks)
    first, _ = deltas[0]
    assert first["role"] == "assistant"
    assert first["content"] is None
    [call] = first["tool_calls"]
    assert call["index"] == 0
    assert call["id"].startswith("call_")
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": ""}
    fragments = []
    for delta, finish in deltas[1:-1]:
        assert finish is None
        assert set(delta) == {"tool_calls"}
        [part] = delta["tool_calls"]
        assert set(part) == {"index", "function"}
        assert part["index"] == 0
        assert set(part["function"]) == {"arguments"}
        assert 0 < len(part["function"]["arguments"]) <= 8
        fragments.append(part["function"]["arguments"])
    assert deltas[-1] == ({}, "tool_calls")
    jsonschema.validate(json.loads("".join(fragments)), WEATHER["function"]["parameters"])
    assert usage["completion_tokens"] == len(fragments)


def call_turn(name: str, call_id: str = "call_1", result: str = "sunny") -> list[dict[str, Any]]:
    """An assistant turn calling ``name`` and the tool result answering it."""
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}
    return [
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call_id, "content": result},
    ]


@pytest.mark.parametrize("tool_choice", ["auto", None])
async def test_auto_calls_the_tool_the_last_user_message_names(tool_choice: Any) -> None:
    body = ask("What does Get_Weather say, then search?", tools=[SEARCH, WEATHER], tool_choice=tool_choice)
    [choice] = (await complete(backend(), body))["choices"]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"  # named first in the message
    jsonschema.validate(json.loads(call["function"]["arguments"]), WEATHER["function"]["parameters"])
    body["messages"] += call_turn("get_weather")
    [choice] = (await complete(backend(), body))["choices"]
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "search"  # the next one named
    body["messages"] += call_turn("search", "call_2", "found it")
    [choice] = (await complete(backend(), body))["choices"]
    assert choice["message"] == {"role": "assistant", "content": "sunny\nfound it", "refusal": None}
    assert choice["finish_reason"] == "stop"


async def test_auto_without_a_named_tool_and_none_reply_in_text() -> None:
    for body in (
        ask("search-engine weather", tools=[SEARCH, WEATHER]),
        ask("search", tools=[SEARCH], tool_choice="none"),
    ):
        [choice] = (await complete(backend(), body))["choices"]
        assert "tool_calls" not in choice["message"]
        assert choice["message"]["content"] == body["messages"][-1]["content"]


async def test_required_calls_each_tool_in_turn_then_the_last_again() -> None:
    body = ask("go", tools=[SEARCH, WEATHER], tool_choice="required")
    names = []
    for i in range(3):
        [choice] = (await complete(backend(), body))["choices"]
        names.append(name := choice["message"]["tool_calls"][0]["function"]["name"])
        body["messages"] += call_turn(name, f"call_{i}")
    assert names == ["search", "get_weather", "get_weather"]


async def test_auto_tool_call_streams_as_openai_does() -> None:
    chunks, _ = await run(backend(), ask("use search", tools=[WEATHER, SEARCH]), stream=True)
    deltas = choice_deltas(chunks)
    [call] = deltas[0][0]["tool_calls"]
    assert call["function"] == {"name": "search", "arguments": ""} and call["id"].startswith("call_")
    arguments = "".join(d["tool_calls"][0]["function"]["arguments"] for d, _ in deltas[1:-1])
    jsonschema.validate(json.loads(arguments), SEARCH["function"]["parameters"])
    assert deltas[-1] == ({}, "tool_calls")


class Pet(BaseModel):
    kind: Literal["cat", "dog"]
    name: str
    age: int


class Household(BaseModel):
    city: str
    pets: list[Pet]
    owner: Pet | None
    rooms: Annotated[int, Field(ge=1)]


@pytest.mark.parametrize("stream", [False, True])
async def test_json_schema_answer_validates_and_is_deterministic(stream: bool) -> None:
    schema = Household.model_json_schema()  # $defs/$ref, enums, anyOf for Optional, nested arrays
    response_format = {"type": "json_schema", "json_schema": {"name": "household", "schema": schema, "strict": True}}
    texts = []
    for _ in range(2):
        chunks, _ = await run(backend(), ask(response_format=response_format), stream=stream)
        texts.append(content_of(chunks) if stream else chunks[0]["choices"][0]["message"]["content"])
    assert texts[0] == texts[1]
    Household.model_validate_json(texts[0])
    jsonschema.validate(json.loads(texts[0]), schema)


@pytest.mark.parametrize("stream", [False, True])
async def test_json_object_answer_is_an_object(stream: bool) -> None:
    chunks, _ = await run(backend(), ask("hi there", response_format={"type": "json_object"}), stream=stream)
    text = content_of(chunks) if stream else chunks[0]["choices"][0]["message"]["content"]
    assert json.loads(text) == {"text": "hi there"}


async def test_impossible_response_schema_is_an_invalid_request() -> None:
    schema = {"type": "array", "minItems": 10**6}
    with pytest.raises(InvalidRequestError) as info:
        await run(
            backend(), ask(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
        )
    assert info.value.param == "response_format"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_stop_string_that_cut_the_reply_is_the_stop_reason(stream: bool) -> None:
    chunks, _ = await run(backend(reply="one two. three"), ask(stop=["zz", "."]), stream=stream)
    choice = chunks[-1]["choices"][0] if stream else chunks[0]["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["stop_reason"] == "."
    chunks, _ = await run(backend(reply="one two"), ask(stop=["zz"]), stream=stream)
    assert "stop_reason" not in (chunks[-1] if stream else chunks[0])["choices"][0]


@pytest.mark.parametrize(
    ("tools", "tool_choice"),
    [([WEATHER], {"type": "function", "function": {"name": "nope"}}), ([], "required")],
)
async def test_impossible_tool_choice_is_an_invalid_request(tools: list[Any], tool_choice: Any) -> None:
    with pytest.raises(InvalidRequestError) as info:
        await run(backend(), ask(tools=tools, tool_choice=tool_choice), stream=True)
    assert info.value.status == 400
    assert info.value.param == "tool_choice"


class Address(BaseModel):
    street: Annotated[str, Field(min_length=12)]
    zip: Annotated[int, Field(gt=999, le=99999)]


class Order(BaseModel):
    kind: Literal["pickup", "delivery"]
    address: Address | None
    items: Annotated[list[Address], Field(min_length=2)]
    ratio: Annotated[float, Field(gt=0, lt=1)]
    note: str = "none"
    express: bool


@pytest.mark.parametrize(
    "schema",
    [
        Order.model_json_schema(),
        {
            "type": "integer",
            "minimum": 0,
            "exclusiveMinimum": True,
            "$schema": "http://json-schema.org/draft-04/schema#",
        },
        {"type": "number", "exclusiveMaximum": -2, "multipleOf": 0.5},
        {"type": "integer", "minimum": 2, "exclusiveMinimum": 5, "maximum": 10},
        {"type": ["null", "string"], "maxLength": 3, "format": "email"},
        {"allOf": [{"type": "object", "properties": {"a": {"const": 1}}, "required": ["a"]}, {"required": ["b"]}]},
        {"type": "array", "prefixItems": [{"type": "boolean"}, {"type": "null"}], "items": False},
        {
            "oneOf": [
                {"type": "object", "properties": {"x": {"type": "integer"}}, "additionalProperties": False},
                {"type": "string"},
            ]
        },
    ],
)
def test_example_value_validates_against_its_schema(schema: dict[str, Any]) -> None:
    value = example_value(schema)
    jsonschema.validators.validator_for(schema)(schema).validate(value)


# Failures and cancellation ---------------------------------------------------------------------


@pytest.mark.parametrize(("status", "error"), [(503, UpstreamError), (400, InvalidRequestError), (429, RateLimitError)])
@pytest.mark.parametrize("stream", [False, True])
async def test_error_failure_before_any_output(status: int, error: type[Exception], stream: bool) -> None:
    b = backend(failure={"mode": "error", "status": status})
    seen = []
    with pytest.raises(error) as info:
        await drain(b.chat(context(b, ask(), stream=stream)), seen)
    assert seen == []
    assert info.value.status == (502 if status >= 500 else status)
    assert info.value.message == f"Backend 'mock' failed: simulated upstream error (HTTP {status})"


async def test_midstream_failure_breaks_the_stream_after_n_chunks() -> None:
    b = backend(reply="a b c d e f", failure={"mode": "midstream", "after_chunks": 3})
    ctx = context(b, ask(), stream=True)
    seen = []
    with pytest.raises(UpstreamError, match="stream broke off"):
        await drain(b.chat(ctx), seen)
    assert len(seen) == 3
    assert all(c["choices"][0]["finish_reason"] is None for c in seen)
    assert ctx.usage["completion_tokens"] == 2
    with pytest.raises(UpstreamError, match=r"HTTP 500"):
        await run(b, ask())


async def test_midstream_failure_after_a_short_stream_still_breaks() -> None:
    b = backend(reply="a", failure={"mode": "midstream", "after_chunks": 10})
    seen = []
    with pytest.raises(UpstreamError, match="stream broke off"):
        await drain(b.chat(context(b, ask(), stream=True)), seen)
    assert len(seen) == 3


@pytest.mark.parametrize("stream", [False, True])
async def test_hang_failure_never_answers(stream: bool) -> None:
    b = backend(failure={"mode": "hang"})
    iterator = b.chat(context(b, ask(), stream=stream))
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(iterator.__anext__(), timeout=0.05)


async def test_cancelling_the_consumer_closes_the_stream() -> None:
    b = backend(reply="one two three four five six seven eight", chunk_delay=0.05)
    ctx = context(b, ask(), stream=True)
    stream = b.chat(ctx)
    seen: list[dict[str, Any]] = []
    three = asyncio.Event()

    async def consume() -> None:
        async for item in stream:
            seen.append(item)
            if len(seen) == 3:
                three.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(three.wait(), timeout=1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stream.ag_frame is None  # finished: the CancelledError went through it
    assert len(seen) < 10
    assert ctx.usage["completion_tokens"] == len(seen) - 1


async def test_aclose_mid_stream_closes_cleanly() -> None:
    b = backend(reply="one two three")
    ctx = context(b, ask(), stream=True)
    stream = b.chat(ctx)
    await stream.__anext__()
    await stream.__anext__()
    await stream.aclose()
    assert stream.ag_frame is None
    assert ctx.usage["completion_tokens"] == 1
    with pytest.raises(StopAsyncIteration):
        await stream.__anext__()


# Config and registration -----------------------------------------------------------------------


async def test_config_defaults_and_validation() -> None:
    config = MockBackend.Config(name="mock", type="mock")
    assert config.models == [MODEL]
    assert config.reply is None
    assert config.chunks is None
    assert config.failure is None
    assert await MockBackend(config).list_models() == [
        {"id": MODEL, "object": "model", "created": 0, "owned_by": "mock"}
    ]
    for bad in (
        {"unknown": 1},
        {"failure": {"mode": "explode"}},
        {"failure": {"mode": "error", "status": 200}},
        {"chunks": 0},
    ):
        with pytest.raises(ValidationError):
            MockBackend.Config(name="mock", type="mock", **bad)
    own = MockBackend.Config.model_fields.keys() - BackendConfig.model_fields.keys() | {"models"}
    assert own == {"models", "reply", "first_chunk_delay", "chunk_delay", "chunks", "failure", "dimensions"}
    assert all(MockBackend.Config.model_fields[name].description for name in own)


def test_plugin_registers_the_mock_backend_type() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(mock)
    registered: dict[str, type] = {}
    pm.hook.gateway_register_backends(register=registered.__setitem__)
    assert registered == {"mock": MockBackend}
    assert MockBackend.type_name == "mock"
