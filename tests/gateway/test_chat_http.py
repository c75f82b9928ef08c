"""The chat completions API and the core routes over raw HTTP: exact bodies, SSE framing, headers,
error objects, request ids, and the per-request hooks as a client sees them."""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from pydantic import Field, SecretStr

from gateway import Backend, BackendConfig, RequestContext, __version__, hookimpl, middleware
from gateway.testing import mock_config

MODEL = "mock-gpt-model"
CHAT = "/v1/chat/completions"
ERROR_KEYS = {"message", "type", "param", "code"}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "days"],
        },
    },
}


def chat_body(text: str = "Hello there, gateway", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}


def sse_payloads(body: bytes) -> list[bytes]:
    """The data payloads of a raw SSE body, asserting every event is exactly ``data: ...\\n\\n``."""
    assert body.endswith(b"\n\n"), body[-80:]
    events = body[:-2].split(b"\n\n")
    for event in events:
        assert event.startswith(b"data: "), event
        assert b"\n" not in event, event
    return [event[len(b"data: ") :] for event in events]


def stream_chunks(body: bytes) -> list[dict[str, Any]]:
    """The chunk dicts of a complete stream, asserting it ends with exactly one ``data: [DONE]``."""
    assert body.endswith(b"data: [DONE]\n\n"), body[-120:]
    payloads = sse_payloads(body)
    assert payloads[-1] == b"[DONE]"
    assert payloads.count(b"[DONE]") == 1
    return [orjson.loads(p) for p in payloads[:-1]]


def content_of(chunks: list[dict[str, Any]], index: int = 0) -> str:
    return "".join(c["delta"].get("content") or "" for ch in chunks for c in ch["choices"] if c["index"] == index)


def finish_reasons(chunks: list[dict[str, Any]]) -> list[tuple[int, str]]:
    return [(c["index"], c["finish_reason"]) for ch in chunks for c in ch["choices"] if c["finish_reason"] is not None]


async def assert_error(resp: Any, status: int, *, code: Any = ..., param: Any = ..., type: Any = ...) -> dict[str, Any]:
    """The response is an OpenAI error object with ``status``; returns its ``error``."""
    raw = await resp.read()
    assert resp.status == status, raw
    assert resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"]
    if code is not ...:
        assert error["code"] == code, error
    if param is not ...:
        assert error["param"] == param, error
    if type is not ...:
        assert error["type"] == type, error
    return error


async def post_stream(client: TestClient, body: dict[str, Any], **kwargs: Any) -> tuple[Any, bytes]:
    resp = await client.post(CHAT, json={**body, "stream": True}, **kwargs)
    raw = await resp.read()
    return resp, raw


# Non-streaming -----------------------------------------------------------------------------------


