"""``POST /v1/completions`` and ``POST /v1/embeddings`` over raw HTTP, served by the mock backend:
exact shapes, SSE framing, validation errors, routing, backends without support, and the
per-request hooks with ``ctx.endpoint``."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import RequestContext, hookimpl
from gateway.testing import RecordingPlugin, mock_config, recording_config

MODEL = "mock-gpt-model"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
ERROR_KEYS = {"message", "type", "param", "code"}


def stream_chunks(raw: bytes) -> list[dict[str, Any]]:
    """The chunks of a complete SSE stream: every event ``data: ...\\n\\n``, one ``[DONE]`` last."""
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-120:]
    events = raw[:-2].split(b"\n\n")
    assert all(e.startswith(b"data: ") and b"\n" not in e for e in events), raw
    payloads = [e[len(b"data: ") :] for e in events]
    assert payloads.count(b"[DONE]") == 1
    return [orjson.loads(p) for p in payloads[:-1]]


def texts(chunks: list[dict[str, Any]]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            out[choice["index"]] = out.get(choice["index"], "") + choice["text"]
    return out


def finishes(chunks: list[dict[str, Any]]) -> dict[int, str]:
    return {c["index"]: c["finish_reason"] for ch in chunks for c in ch["choices"] if c["finish_reason"]}


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    raw = await resp.read()
    assert resp.status == status, raw
    assert resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


def decode(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


async def post(client: TestClient, path: str, body: dict[str, Any]) -> tuple[Any, bytes]:
    resp = await client.post(path, json=body)
    return resp, await resp.read()


# Completions ------------------------------------------------------------------------------------


async def test_completion_has_every_openai_field(gateway: Any) -> None:
    client = await gateway()
    before = int(time.time())
    resp, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": "Say this is a test"})
    assert resp.status == 200 and resp.content_type == "application/json"
    body = orjson.loads(raw)
    assert body["id"].startswith("cmpl-") and len(body["id"]) > len("cmpl-")
    assert body["object"] == "text_completion"
    assert before - 1 <= body["created"] <= time.time() + 1
    assert body["model"] == MODEL
    assert "system_fingerprint" not in body  # none to give: left out, never null
    assert body["choices"] == [{"text": "Say this is a test", "index": 0, "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}


async def test_completion_honours_max_tokens_stop_echo_n_and_several_prompts(gateway: Any) -> None:
    client = await gateway()
    words = " ".join(f"w{i}" for i in range(20))
    _, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": words})
    choice = orjson.loads(raw)["choices"][0]
    assert choice["text"] == " ".join(f"w{i}" for i in range(16)) + " "  # OpenAI's default max_tokens: 16
    assert choice["finish_reason"] == "length"

    body = {"model": MODEL, "prompt": "one two three", "max_tokens": 2, "echo": True, "n": 2}
    _, raw = await post(client, COMPLETIONS, body)
    out = orjson.loads(raw)
    assert [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]] == [
        (0, "one two threeone two ", "length"),
        (1, "one two threeone two ", "length"),
    ]
    assert out["usage"]["completion_tokens"] == 4  # the echoed prompt is not completion

    _, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": ["a b STOP c", "d e"], "stop": "STOP", "n": 2})
    choices = orjson.loads(raw)["choices"]
    assert [(c["index"], c["text"]) for c in choices] == [(0, "a b "), (1, "a b "), (2, "d e"), (3, "d e")]

    _, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": [[1, 2, 3], [40]]})
    out = orjson.loads(raw)
    assert [c["text"] for c in out["choices"]] == ["1 2 3", "40"]
    assert out["usage"]["prompt_tokens"] == 4  # token arrays count exactly


async def test_completion_stream_shape_and_usage(gateway: Any) -> None:
    client = await gateway()
    body = {"model": MODEL, "prompt": "alpha beta gamma", "stream": True}
    resp, raw = await post(client, COMPLETIONS, body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    chunks = stream_chunks(raw)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    for c in chunks:
        assert c["object"] == "text_completion" and c["model"] == MODEL and "usage" not in c
        assert all(set(choice) == {"text", "index", "logprobs", "finish_reason"} for choice in c["choices"])
    assert [c["choices"][0]["text"] for c in chunks] == ["alpha ", "beta ", "gamma", ""]
    assert finishes(chunks) == {0: "stop"}

    resp, raw = await post(client, COMPLETIONS, {**body, "stream_options": {"include_usage": True}, "n": 2})
    chunks = stream_chunks(raw)
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
    assert texts(chunks) == {0: "alpha beta gamma", 1: "alpha beta gamma"}
    assert finishes(chunks) == {0: "stop", 1: "stop"}

    _, raw = await post(client, COMPLETIONS, {**body, "echo": True, "max_tokens": 1})
    chunks = stream_chunks(raw)
    assert [c["choices"][0]["text"] for c in chunks] == ["alpha beta gamma", "alpha ", ""]
    assert finishes(chunks) == {0: "length"}


async def test_completion_stream_breaking_off_ends_with_an_error_event(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}))
    resp, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": "a b c d", "stream": True})
    assert resp.status == 200
    events = raw[:-2].split(b"\n\n")
    assert b"[DONE]" not in raw
    assert [orjson.loads(e[6:])["choices"][0]["text"] for e in events[:2]] == ["a ", "b "]
    assert orjson.loads(events[-1][6:])["error"]["code"] == "bad_gateway"


async def test_completions_answer_without_the_v1_prefix(gateway: Any) -> None:
    client = await gateway()
    resp, raw = await post(client, "/completions", {"model": "default", "prompt": "hi"})
    assert resp.status == 200 and orjson.loads(raw)["choices"][0]["text"] == "hi"
    resp, raw = await post(client, "/embeddings", {"model": "default", "input": "hi"})
    assert resp.status == 200 and orjson.loads(raw)["object"] == "list"


# Embeddings -------------------------------------------------------------------------------------


async def test_embeddings_float_shape_determinism_and_norm(gateway: Any) -> None:
    client = await gateway()
    resp, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": ["hello world", "other", "hello world"]})
    assert resp.status == 200
    body = orjson.loads(raw)
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == MODEL
    assert body["usage"] == {"prompt_tokens": 8, "total_tokens": 8}  # 3 + 2 + 3, four characters a token
    assert [(d["object"], d["index"]) for d in body["data"]] == [("embedding", 0), ("embedding", 1), ("embedding", 2)]
    first, other, again = (d["embedding"] for d in body["data"])
    assert len(first) == 8 and all(type(x) is float for x in first)
    assert first == again and first != other
    assert math.isclose(math.fsum(x * x for x in first), 1.0, rel_tol=1e-6)

    _, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": "hello world", "encoding_format": "float"})
    assert orjson.loads(raw)["data"][0]["embedding"] == first  # the same input, the same vector, every time

    _, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": [[1, 2], [3]], "dimensions": 3})
    body = orjson.loads(raw)
    assert [len(d["embedding"]) for d in body["data"]] == [3, 3]
    assert body["usage"]["prompt_tokens"] == 3


async def test_embeddings_base64_is_little_endian_float32_of_the_same_vector(gateway: Any) -> None:
    client = await gateway()
    _, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": "vector me", "dimensions": 16})
    floats = orjson.loads(raw)["data"][0]["embedding"]
    _, raw = await post(
        client, EMBEDDINGS, {"model": MODEL, "input": "vector me", "dimensions": 16, "encoding_format": "base64"}
    )
    encoded = orjson.loads(raw)["data"][0]["embedding"]
    assert isinstance(encoded, str) and len(base64.b64decode(encoded)) == 16 * 4
    assert decode(encoded) == floats


async def test_embeddings_backend_failures(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "error", "status": 429}))
    error = await error_of(await client.post(EMBEDDINGS, json={"model": MODEL, "input": "x"}), 429)
    assert "mock" in error["message"]
    client = await gateway(mock_config(failure={"mode": "hang"}, timeout=0.2))
    error = await error_of(await client.post(EMBEDDINGS, json={"model": MODEL, "input": "x"}), 504)
    assert error["code"] == "upstream_timeout"


# Errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param", "code"),
    [
        (COMPLETIONS, {"model": MODEL}, "prompt", "missing_required_parameter"),
        (COMPLETIONS, {"model": MODEL, "prompt": 5}, "prompt", "invalid_type"),
        (COMPLETIONS, {"model": MODEL, "prompt": []}, "prompt", "empty_array"),
        (COMPLETIONS, {"model": MODEL, "prompt": [[1], []]}, "prompt[1]", "empty_array"),
        (COMPLETIONS, {"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens", "integer_below_min_value"),
        (COMPLETIONS, {"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs", "integer_above_max_value"),
        (COMPLETIONS, {"model": MODEL, "prompt": "x", "echo": "yes"}, "echo", "invalid_type"),
        (COMPLETIONS, {"model": MODEL, "prompt": "x", "stream_options": {}}, "stream_options", "invalid_value"),
        (COMPLETIONS, {"prompt": "x"}, "model", "missing_required_parameter"),
        (EMBEDDINGS, {"model": MODEL}, "input", "missing_required_parameter"),
        (EMBEDDINGS, {"model": MODEL, "input": ""}, "input", "empty_string"),
        (EMBEDDINGS, {"model": MODEL, "input": ["a", ""]}, "input[1]", "empty_string"),
        (EMBEDDINGS, {"model": MODEL, "input": [{"text": "a"}]}, "input[0]", "invalid_type"),
        (EMBEDDINGS, {"model": MODEL, "input": ["a"] * 2049}, "input", "array_above_max_length"),
        (EMBEDDINGS, {"model": MODEL, "input": "a", "encoding_format": "hex"}, "encoding_format", "invalid_value"),
        (EMBEDDINGS, {"model": MODEL, "input": "a", "dimensions": 0}, "dimensions", "integer_below_min_value"),
        (EMBEDDINGS, [], None, "invalid_type"),
    ],
)
async def test_validation_errors_name_the_param(gateway: Any, path: str, body: Any, param: str, code: str) -> None:
    client = await gateway()
    error = await error_of(await client.post(path, json=body), 400)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")


async def test_invalid_json_and_unknown_model(gateway: Any) -> None:
    client = await gateway()
    for path in (COMPLETIONS, EMBEDDINGS):
        error = await error_of(await client.post(path, data=b"{not json"), 400)
        assert "JSON" in error["message"]
        body = {"model": "nope", "prompt": "x", "input": "x"}
        error = await error_of(await client.post(path, json=body), 404)
        assert error["code"] == "model_not_found" and "`nope`" in error["message"]


async def test_a_backend_without_support_answers_404_naming_model_backend_and_endpoint(gateway: Any) -> None:
    client = await gateway(recording_config(), plugins=[RecordingPlugin()])
    body = {"model": "recorded-model", "prompt": "x", "input": "x"}
    for path, stream in ((COMPLETIONS, False), (COMPLETIONS, True), (EMBEDDINGS, False)):
        error = await error_of(await client.post(path, json={**body, "stream": stream}), 404)
        assert error["type"] == "invalid_request_error"
        assert error["param"] == "model" and error["code"] == "unsupported_endpoint"
        assert f"`recorded-model` (backend 'recording') does not support the {path[1:]} endpoint" in error["message"]
    error = await error_of(await client.post(COMPLETIONS, json=body), 404)
    assert error["message"].endswith("Did you mean to use v1/chat/completions?")


# Hooks ------------------------------------------------------------------------------------------


class Observer:
    """Records ``ctx.endpoint`` in every per-request hook; upper-cases streamed text."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    @hookimpl
    def gateway_authenticate(self, ctx: RequestContext) -> None:
        self.seen.append(("authenticate", ctx.endpoint))

    @hookimpl
    async def gateway_process_request(self, ctx: RequestContext) -> None:
        self.seen.append(("process_request", ctx.endpoint))

    @hookimpl
    def gateway_select_backend(self, ctx: RequestContext) -> None:
        self.seen.append(("select_backend", ctx.endpoint))

    @hookimpl
    def gateway_stream_filter(self, ctx: RequestContext) -> Any:
        self.seen.append(("stream_filter", ctx.endpoint))
        if ctx.endpoint != "completions":
            return None

        def upper(chunk: dict[str, Any] | None) -> Any:
            for choice in (chunk or {}).get("choices", ()):
                choice["text"] = choice["text"].upper()
            return chunk

        return upper

    @hookimpl
    def gateway_process_response(self, ctx: RequestContext, response: dict[str, Any]) -> None:
        self.seen.append(("process_response", ctx.endpoint))
        response["x_seen_object"] = response["object"]

    @hookimpl
    def gateway_handle_error(self, ctx: RequestContext) -> None:
        self.seen.append(("handle_error", ctx.endpoint))

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.seen.append(("request_finished", ctx.endpoint))


