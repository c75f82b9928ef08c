"""Every answer the gateway builds matches OpenAI's OpenAPI schemas (tests/data/openai_spec/, copied
from the spec with its version noted): chat completions and their chunks, text completions and their
chunks, embeddings, the model list and one model, for every backend that builds answers (mock,
sourcegraph, http_template, anthropic, each against its real fake upstream in tests/upstreams/), for
simulated streams and for answers the cache replays; what an upstream sent passes through
(``system_fingerprint``)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator

from tests.upstreams.anthropic import API_KEY as ANTHROPIC_KEY
from tests.upstreams.anthropic import AnthropicUpstream, tool_use
from tests.upstreams.anthropic import Reply as AnthropicReply
from tests.upstreams.chat_api import ChatAPI
from tests.upstreams.openai import Reply as OpenAIReply
from tests.upstreams.sourcegraph import MODELS as SG_MODELS
from tests.upstreams.sourcegraph import TOKEN as SG_TOKEN
from tests.upstreams.sourcegraph import Reply as SGReply
from tests.upstreams.sourcegraph import SourcegraphUpstream

SPEC = Path(__file__).parents[1] / "data" / "openai_spec"
MESSAGES = [{"role": "user", "content": "Hello there, spec"}]
TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]


@cache
def validator(name: str) -> Draft202012Validator:
    schema = json.loads((SPEC / f"{name}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def violations(name: str, answer: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(name).iter_errors(answer)]


def check(name: str, answer: Any) -> None:
    assert violations(name, answer) == [], answer


def sse(raw: bytes) -> list[Any]:
    """The events of a stream: every ``data:`` payload parsed, up to a final ``[DONE]``."""
    events = [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e.strip()]
    assert events and events[-1] == b"[DONE]", raw[-300:]
    return [orjson.loads(e) for e in events[:-1]]


async def answer(client: Any, path: str, body: dict[str, Any], schema: str, chunk_schema: str) -> Any:
    """POST ``body`` and check the answer (or every chunk of the stream) against the spec; the answer."""
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    if not body.get("stream"):
        data = await resp.json()
        check(schema, data)
        return data
    chunks = sse(await resp.read())
    for item in chunks:
        check(chunk_schema, item)
    return chunks


async def chat(client: Any, **body: Any) -> Any:
    return await answer(
        client,
        "/v1/chat/completions",
        {"messages": MESSAGES, **body},
        "CreateChatCompletionResponse",
        "CreateChatCompletionStreamResponse",
    )


async def every_chat_shape(client: Any, model: str, tools: bool = True) -> None:
    """Non-streamed and streamed, with and without the usage chunk, with a forced tool call."""
    for stream in (False, True):
        await chat(client, model=model, stream=stream)
        if stream:
            chunks = await chat(client, model=model, stream=True, stream_options={"include_usage": True})
            assert chunks[-1]["usage"]["total_tokens"] > 0
        if tools:
            await chat(client, model=model, stream=stream, tools=TOOLS, tool_choice="required")


async def models(client: Any, model: str) -> None:
    resp = await client.get("/v1/models")
    assert resp.status == 200
    listing = await resp.json()
    check("ListModelsResponse", listing)
    assert model in [m["id"] for m in listing["data"]]
    resp = await client.get(f"/v1/models/{model}")
    assert resp.status == 200
    check("Model", await resp.json())


def test_the_schemas_say_what_the_spec_says() -> None:
    """The schemas hold the spec's rules that answers broke: system_fingerprint a string (not
    nullable), usage optional but not null in a complete answer, refusal and logprobs required."""
    base = {"id": "x", "object": "chat.completion", "created": 1, "model": "m"}
    choice = {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None}, "logprobs": None}
    good = {**base, "choices": [{**choice, "finish_reason": "stop"}]}
    assert violations("CreateChatCompletionResponse", good) == []
    assert violations("CreateChatCompletionResponse", {**good, "system_fingerprint": None})
    assert violations("CreateChatCompletionResponse", {**good, "usage": None})
    assert violations("CreateChatCompletionResponse", {**good, "choices": [{**choice, "finish_reason": None}]})
    no_refusal = {**choice, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
    assert violations("CreateChatCompletionResponse", {**good, "choices": [no_refusal]})
    chunk = {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": None}]}
    assert violations("CreateChatCompletionStreamResponse", {**chunk, "usage": None}) == []
    assert violations("CreateChatCompletionStreamResponse", {**chunk, "system_fingerprint": None})
    assert violations("Model", {"id": "m", "object": "model", "created": 0})  # owned_by is required


# mock ------------------------------------------------------------------------------------------


async def test_mock_answers_match_the_spec(gateway: Any) -> None:
    client = await gateway()
    await every_chat_shape(client, "mock-gpt-model")
    await chat(client, model="mock-gpt-model", n=2, max_tokens=2)
    done = await chat(client, model="mock-gpt-model")
    assert "system_fingerprint" not in done
    for stream in (False, True):
        for extra in ({}, {"echo": True, "n": 2, "prompt": ["one two", "three"]}):
            await answer(
                client,
                "/v1/completions",
                {"model": "mock-gpt-model", "prompt": "say this", "stream": stream, **extra},
                "CreateCompletionResponse",
                "CreateCompletionStreamChunk",
            )
    await answer(
        client,
        "/v1/completions",
        {"model": "mock-gpt-model", "prompt": "x", "stream": True, "stream_options": {"include_usage": True}},
        "CreateCompletionResponse",
        "CreateCompletionStreamChunk",
    )
    resp = await client.post("/v1/embeddings", json={"model": "mock-gpt-model", "input": ["a", "b"]})
    check("CreateEmbeddingResponse", await resp.json())
    await models(client, "mock-gpt-model")


# sourcegraph -----------------------------------------------------------------------------------


@pytest.fixture
async def sourcegraph(aiohttp_server: Any) -> SourcegraphUpstream:
    fake = SourcegraphUpstream()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return fake


def sg_config(fake: Any, **options: Any) -> dict[str, Any]:
    backend = {"name": "sg", "type": "sourcegraph", "endpoint": fake.url, "access_token": SG_TOKEN, **options}
    return {"backends": [backend]}


@pytest.mark.parametrize(
    "options", [{}, {"stream": False, "n": False}, {"legacy": True}], ids=["chat-api", "simulated", "legacy"]
)
async def test_sourcegraph_answers_match_the_spec(gateway: Any, sourcegraph: Any, options: dict[str, Any]) -> None:
    client = await gateway(sg_config(sourcegraph, **options))
    await every_chat_shape(client, SG_MODELS[0], tools=False)
    await chat(client, model=SG_MODELS[0], n=2)
    sourcegraph.default = SGReply(usage=(9, 4))
    await every_chat_shape(client, SG_MODELS[0], tools=False)
    await models(client, SG_MODELS[0])


# http_template ---------------------------------------------------------------------------------


@pytest.fixture
async def chat_api(aiohttp_server: Any) -> ChatAPI:
    fake = ChatAPI()
    server = await aiohttp_server(fake.app)
    fake.base = str(server.make_url(""))  # type: ignore[attr-defined]
    return fake


TEMPLATES: dict[str, dict[str, Any]] = {
    "json": {"url": "chatting", "body": {"message": "{{ last_user_message }}", "history": "{{ history }}"}},
    "ndjson": {
        "url": "stream.ndjson",
        "body": {"prompt": "{{ last_user_message }}"},
        "stream": {"format": "ndjson", "text": "token", "done": "done", "finish_reason": "stop"},
    },
    "sse": {
        "url": "stream.sse",
        "body": {"prompt": "{{ last_user_message }}"},
        "stream": {"format": "sse", "text": "delta.text", "done_data": "[DONE]"},
    },
}


@pytest.mark.parametrize("kind", list(TEMPLATES))
async def test_http_template_answers_match_the_spec(gateway: Any, chat_api: Any, kind: str) -> None:
    options = dict(TEMPLATES[kind])
    options["url"] = chat_api.base.rstrip("/") + "/" + options["url"]
    if "stream" not in options:
        options["response"] = {"text": "reply"}
    backend = {"name": "chat", "type": "http_template", "models": ["custom-chat"], **options}
    client = await gateway({"backends": [backend]})
    await every_chat_shape(client, "custom-chat", tools=False)
    await models(client, "custom-chat")


# anthropic -------------------------------------------------------------------------------------


async def test_anthropic_answers_match_the_spec(gateway: Any, aiohttp_server: Any) -> None:
    fake = AnthropicUpstream()
    server = await aiohttp_server(fake.app)
    backend = {"name": "claude", "type": "anthropic", "base_url": str(server.make_url("")), "api_key": ANTHROPIC_KEY}
    client = await gateway({"backends": [backend]})
    await every_chat_shape(client, "claude-sonnet-test", tools=False)
    call = AnthropicReply(blocks=[tool_use("toolu_1", "f", {"a": 1})], stop_reason="tool_use")
    for stream in (False, True):
        fake.reply(call)
        await chat(client, model="claude-sonnet-test", stream=stream, tools=TOOLS)
    fake.reply(AnthropicReply(json_for_stream=True))
    await chat(client, model="claude-sonnet-test", stream=True)
    await models(client, "claude-sonnet-test")


# openai_compat, the cache ------------------------------------------------------------------------


def openai_config(fake: Any, **plugins: Any) -> dict[str, Any]:
    backend = {"name": "up", "type": "openai_compat", "base_url": fake.base_url, "api_key": "sk-up"}
    return {"backends": [backend], "models": [{"name": "*", "backend": "up"}], "plugins": plugins}


async def test_an_upstreams_fingerprint_passes_through_and_simulated_streams_match(gateway: Any, upstream: Any) -> None:
    client = await gateway(openai_config(upstream))
    done = await chat(client, model="gpt-4o-mini")
    assert done["system_fingerprint"] == "fp_upstream"
    upstream.reply(OpenAIReply(json_for_stream=True))  # a stream request answered in one piece
    chunks = await chat(client, model="gpt-4o-mini", stream=True, stream_options={"include_usage": True})
    assert {c.get("system_fingerprint") for c in chunks} == {"fp_upstream"}
    upstream.reply(OpenAIReply(report_usage=False, json_for_stream=True))
    await chat(client, model="gpt-4o-mini", stream=True)
    await models(client, "gpt-4o-mini")


async def test_answers_the_cache_replays_match_the_spec(gateway: Any, upstream: Any) -> None:
    """A stored stream replayed whole (``chunks_to_completion``) and a stored answer replayed as a
    stream, with the upstream's fingerprint and without usage."""
    client = await gateway(openai_config(upstream, cache={"enabled": True}))
    for usage in (True, False):
        upstream.default = OpenAIReply(report_usage=usage)
        messages = [{"role": "user", "content": f"stream first {usage}"}]
        await chat(client, model="gpt-4o-mini", stream=True, messages=messages)
        replayed = await chat(client, model="gpt-4o-mini", messages=messages)
        assert replayed["system_fingerprint"] == "fp_upstream"
        messages = [{"role": "user", "content": f"answer first {usage}"}]
        await chat(client, model="gpt-4o-mini", messages=messages)
        chunks = await chat(client, model="gpt-4o-mini", stream=True, messages=messages)
        assert chunks[0]["system_fingerprint"] == "fp_upstream"
    assert len(upstream.requests) == 4