async def test_non_stream_completion_has_every_openai_field(gateway: Any) -> None:
    client = await gateway()
    before = int(time.time())
    resp = await client.post(
        CHAT,
        json={
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "first question"},
                {"role": "assistant", "content": "an answer"},
                {"role": "user", "content": "echo me back please"},
            ],
        },
    )
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["id"].startswith("chatcmpl-") and len(body["id"]) > len("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert type(body["created"]) is int and before - 1 <= body["created"] <= time.time() + 1
    assert body["model"] == MODEL
    assert "system_fingerprint" not in body  # no fingerprint: left out (the spec types it as a string, not nullable)
    assert len(body["choices"]) == 1
    choice = body["choices"][0]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "echo me back please", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }
    usage = body["usage"]
    assert set(usage) >= {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(type(usage[k]) is int for k in ("prompt_tokens", "completion_tokens", "total_tokens"))
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_non_stream_n2_max_tokens_and_stop(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, json=chat_body("one two three", n=2))
    body = await resp.json()
    assert resp.status == 200
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert [c["message"]["content"] for c in body["choices"]] == ["one two three"] * 2
    assert [c["finish_reason"] for c in body["choices"]] == ["stop", "stop"]

    resp = await client.post(CHAT, json=chat_body("one two three four", max_tokens=2))
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "one two "
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2

    resp = await client.post(CHAT, json=chat_body("keep this STOP not this", stop=["STOP"]))
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "keep this "
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_non_stream_forced_tool_call(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(
        CHAT,
        json=chat_body(
            "weather?", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}
        ),
    )
    body = await resp.json()
    assert resp.status == 200
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"  # OpenAI's: "tool_calls" only for tool_choice "required"
    (call,) = choice["message"]["tool_calls"]
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    arguments = orjson.loads(call["function"]["arguments"])
    assert set(arguments) == {"city", "days"}


# Streaming ---------------------------------------------------------------------------------------


async def test_stream_headers_framing_and_content(gateway: Any) -> None:
    client = await gateway()
    resp, raw = await post_stream(client, chat_body("alpha beta gamma delta"))
    assert resp.status == 200
    content_type = resp.headers["Content-Type"]
    assert content_type.split(";")[0].strip() == "text/event-stream"
    assert content_type in ("text/event-stream", "text/event-stream; charset=utf-8")
    assert resp.headers["Cache-Control"] == "no-cache"
    assert resp.headers["X-Accel-Buffering"] == "no"
    assert "Content-Length" not in resp.headers

    chunks = stream_chunks(raw)
    assert len(chunks) >= 3
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")
    for c in chunks:
        assert c["object"] == "chat.completion.chunk"
        assert c["model"] == MODEL
        assert type(c["created"]) is int
        assert "usage" not in c  # no include_usage: the key is absent
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "alpha beta gamma delta"
    assert finish_reasons(chunks) == [(0, "stop")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_stream_include_usage(gateway: Any) -> None:
    client = await gateway()
    resp, raw = await post_stream(client, chat_body("one two three", stream_options={"include_usage": True}))
    assert resp.status == 200
    chunks = stream_chunks(raw)
    last = chunks[-1]
    assert last["choices"] == []
    usage = last["usage"]
    assert usage["completion_tokens"] == 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    for c in chunks[:-1]:
        assert "usage" in c and c["usage"] is None
        assert c["choices"]
    assert content_of(chunks) == "one two three"


async def test_stream_events_arrive_whole(gateway: Any) -> None:
    """Each network read holds only whole events (naive clients split reads on newlines)."""
    client = await gateway(mock_config(chunk_delay=0.02))
    resp = await client.post(CHAT, json=chat_body("a b c d e f", stream=True))
    assert resp.status == 200
    reads = []
    async for data in resp.content.iter_any():
        reads.append(data)
    assert len(reads) >= 4  # the delay really spread the events over several reads
    for data in reads:
        sse_payloads(data)  # every read starts with `data: ` and ends with a complete event
    assert content_of(stream_chunks(b"".join(reads))) == "a b c d e f"


async def test_stream_n2(gateway: Any) -> None:
    client = await gateway()
    _, raw = await post_stream(client, chat_body("red green blue", n=2))
    chunks = stream_chunks(raw)
    for index in (0, 1):
        mine = [c for ch in chunks for c in ch["choices"] if c["index"] == index]
        assert mine[0]["delta"]["role"] == "assistant"
        assert content_of(chunks, index) == "red green blue"
        assert [c["finish_reason"] for c in mine if c["finish_reason"]] == ["stop"]
    assert sorted(finish_reasons(chunks)) == [(0, "stop"), (1, "stop")]


async def test_stream_max_tokens_and_stop(gateway: Any) -> None:
    client = await gateway()
    _, raw = await post_stream(client, chat_body("one two three four", max_tokens=1))
    chunks = stream_chunks(raw)
    assert content_of(chunks) == "one "
    assert finish_reasons(chunks) == [(0, "length")]

    _, raw = await post_stream(client, chat_body("keep this STOP not this", stop="STOP"))
    chunks = stream_chunks(raw)
    assert content_of(chunks) == "keep this "
    assert finish_reasons(chunks) == [(0, "stop")]


async def test_stream_forced_tool_call_deltas(gateway: Any) -> None:
    client = await gateway()
    _, raw = await post_stream(
        client,
        chat_body("weather?", tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
    )
    chunks = stream_chunks(raw)
    deltas = [c["delta"]["tool_calls"] for ch in chunks for c in ch["choices"] if c["delta"].get("tool_calls")]
    assert len(deltas) >= 2
    assert all(len(d) == 1 and d[0]["index"] == 0 for d in deltas)
    first, rest = deltas[0][0], [d[0] for d in deltas[1:]]
    assert first["id"].startswith("call_")
    assert first["type"] == "function"
    assert first["function"]["name"] == "get_weather"
    for d in rest:
        assert "id" not in d and "type" not in d and "name" not in d["function"]
    arguments = "".join(d[0]["function"].get("arguments") or "" for d in deltas)
    assert set(orjson.loads(arguments)) == {"city", "days"}
    assert finish_reasons(chunks) == [(0, "stop")]  # a named function: "stop", as OpenAI sends


# Model resolution --------------------------------------------------------------------------------


async def test_default_model_resolves_to_default_model(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, json={**chat_body("hi there"), "model": "default"})
    body = await resp.json()
    assert resp.status == 200
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == "hi there"


async def test_missing_model_is_400(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}]})
    await assert_error(resp, 400, param="model", type="invalid_request_error")