async def test_hooks_see_the_endpoint_and_filters_see_text_completion_chunks(gateway: Any) -> None:
    observer = Observer()
    client = await gateway(plugins=[observer])
    admitted = ["authenticate", "process_request", "select_backend"]

    _, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": "quiet words"})
    assert orjson.loads(raw)["x_seen_object"] == "text_completion"
    assert observer.seen == [(h, "completions") for h in [*admitted, "process_response", "request_finished"]]

    observer.seen.clear()
    _, raw = await post(client, COMPLETIONS, {"model": MODEL, "prompt": "quiet words", "stream": True})
    assert texts(stream_chunks(raw)) == {0: "QUIET WORDS"}
    assert observer.seen == [(h, "completions") for h in [*admitted, "stream_filter", "request_finished"]]

    observer.seen.clear()
    _, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": "x"})
    assert orjson.loads(raw)["x_seen_object"] == "list"
    assert observer.seen == [(h, "embeddings") for h in [*admitted, "process_response", "request_finished"]]

    observer.seen.clear()
    await error_of(await client.post(EMBEDDINGS, json={"model": MODEL, "input": ""}), 400)
    assert observer.seen == [("handle_error", "embeddings"), ("request_finished", "embeddings")]


class Answerer:
    """Answers every completion and embeddings request itself, without usage."""

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        if ctx.endpoint == "completions":
            choice = {"text": "from the cache", "index": 0, "logprobs": None, "finish_reason": "stop"}
            ctx.response = {
                "id": "cmpl-c",
                "object": "text_completion",
                "created": 1,
                "model": "m",
                "choices": [choice],
            }
        elif ctx.endpoint == "embeddings":
            ctx.response = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [1.0]}]}


