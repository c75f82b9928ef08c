"""The ``anthropic`` backend through the gateway, against a fake Anthropic API on 127.0.0.1: request
translation (asserted on what the upstream received), replies and streams translated back, every
class of upstream failure, model listing, config."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ConfigError
from gateway.testing import make_app
from gateway.upstream import errors as gateway_upstream
from gateway_plugins.backends import anthropic as anthropic_backend
from gateway_plugins.backends.anthropic.stream import StreamTranslator
from tests.upstreams import UsageRecorder
from tests.upstreams.anthropic import API_KEY, AnthropicUpstream, Reply, text, tool_use

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: dict[str, Any] = {"type": "function", "function": {"name": "get_time"}}
HI = [{"role": "user", "content": "Hi"}]


def config(base_url: str, **options: Any) -> dict[str, Any]:
    """The gateway config: backend ``claude`` serving ``claude-*`` as named, and ``sonnet`` as an alias."""
    return {
        "backends": [{"name": "claude", "type": "anthropic", "base_url": base_url, "api_key": API_KEY, **options}],
        "models": [
            {"name": "sonnet", "backend": "claude", "model": "claude-sonnet-test"},
            {"name": "claude-*", "backend": "claude"},
        ],
    }


@pytest.fixture
async def fake(aiohttp_server: Any) -> AnthropicUpstream:
    upstream = AnthropicUpstream()
    server = await aiohttp_server(upstream.app)
    upstream.base_url = str(server.make_url("")).rstrip("/")
    return upstream


@pytest.fixture
async def client(fake: AnthropicUpstream, gateway: Any) -> TestClient:
    return await gateway(config(fake.base_url))


async def chat(client: TestClient, **body: Any) -> tuple[int, dict[str, Any]]:
    response = await client.post("/v1/chat/completions", json={"model": "sonnet", "messages": HI, **body})
    return response.status, await response.json()


async def stream(client: TestClient, **body: Any) -> list[Any]:
    """The events of a streamed answer: chunk dicts, then "[DONE]" (or a final error dict)."""
    response = await client.post(
        "/v1/chat/completions", json={"model": "sonnet", "messages": HI, "stream": True, **body}
    )
    assert response.status == 200, await response.text()
    assert response.content_type == "text/event-stream"
    raw = (await response.read()).decode()
    assert raw.endswith("\n\n")
    events = []
    for event in raw.split("\n\n")[:-1]:
        assert event.startswith("data: "), event
        data = event.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def content(events: list[Any]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if isinstance(e, dict) and e.get("choices")
    )


# Requests ---------------------------------------------------------------------------------------


async def test_a_conversation_is_translated_to_a_messages_request(fake: AnthropicUpstream, client: TestClient) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these pictures?"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        },
        {"role": "user", "content": "And the weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": "Let me look.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                },
                {"id": "toolu_2", "type": "function", "function": {"name": "get_time", "arguments": ""}},
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny, 21 C"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
        {"role": "user", "content": "Thanks! Summarise."},
    ]
    status, _ = await chat(
        client,
        messages=messages,
        max_completion_tokens=300,
        stop="\n\nHuman:",
        temperature=0.5,
        top_p=0.9,
        top_k=40,
        user="user-42",
        tools=[WEATHER, TIME],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=7,
        presence_penalty=0.5,
        logit_bias={"50256": -100},
        store=True,
    )
    assert status == 200
    assert fake.last.body == {
        "model": "claude-sonnet-test",
        "max_tokens": 300,
        "system": "Be brief.\n\nAnswer in French.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in these pictures?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
                    {"type": "text", "text": "And the weather in Paris and the time?"},
                ],
            },
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny, 21 C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "14:05"}]},
                    {"type": "text", "text": "Thanks! Summarise."},
                ],
            },
        ],
        "stop_sequences": ["\n\nHuman:"],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "tools": [
            {
                "name": "get_weather",
                "input_schema": WEATHER["function"]["parameters"],
                "description": "The weather in a city.",
            },
            {"name": "get_time", "input_schema": {"type": "object"}},
        ],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "metadata": {"user_id": "user-42"},
    }


async def test_headers_carry_the_key_version_and_betas_and_never_the_clients_key(
    fake: AnthropicUpstream, gateway: Any
) -> None:
    client = await gateway(config(fake.base_url, beta=["a-2025-01-01", "b-2025-02-02"], headers={"X-Team": "qa"}))
    response = await client.post(
        "/v1/chat/completions",
        json={"model": "sonnet", "messages": HI},
        headers={"Authorization": "Bearer client-secret"},
    )
    assert response.status == 200
    headers = fake.last.headers
    assert headers["x-api-key"] == API_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "a-2025-01-01,b-2025-02-02"
    assert headers["X-Team"] == "qa"
    assert "Authorization" not in headers
    assert fake.last.path == "/v1/messages"


async def test_max_tokens_defaults_and_maps_from_either_openai_name(fake: AnthropicUpstream, gateway: Any) -> None:
    client = await gateway(config(fake.base_url, max_tokens=123))
    await chat(client)
    await chat(client, max_tokens=50, stop=["END", "STOP"])
    await chat(client, max_tokens=50, max_completion_tokens=60)
    sent = [r.body for r in fake.message_requests]
    assert [b["max_tokens"] for b in sent] == [123, 50, 60]
    assert sent[1]["stop_sequences"] == ["END", "STOP"]
    assert "stop_sequences" not in sent[0] and "system" not in sent[0] and "tools" not in sent[0]


async def test_api_versions_without_sampling_parameters_do_not_get_them(fake: AnthropicUpstream, gateway: Any) -> None:
    client = await gateway(config(fake.base_url, version="2026-10-21"))
    status, _ = await chat(client, temperature=0.2, top_p=0.5, top_k=3)
    assert status == 200
    assert fake.last.headers["anthropic-version"] == "2026-10-21"
    assert not {"temperature", "top_p", "top_k"} & set(fake.last.body)


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("none", False, {"type": "none"}),
        ("required", None, {"type": "any"}),
        ({"type": "function", "function": {"name": "get_time"}}, None, {"type": "tool", "name": "get_time"}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
async def test_tool_choice(
    fake: AnthropicUpstream, client: TestClient, tool_choice: Any, parallel: Any, expected: Any
) -> None:
    extra = {k: v for k, v in {"tool_choice": tool_choice, "parallel_tool_calls": parallel}.items() if v is not None}
    status, _ = await chat(client, tools=[WEATHER, TIME], **extra)
    assert status == 200
    assert fake.last.body.get("tool_choice") == expected


async def test_consecutive_turns_merge_and_tool_results_come_first(fake: AnthropicUpstream, client: TestClient) -> None:
    messages = [
        {"role": "user", "content": "one"},
        {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": "", "tool_calls": [_call("toolu_9", "get_time", "{}")]},
        {"role": "user", "content": "by the way"},
        {"role": "tool", "tool_call_id": "toolu_9", "content": "noon"},
        {"role": "assistant", "content": [{"type": "text", "text": "It is"}]},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "noon."}]},
    ]
    status, body = await chat(client, messages=messages)
    assert status == 200, body
    assert fake.last.body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_9", "name": "get_time", "input": {}}]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": "noon"},
                {"type": "text", "text": "by the way"},
            ],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "It is"}, {"type": "text", "text": "noon."}]},
    ]


def _call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]},
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,xyz"}}]}
                ]
            },
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [_call("t", "f", "{not json")]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [_call("t", "f", "[1]")]}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
        ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ],
)
async def test_what_anthropic_cannot_answer_is_a_clear_400(
    fake: AnthropicUpstream, client: TestClient, extra: dict[str, Any], param: str
) -> None:
    status, body = await chat(client, **extra)
    assert status == 400, body
    assert body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    assert fake.message_requests == []  # refused before any call


# Replies ----------------------------------------------------------------------------------------


async def test_a_reply_is_translated_to_a_chat_completion(fake: AnthropicUpstream, client: TestClient) -> None:
    fake.reply(
        Reply(
            blocks=[
                text("Checking "),
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                text("both."),
                tool_use("toolu_A", "get_weather", {"city": "Paris"}),
                tool_use("toolu_B", "get_time", {}),
            ],
            stop_reason="tool_use",
            usage={
                "input_tokens": 20,
                "output_tokens": 9,
                "cache_read_input_tokens": 100,
                "cache_creation_input_tokens": 5,
            },
        )
    )
    status, body = await chat(client, tools=[WEATHER, TIME])
    assert status == 200
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == "sonnet"  # the name the client asked for
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking both."
    assert choice["message"]["tool_calls"] == [
        {"id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}},
        {"id": "toolu_B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert body["usage"] == {
        "prompt_tokens": 125,
        "completion_tokens": 9,
        "total_tokens": 134,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


async def test_a_reply_of_only_tool_calls_has_null_content(fake: AnthropicUpstream, client: TestClient) -> None:
    fake.reply(Reply(blocks=[tool_use("toolu_A", "get_time", {})], stop_reason="tool_use"))
    _, body = await chat(client, tools=[TIME])
    assert body["choices"][0]["message"]["content"] is None
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
async def test_stop_reasons_become_finish_reasons(
    fake: AnthropicUpstream, client: TestClient, stop_reason: str, finish_reason: str
) -> None:
    fake.reply(Reply(stop_reason=stop_reason), Reply(stop_reason=stop_reason))
    _, body = await chat(client)
    assert body["choices"][0]["finish_reason"] == finish_reason
    events = await stream(client)
    assert [e["choices"][0]["finish_reason"] for e in events[:-1] if e["choices"]][-1] == finish_reason


async def test_upstream_request_ids_and_rate_limits_reach_the_client(
    fake: AnthropicUpstream, client: TestClient
) -> None:
    fake.reply(Reply(headers={"anthropic-ratelimit-requests-remaining": "49", "x-unrelated": "no"}))
    response = await client.post("/v1/chat/completions", json={"model": "sonnet", "messages": HI})
    assert response.headers["anthropic-ratelimit-requests-remaining"] == "49"
    assert response.headers["request-id"].startswith("req_")
    assert "x-unrelated" not in response.headers


# Streams ----------------------------------------------------------------------------------------


async def test_a_text_stream_becomes_chunks(fake: AnthropicUpstream, client: TestClient) -> None:
    fake.reply(Reply(blocks=[text("Hello there, how are you?")], usage={"input_tokens": 8, "output_tokens": 7}))
    events = await stream(client, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "sonnet" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    assert content(chunks) == "Hello there, how are you?"
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 5  # one per word
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "stop" and set(finish[:-1]) == {None}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 8, "completion_tokens": 7, "total_tokens": 15}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert fake.last.body["stream"] is True


async def test_a_stream_without_include_usage_has_no_usage_chunk(fake: AnthropicUpstream, client: TestClient) -> None:
    events = await stream(client)
    assert all("usage" not in e for e in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


async def test_tool_calls_interleaved_with_text_stream_with_openai_indices(
    fake: AnthropicUpstream, client: TestClient
) -> None:
    fake.reply(
        Reply(
            blocks=[
                text("First the weather."),
                tool_use("toolu_A", "get_weather", {"city": "Paris", "unit": "celsius"}),
                text("Then the time."),
                tool_use("toolu_B", "get_time", {"zone": "Europe/Paris"}),
            ],
            stop_reason="tool_use",
        )
    )
    events = await stream(client, tools=[WEATHER, TIME])
    deltas = [e["choices"][0]["delta"] for e in events[:-1] if e["choices"]]
    assert content(events) == "First the weather.Then the time."
    calls: dict[int, dict[str, Any]] = {}
    for delta in deltas:
        for call in delta.get("tool_calls") or ():
            index = call["index"]
            if index not in calls:  # the first delta of a call: id, type and name
                assert set(call) == {"index", "id", "type", "function"}
                calls[index] = {"id": call["id"], "name": call["function"]["name"], "arguments": ""}
            else:  # then only argument fragments
                assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
            calls[index]["arguments"] += call["function"]["arguments"]
    assert sorted(calls) == [0, 1]  # tool calls counted, not content blocks (3 and 1)
    assert calls[0]["id"] == "toolu_A" and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris", "unit": "celsius"}
    assert calls[1]["id"] == "toolu_B" and json.loads(calls[1]["arguments"]) == {"zone": "Europe/Paris"}
    assert sum(len(d.get("tool_calls") or ()) for d in deltas) > 4  # arguments arrive in fragments
    assert events[-2]["choices"][0]["finish_reason"] == "tool_calls"


async def test_an_upstream_that_answers_a_stream_in_one_piece_is_streamed(
    fake: AnthropicUpstream, client: TestClient
) -> None:
    fake.reply(Reply(blocks=[text("all at once")], json_for_stream=True))
    events = await stream(client, stream_options={"include_usage": True})
    assert content(events) == "all at once"
    assert events[-2]["usage"]["total_tokens"] == 17 and events[-1] == "[DONE]"


# Failures ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "client_status", "error_type", "code"),
    [
        (400, 400, "invalid_request_error", None),
        (401, 502, "upstream_error", "upstream_auth_error"),  # the gateway's own key: not the client's fault
        (403, 502, "upstream_error", "upstream_auth_error"),
        (404, 404, "not_found_error", None),
        (413, 413, "request_too_large", None),
        (429, 429, "requests", "rate_limit_exceeded"),
        (500, 502, "upstream_error", "bad_gateway"),
        (529, 503, "upstream_error", "upstream_overloaded"),
    ],
)
async def test_upstream_errors_map_to_openai_errors(
    fake: AnthropicUpstream, client: TestClient, status: int, client_status: int, error_type: str, code: str | None
) -> None:
    for streaming in (False, True):
        fake.reply(Reply(status=status, error_message=f"upstream says {status}", headers={"retry-after": "7"}))
        response = await client.post(
            "/v1/chat/completions", json={"model": "sonnet", "messages": HI, "stream": streaming}
        )
        assert response.status == client_status
        error = (await response.json())["error"]
        assert error["type"] == error_type
        assert error["code"] == code
        assert f"upstream says {status}" in error["message"]
        if client_status >= 500:
            assert "'claude'" in error["message"]  # names the backend
        if status in (429, 529):
            assert response.headers["Retry-After"] == "7"


async def test_an_error_that_echoes_the_key_is_scrubbed(fake: AnthropicUpstream, client: TestClient) -> None:
    fake.reply(Reply(status=401, error_message=f"invalid x-api-key {API_KEY}"), Reply(status=500, raw_error=API_KEY))
    for _ in range(2):
        response = await client.post("/v1/chat/completions", json={"model": "sonnet", "messages": HI})
        text_ = await response.text()
        assert API_KEY not in text_ and "***" in text_


async def test_an_error_event_mid_stream_ends_the_stream_with_that_error(
    fake: AnthropicUpstream, client: TestClient
) -> None:
    fake.reply(Reply(blocks=[text("one two three four")], error_event_after=5, error_message="Overloaded"))
    events = await stream(client)
    assert content(events) == "one two "
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "upstream_overloaded"
    assert "Overloaded" in events[-1]["error"]["message"]


async def test_a_stream_that_ends_after_message_delta_without_message_stop_is_complete(
    fake: AnthropicUpstream, client: TestClient
) -> None:
    fake.reply(Reply(blocks=[text("one two")], message_stop=False))
    events = await stream(client, stream_options={"include_usage": True})
    assert events[-1] == "[DONE]" and not any("error" in e for e in events if isinstance(e, dict))
    assert events[-3]["choices"][0]["finish_reason"] == "stop"
    assert events[-2]["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


@pytest.mark.parametrize(
    "reply",
    [Reply(blocks=[text("one two three four")], die_after=5), Reply(blocks=[text("one two three")], end_after=4)],
    ids=["connection-dropped", "clean-end-before-message_delta"],
)
async def test_a_stream_cut_short_ends_with_an_error_event(
    fake: AnthropicUpstream, client: TestClient, reply: Reply
) -> None:
    fake.reply(reply)
    events = await stream(client)
    assert "[DONE]" not in events
    assert events[-1]["error"]["code"] == "bad_gateway"
    assert "'claude'" in events[-1]["error"]["message"]


async def test_a_silent_upstream_times_out(fake: AnthropicUpstream, gateway: Any) -> None:
    client = await gateway(config(fake.base_url, timeout=0.3))
    fake.reply(Reply(hang=True))
    status, body = await chat(client)
    assert status == 504 and body["error"]["code"] == "upstream_timeout"
    fake.reply(Reply(blocks=[text("one two three")], hang_after=4))
    events = await stream(client)
    assert content(events) == "one "
    assert events[-1]["error"]["code"] == "upstream_timeout"


async def test_a_refused_connection_is_a_502(unused_tcp_port: int, gateway: Any) -> None:
    client = await gateway(config(f"http://127.0.0.1:{unused_tcp_port}"))
    status, body = await chat(client)
    assert status == 502
    assert body["error"]["code"] == "bad_gateway" and "unreachable" in body["error"]["message"]


# Models -----------------------------------------------------------------------------------------


async def test_models_are_listed_from_every_page_and_cached(
    fake: AnthropicUpstream, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(anthropic_backend, "MODEL_PAGE_SIZE", 2)
    for _ in range(2):
        response = await client.get("/v1/models")
        listing = await response.json()
        ids = [m["id"] for m in listing["data"]]
        assert ids == ["sonnet", "claude-sonnet-test", "claude-haiku-test", "claude-opus-test"]
    assert [m["owned_by"] for m in listing["data"]] == ["anthropic"] * 4
    assert listing["data"][1]["created"] == 1759104000  # 2025-09-29T00:00:00Z
    pages = [r for r in fake.requests if r.path == "/v1/models"]
    assert [r.query.get("after_id") for r in pages] == [None, "claude-haiku-test"]  # two pages, once (cached)
    assert pages[0].headers["x-api-key"] == API_KEY


async def test_a_failing_listing_serves_the_cached_list_and_spares_other_backends(
    fake: AnthropicUpstream, gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway_upstream, "MODELS_RETRY", 0.0)  # a failure is not remembered
    cfg = config(fake.base_url, models_ttl=0)
    cfg["backends"].append({"name": "mock", "type": "mock", "models": ["mock-gpt-model"]})
    cfg["models"].append({"name": "mock-gpt-model", "backend": "mock"})
    client = await gateway(cfg)
    fake.models_status = 500
    ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert ids == ["sonnet", "mock-gpt-model"]  # the failing listing is skipped
    fake.models_status = 200
    assert len((await (await client.get("/v1/models")).json())["data"]) == 5
    fake.models_status = 500
    assert len((await (await client.get("/v1/models")).json())["data"]) == 5  # stale, not empty


async def test_configured_models_need_no_listing(fake: AnthropicUpstream, gateway: Any) -> None:
    cfg = config(fake.base_url, models=["claude-sonnet-test"])
    client = await gateway(cfg)
    ids = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert ids == ["sonnet", "claude-sonnet-test"]
    assert fake.requests == []


# Config -----------------------------------------------------------------------------------------


async def test_info_masks_the_key(client: TestClient) -> None:
    info = await (await client.get("/info")).json()
    backend = info["backends"][0]
    assert backend["type"] == "anthropic"
    assert backend["api_key"] in ("**********", "[REDACTED]")
    assert API_KEY not in json.dumps(info)


@pytest.mark.parametrize(
    ("options", "path", "problem"),
    [
        ({"api_key": None}, "backends[0].api_key", "Field required"),
        ({"base_url": "api.anthropic.com"}, "backends[0].base_url", "must start with http"),
        ({"version": "latest"}, "backends[0].version", "should match pattern"),
        ({"max_tokens": 0}, "backends[0].max_tokens", "greater than or equal to 1"),
        ({"temperature": 1}, "backends[0].temperature", "unknown key"),
    ],
)
def test_bad_config_names_the_key(options: dict[str, Any], path: str, problem: str) -> None:
    cfg = config("https://api.anthropic.com")
    cfg["backends"][0].update(options)
    if options.get("api_key", "") is None:
        del cfg["backends"][0]["api_key"]
    with pytest.raises(ConfigError) as raised:
        make_app(cfg)
    assert path in str(raised.value) and problem in str(raised.value)


def test_base_url_may_end_with_v1() -> None:
    backend = anthropic_backend.AnthropicBackend(
        anthropic_backend.AnthropicConfig(name="c", type="anthropic", base_url="https://x.test/v1/", api_key="k")
    )
    assert backend.config.base_url == "https://x.test"


# The stream translator, driven directly ---------------------------------------------------------


def test_the_translator_ignores_thinking_and_unknown_events_and_takes_the_last_usage() -> None:
    translator = StreamTranslator("m", include_usage=True)
    events: list[dict[str, Any]] = [
        {"type": "message_start", "message": {"usage": {"input_tokens": 0, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hmm"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "x"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "a_future_event", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": "Hi"}},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "max_tokens"},
            "usage": {"input_tokens": 9, "output_tokens": 3, "cache_read_input_tokens": None},
        },
        {"type": "message_stop"},
    ]
    chunks = [c for event in events for c in translator.feed(event)]
    assert [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]] == [
        ({"role": "assistant", "content": "", "refusal": None}, None),
        ({"content": "Hi"}, None),
        ({}, "length"),
    ]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
    }
    assert translator.complete


def test_the_translator_sends_a_tool_input_given_whole_in_the_first_delta() -> None:
    translator = StreamTranslator("m", include_usage=False)
    block = {"type": "tool_use", "id": "toolu_X", "name": "f", "input": {"a": 1}}
    chunks = translator.feed({"type": "content_block_start", "index": 2, "content_block": block})
    chunks += translator.feed({"type": "message_stop"})  # no message_delta: still one finish reason
    assert chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [
            {"index": 0, "id": "toolu_X", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
        ],
        "refusal": None,
    }
    assert chunks[1]["choices"][0]["finish_reason"] == "stop" and "usage" not in chunks[1]


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_the_upstream_does_not_report_is_estimated_and_said_to_be(
    fake: AnthropicUpstream, gateway: Any, stream: bool
) -> None:
    recorder = UsageRecorder()
    client = await gateway(config(fake.base_url), [recorder])
    fake.reply(Reply(blocks=[text("one two three four five six seven")], report_usage=False), Reply())
    body = {"model": "sonnet", "messages": HI, "stream": stream, "stream_options": {"include_usage": True}}
    if not stream:
        del body["stream_options"]
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=body)
        raw = await resp.read()
    (estimate, estimated), (reported, said) = recorder.seen
    assert estimated and estimate["completion_tokens"] == 9 and estimate["prompt_tokens"] > 0
    assert not said and reported["prompt_tokens"] == 12
    if stream:
        assert b'"completion_tokens":5' in raw