async def test_missing_model_served_by_default_when_not_required(gateway: Any) -> None:
    client = await gateway({**mock_config(), "require_model": False})
    resp = await client.post(CHAT, json={"messages": [{"role": "user", "content": "no model given"}]})
    body = await resp.json()
    assert resp.status == 200
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"] == "no model given"


# Error paths -------------------------------------------------------------------------------------


async def test_invalid_json_and_non_object_bodies(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, data=b'{"model": "x", ', headers={"Content-Type": "application/json"})
    error = await assert_error(resp, 400, type="invalid_request_error")
    assert "JSON" in error["message"]

    resp = await client.post(CHAT, data=b"[1, 2]", headers={"Content-Type": "application/json"})
    await assert_error(resp, 400, type="invalid_request_error")


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": MODEL}, "messages", "missing_required_parameter"),
        ({"model": MODEL, "messages": []}, "messages", "empty_array"),
        ({"model": MODEL, "messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role", ...),
        ({**chat_body(), "temperature": 3}, "temperature", ...),
        ({**chat_body(), "n": 0}, "n", ...),
    ],
)
async def test_validation_errors_name_the_param(gateway: Any, body: dict[str, Any], param: str, code: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, json=body)
    await assert_error(resp, 400, param=param, code=code, type="invalid_request_error")


async def test_unknown_model_is_404(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post(CHAT, json={**chat_body(), "model": "no-such-model"})
    error = await assert_error(resp, 404, code="model_not_found", param=None)
    assert "no-such-model" in error["message"]


async def test_wrong_method_and_unknown_path(gateway: Any) -> None:
    client = await gateway()
    resp = await client.get(CHAT)
    await assert_error(resp, 405)
    assert "POST" in resp.headers["Allow"]
    assert "X-Request-ID" in resp.headers

    resp = await client.post("/v1/no/such/path", json={})
    await assert_error(resp, 404)


async def test_body_over_max_body_size_is_413(gateway: Any) -> None:
    client = await gateway({**mock_config(), "server": {"max_body_size": 1024}})
    resp = await client.post(CHAT, json=chat_body("x" * 4000))
    error = await assert_error(resp, 413, code="request_too_large", type="invalid_request_error")
    assert "1024" in error["message"]
    # a body under the limit still works
    resp = await client.post(CHAT, json=chat_body("small"))
    assert resp.status == 200


async def test_upstream_5xx_is_502_naming_the_backend(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "error", "status": 503}))
    for stream in (False, True):
        resp = await client.post(CHAT, json=chat_body(stream=stream))
        error = await assert_error(resp, 502)
        assert "'mock'" in error["message"]


async def test_upstream_4xx_is_passed_on(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "error", "status": 400}))
    resp = await client.post(CHAT, json=chat_body())
    await assert_error(resp, 400, type="invalid_request_error")


@pytest.mark.parametrize("stream", [False, True])
async def test_hanging_backend_times_out_with_504(gateway: Any, stream: bool) -> None:
    client = await gateway(mock_config(failure={"mode": "hang"}, timeout=0.3))
    started = time.monotonic()
    resp = await client.post(CHAT, json=chat_body(stream=stream))
    await assert_error(resp, 504, code="upstream_timeout")
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2


async def test_midstream_failure_ends_with_error_event_and_no_done(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}))
    resp, raw = await asyncio.wait_for(post_stream(client, chat_body("one two three four")), 5)
    assert resp.status == 200
    assert b"[DONE]" not in raw
    payloads = sse_payloads(raw)
    chunks = [orjson.loads(p) for p in payloads]
    assert len(chunks) >= 3
    assert all(c["object"] == "chat.completion.chunk" for c in chunks[:-1])
    assert len(chunks[:-1]) >= 2
    error = chunks[-1]
    assert set(error) == {"error"} and set(error["error"]) == ERROR_KEYS
    assert "'mock'" in error["error"]["message"]
    assert error["error"]["code"] == "bad_gateway"