async def test_a_plugin_answer_is_sent_with_estimated_usage_and_streamed_as_text_chunks(gateway: Any) -> None:
    client = await gateway(mock_config(failure={"mode": "error", "status": 500}), plugins=[Answerer()])
    prompt = {"model": MODEL, "prompt": "12345678"}
    _, raw = await post(client, COMPLETIONS, prompt)
    body = orjson.loads(raw)
    assert body["choices"][0]["text"] == "from the cache"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6}

    _, raw = await post(client, COMPLETIONS, {**prompt, "stream": True, "stream_options": {"include_usage": True}})
    chunks = stream_chunks(raw)
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-c" for c in chunks)
    assert texts(chunks) == {0: "from the cache"} and finishes(chunks) == {0: "stop"}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 6

    _, raw = await post(client, EMBEDDINGS, {"model": MODEL, "input": ["12345678", "x"], "stream": True})
    body = orjson.loads(raw)  # embeddings never stream
    assert body["data"][0]["embedding"] == [1.0]
    assert body["usage"] == {"prompt_tokens": 3, "total_tokens": 3}


@pytest.mark.parametrize("dimensions", [3073, 1_000_000, 10**12])
async def test_embeddings_dimensions_above_3072_are_400(gateway: Any, dimensions: int) -> None:
    client = await gateway()
    resp = await client.post(EMBEDDINGS, json={"model": MODEL, "input": ["a"] * 8, "dimensions": dimensions})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "dimensions" and error["type"] == "invalid_request_error"


async def test_a_large_embeddings_answer_does_not_stall_the_event_loop(gateway: Any) -> None:
    client = await gateway()

    async def big() -> Any:
        body = {"model": MODEL, "input": [str(i) for i in range(600)], "dimensions": 3072}
        async with client.post(EMBEDDINGS, json=body) as resp:
            return resp.status, (await resp.read()).count(b'"embedding":')  # no slow parse on this loop

    task = asyncio.ensure_future(big())
    loop = asyncio.get_running_loop()
    began, waited = loop.time(), 0.0
    while not task.done():  # /health answers promptly all the while the big answer is built
        start = loop.time()
        assert (await client.get("/health")).status == 200
        waited = max(waited, loop.time() - start)
    assert await task == (200, 600)
    took = loop.time() - began
    assert waited < took / 2, (waited, took)  # built on the loop: /health waits for most of it