async def test_midstream_hang_ends_with_timeout_event(gateway: Any) -> None:
    client = await gateway(mock_config(chunk_delay=5, timeout=0.3))
    started = time.monotonic()
    resp, raw = await asyncio.wait_for(post_stream(client, chat_body("one two three")), 5)
    assert time.monotonic() - started < 2
    assert resp.status == 200
    assert b"[DONE]" not in raw
    chunks = [orjson.loads(p) for p in sse_payloads(raw)]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    error = chunks[-1]
    assert set(error) == {"error"} and set(error["error"]) == ERROR_KEYS
    assert error["error"]["code"] == "upstream_timeout"


class Boom:
    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        raise RuntimeError("boom secret")


async def test_unexpected_plugin_exception_is_500_with_request_id(gateway: Any) -> None:
    client = await gateway(plugins=[Boom()])
    resp = await client.post(CHAT, json=chat_body(), headers={"X-Request-ID": "client-req-77"})
    error = await assert_error(resp, 500, type="server_error")
    assert resp.headers["X-Request-ID"] == "client-req-77"  # the client's id echoed
    own = resp.headers["X-Gateway-Request-ID"]  # the message names the gateway's own id (the log's)
    assert own != "client-req-77" and own in error["message"] and "client-req-77" not in error["message"]
    assert "boom" not in error["message"].lower()
    assert "Traceback" not in error["message"] and "RuntimeError" not in error["message"]

    resp = await client.post(CHAT, json=chat_body(stream=True))
    raw = await resp.read()
    error = await assert_error(resp, 500)
    generated = resp.headers["X-Gateway-Request-ID"]
    assert generated and generated in error["message"] and resp.headers["X-Request-ID"] == generated
    assert b"boom" not in raw


# Request ids -------------------------------------------------------------------------------------


async def test_request_id_echoed_or_generated(gateway: Any) -> None:
    client = await gateway()
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("post", CHAT, {"json": chat_body()}),  # success
        ("post", CHAT, {"json": chat_body(stream=True)}),  # stream
        ("post", CHAT, {"json": {**chat_body(), "model": "nope"}}),  # error
        ("get", "/health", {}),
    ]
    generated = []
    for method, path, kwargs in requests:
        resp = await getattr(client, method)(path, headers={"X-Request-ID": "client-id-42"}, **kwargs)
        await resp.read()
        assert resp.headers["X-Request-ID"] == "client-id-42", (path, kwargs)
        resp = await getattr(client, method)(path, **kwargs)
        await resp.read()
        rid = resp.headers.get("X-Request-ID", "")
        assert rid.strip() and rid != "client-id-42"
        generated.append(rid)
    assert len(set(generated)) == len(generated)


async def test_the_gateway_always_chooses_its_own_request_id(gateway: Any) -> None:
    """Two requests with the same client id are two requests: each gets its own X-Gateway-Request-ID
    (the log's ``request_id``); the client's id is echoed as X-Request-ID (``client_request_id``)."""
    client = await gateway()
    ids = []
    for stream in (False, True):
        resp = await client.post(CHAT, json=chat_body(stream=stream), headers={"X-Request-ID": "same"})
        await resp.read()
        assert resp.headers["X-Request-ID"] == "same"
        ids.append(resp.headers["X-Gateway-Request-ID"])
    assert "same" not in ids and len(set(ids)) == 2
    resp = await client.get("/health", headers={"X-Request-ID": "x" * 201})  # too long: not echoed
    assert resp.headers["X-Request-ID"] == resp.headers["X-Gateway-Request-ID"] != "x" * 201


async def test_request_ids_do_not_repeat_after_a_plugin_seeds_random(gateway: Any) -> None:
    """Ids come from the gateway's own generator, not the ``random`` module's, which a plugin may seed."""
    client = await gateway()
    ids = []
    for _ in range(2):
        random.seed(0)
        resp = await client.get("/health")
        ids.append(resp.headers["X-Gateway-Request-ID"])
    assert ids[0] != ids[1] and all(len(rid) == 32 and int(rid, 16) >= 0 for rid in ids)


def test_request_ids_do_not_repeat_in_a_forked_worker() -> None:
    """A forked child (a worker) reseeds the generator: its next id is not the parent's."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, middleware._ids.getrandbits(128).to_bytes(16))
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 16)
    os.close(read)
    assert len(child) == 16 and child != middleware._ids.getrandbits(128).to_bytes(16)


# Plugins answering, filtering and post-processing -------------------------------------------------

CANNED = {
    "id": "chatcmpl-canned",
    "object": "chat.completion",
    "created": 1700000000,
    "model": MODEL,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "from the cache", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
}


class Answerer:
    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        ctx.response = orjson.loads(orjson.dumps(CANNED))


async def test_plugin_answers_without_backend(gateway: Any) -> None:
    # the backend would fail: a 200 proves it was not called
    client = await gateway(mock_config(failure={"mode": "error", "status": 503}), plugins=[Answerer()])
    resp = await client.post(CHAT, json=chat_body())
    assert resp.status == 200
    assert await resp.json() == CANNED

    resp, raw = await post_stream(client, chat_body())
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    chunks = stream_chunks(raw)
    assert all(c["id"] == "chatcmpl-canned" and c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert content_of(chunks) == "from the cache"
    assert finish_reasons(chunks) == [(0, "stop")]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    resp, raw = await post_stream(client, chat_body(stream_options={"include_usage": True}))
    chunks = stream_chunks(raw)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == CANNED["usage"]
    assert content_of(chunks) == "from the cache"


class FilterPlugin:
    def __init__(self, make: Callable[[], Callable[[Any], Any]]) -> None:
        self.make = make

    @hookimpl
    def gateway_stream_filter(self, ctx: RequestContext) -> Callable[[Any], Any]:
        return self.make()


def upper() -> Callable[[Any], Any]:
    def f(chunk: dict[str, Any] | None) -> Any:
        if chunk is None:
            return None
        for choice in chunk["choices"]:
            if choice["delta"].get("content"):
                choice["delta"]["content"] = choice["delta"]["content"].upper()
        return chunk

    return f


def drop_beta() -> Callable[[Any], Any]:
    def f(chunk: dict[str, Any] | None) -> Any:
        if chunk is not None and any(c["delta"].get("content") == "beta " for c in chunk["choices"]):
            return None
        return chunk

    return f


def hold_back() -> Callable[[Any], Any]:
    held: list[str] = []
    template: dict[str, Any] = {}

    def f(chunk: dict[str, Any] | None) -> Any:
        if chunk is None:
            return {
                **template,
                "choices": [{"index": 0, "delta": {"content": "".join(held)}, "logprobs": None, "finish_reason": None}],
            }
        template.update({k: chunk[k] for k in ("id", "object", "created", "model")})
        content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if content:
            held.append(content)
            return None
        return chunk

    return f


async def test_stream_filter_upper_cases(gateway: Any) -> None:
    client = await gateway(plugins=[FilterPlugin(upper)])
    _, raw = await post_stream(client, chat_body("alpha beta gamma"))
    chunks = stream_chunks(raw)
    assert content_of(chunks) == "ALPHA BETA GAMMA"
    assert finish_reasons(chunks) == [(0, "stop")]


async def test_stream_filter_drops_chunks(gateway: Any) -> None:
    client = await gateway(plugins=[FilterPlugin(drop_beta)])
    _, raw = await post_stream(client, chat_body("alpha beta gamma"))
    assert content_of(stream_chunks(raw)) == "alpha gamma"


async def test_stream_filters_compose(gateway: Any) -> None:
    client = await gateway(plugins=[FilterPlugin(upper), FilterPlugin(drop_beta)])
    _, raw = await post_stream(client, chat_body("alpha beta gamma"))
    # LIFO: drop_beta (registered last) sees "beta " before upper() changes it
    assert content_of(stream_chunks(raw)) == "ALPHA GAMMA"


async def test_stream_filter_flush_releases_held_content_before_done(gateway: Any) -> None:
    client = await gateway(plugins=[FilterPlugin(hold_back)])
    _, raw = await post_stream(client, chat_body("alpha beta gamma"))
    chunks = stream_chunks(raw)
    contents = [c["delta"].get("content") for ch in chunks for c in ch["choices"] if c["delta"].get("content")]
    assert contents == ["alpha beta gamma"]
    assert chunks[-1]["choices"][0]["delta"] == {"content": "alpha beta gamma"}
    assert finish_reasons(chunks[:-1]) == [(0, "stop")]  # released at the flush, after the finish chunk


class Editor:
    @hookimpl
    def gateway_process_response(self, ctx: RequestContext, response: dict[str, Any]) -> None:
        if ctx.endpoint == "chat.completions":
            response["choices"][0]["message"]["content"] += " [edited]"
            response["x_edited_by"] = "editor"


async def test_process_response_edits_in_place(gateway: Any) -> None:
    client = await gateway(plugins=[Editor()])
    resp = await client.post(CHAT, json=chat_body("original"))
    body = await resp.json()
    assert body["choices"][0]["message"]["content"] == "original [edited]"
    assert body["x_edited_by"] == "editor"


class Ordered:
    def __init__(self, name: str, order: list[str]) -> None:
        self.name, self.order = name, order

    @hookimpl
    async def gateway_process_request(self, ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        self.order.append(self.name)
        ctx.body["messages"][-1]["content"] += f" {self.name}"


class OrderedFirst(Ordered):
    @hookimpl(tryfirst=True)
    async def gateway_process_request(self, ctx: RequestContext) -> None:
        await asyncio.sleep(0)
        self.order.append(self.name)
        ctx.body["messages"][-1]["content"] += f" {self.name}"


async def test_async_process_request_runs_in_call_order(gateway: Any) -> None:
    order: list[str] = []
    client = await gateway(plugins=[Ordered("a", order), Ordered("b", order)])
    body = await (await client.post(CHAT, json=chat_body("go"))).json()
    assert order == ["b", "a"]  # pluggy LIFO: registered last runs first
    assert body["choices"][0]["message"]["content"] == "go b a"


async def test_tryfirst_wins_over_registration_order(gateway: Any) -> None:
    order: list[str] = []
    client = await gateway(plugins=[OrderedFirst("a", order), Ordered("b", order)])
    body = await (await client.post(CHAT, json=chat_body("go"))).json()
    assert order == ["a", "b"]
    assert body["choices"][0]["message"]["content"] == "go a b"


# Core routes -------------------------------------------------------------------------------------


async def test_health(gateway: Any) -> None:
    client = await gateway()
    for path in ("/", "/health"):
        resp = await client.get(path)
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.json() == {"status": "ok"}


async def test_models_list_and_retrieve(gateway: Any) -> None:
    client = await gateway()
    expected = {"id": MODEL, "object": "model", "created": 0, "owned_by": "mock"}
    for path in ("/v1/models", "/models"):
        resp = await client.get(path)
        assert resp.status == 200
        assert await resp.json() == {"object": "list", "data": [expected]}
    resp = await client.get(f"/v1/models/{MODEL}")
    assert resp.status == 200
    assert await resp.json() == expected
    resp = await client.get("/v1/models/no-such-model")
    await assert_error(resp, 404, code="model_not_found")


SECRET = "sk-test-do-not-show-9f8e7d"


class KeyedBackend(Backend):
    type_name = "keyed"

    class Config(BackendConfig):
        api_key: SecretStr
        headers: dict[str, str] = Field(default_factory=dict)  # plain strings: /info redacts them

    def chat(self, ctx: RequestContext) -> Any:
        raise NotImplementedError


class KeyedPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Callable[[str, type[Backend]], None]) -> None:
        register("keyed", KeyedBackend)


async def test_info(gateway: Any) -> None:
    config = mock_config()
    headers = {"X-Api-Key": "hdr-secret-1", "X-Trace": f"Bearer {SECRET}-2"}
    config["backends"].append(
        {"name": "keyed", "type": "keyed", "api_key": SECRET, "headers": headers, "models": ["keyed-model"]}
    )
    config["models"].append({"name": "keyed-model", "backend": "keyed"})
    config["info"] = {"theme": "midnight"}
    client = await gateway(config, plugins=[KeyedPlugin(), Editor()])
    resp = await client.get("/info")
    raw = await resp.read()
    assert resp.status == 200
    assert SECRET.encode() not in raw and b"hdr-secret-1" not in raw
    info = orjson.loads(raw)
    assert info["name"] == "llm-gateway"
    assert info["version"] == __version__
    assert info["theme"] == "midnight"
    plugins = {p["name"]: p["hooks"] for p in info["plugins"]}
    assert "gateway_select_backend" in plugins["routing"]
    assert "gateway_handle_error" in plugins["error_renderer"]
    assert ["gateway_process_response"] in plugins.values()  # the Editor instance
    assert ["gateway_register_backends"] in plugins.values()  # the KeyedPlugin instance
    backends = {b["name"]: b for b in info["backends"]}
    assert backends["mock"]["type"] == "mock"
    assert backends["keyed"]["type"] == "keyed"
    assert {m["name"] for m in info["models"]} == {MODEL, "keyed-model"}


@pytest.mark.parametrize(
    ("header", "key"),
    [("Bearer sk-1", "sk-1"), ("bearersk-2", "sk-2"), ("BEARER  sk-3 ", "sk-3"), ("Basic abc", None), ("Bearer", None)],
)
def test_bearer_token_is_read_from_authorization(header: str, key: str | None) -> None:
    from gateway.middleware import bearer_token

    assert bearer_token({"Authorization": header}) == key
