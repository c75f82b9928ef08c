"""openai_compat on ``/v1/completions`` and ``/v1/embeddings`` against a fake OpenAI API on 127.0.0.1
(tests/upstreams/openai_text.py): bodies passed through, streams passed through as bytes, usage
counted, errors mapped, Azure URLs; and the official SDK through the gateway."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from gateway import hookimpl
from gateway.context import RequestContext
from tests.upstreams.openai import Reply
from tests.upstreams.openai_text import OpenAITextUpstream, vector

KEY = "sk-upstream-secret-1234567890"
INSTRUCT = "gpt-3.5-turbo-instruct"
EMBEDDING = "text-embedding-3-small"


@pytest.fixture
def upstream(text_upstream: OpenAITextUpstream) -> OpenAITextUpstream:
    """This module's upstream serves completions and embeddings too."""
    return text_upstream


class Usage:
    """Records ``ctx.endpoint``, ``ctx.usage`` and the error of every finished request."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, BaseException | None]] = []

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext, error: BaseException | None) -> None:
        self.seen.append((ctx.endpoint, ctx.usage, error))


async def start(gateway: Any, upstream: OpenAITextUpstream, plugins: Any = (), **options: Any) -> TestClient:
    backend = {"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "api_key": KEY, "timeout": 0.5}
    models = options.pop("models", [{"name": "*", "backend": "up"}])
    return await gateway({"backends": [{**backend, **options}], "models": models}, plugins)


def payloads(raw: bytes) -> list[bytes]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


# Completions ------------------------------------------------------------------------------------


async def test_completion_body_goes_upstream_untouched_but_for_the_mapped_model(
    gateway: Any, upstream: OpenAITextUpstream
) -> None:
    usage = Usage()
    client = await start(gateway, upstream, [usage], models=[{"name": "instruct", "backend": "up", "model": INSTRUCT}])
    body = {"model": "instruct", "prompt": ["a", "b"], "suffix": "!", "best_of": 2, "new_parameter": {"x": [1]}}
    resp = await client.post("/v1/completions", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert upstream.last.path == "/v1/completions"
    assert upstream.last.body == {**body, "model": INSTRUCT}
    assert upstream.last.headers["Authorization"] == f"Bearer {KEY}"
    assert answer["object"] == "text_completion" and answer["model"] == "instruct"
    assert answer["choices"][0]["text"] == "Hello from upstream"
    assert usage.seen == [("completions", {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}, None)]


async def test_completion_stream_passes_through_byte_for_byte(gateway: Any, upstream: OpenAITextUpstream) -> None:
    client = await start(gateway, upstream)
    body = {"model": INSTRUCT, "prompt": "hi", "stream": True, "stream_options": {"include_usage": True}}
    resp = await client.post("/v1/completions", json=body)
    raw = await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert upstream.last.body == body
    direct = await (await client.session.post(upstream.base_url + "/completions", json=body)).read()
    assert raw == direct
    assert orjson.loads(payloads(raw)[-2]) == {
        "id": "cmpl-upstream",
        "object": "text_completion",
        "created": 1700000000,
        "model": INSTRUCT,
        "system_fingerprint": "fp_upstream",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }


async def test_completion_stream_usage_is_counted_when_the_client_did_not_ask(
    gateway: Any, upstream: OpenAITextUpstream
) -> None:
    usage = Usage()
    client = await start(gateway, upstream, [usage])
    raw = await (await client.post("/v1/completions", json={"model": INSTRUCT, "prompt": "hi", "stream": True})).read()
    assert upstream.last.body["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in raw and raw.endswith(b"data: [DONE]\n\n")
    chunks = [orjson.loads(p) for p in payloads(raw)[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "Hello from upstream"
    assert usage.seen[-1] == ("completions", {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}, None)


async def test_completion_json_answer_to_a_stream_request_is_streamed_as_text_chunks(
    gateway: Any, upstream: OpenAITextUpstream
) -> None:
    upstream.default = Reply(json_for_stream=True)
    client = await start(gateway, upstream)
    raw = await (await client.post("/v1/completions", json={"model": INSTRUCT, "prompt": "x", "stream": True})).read()
    chunks = [orjson.loads(p) for p in payloads(raw)[:-1]]
    assert [(c["object"], c["choices"][0]["text"], c["choices"][0]["finish_reason"]) for c in chunks] == [
        ("text_completion", "Hello from upstream", "stop")
    ]


async def test_completion_stream_error_event_ends_the_stream(gateway: Any, upstream: OpenAITextUpstream) -> None:
    upstream.default = Reply(error_event_after=2)
    client = await start(gateway, upstream)
    raw = await (await client.post("/v1/completions", json={"model": INSTRUCT, "prompt": "x", "stream": True})).read()
    events = payloads(raw)
    assert b"[DONE]" not in raw
    assert [orjson.loads(e)["choices"][0]["text"] for e in events[:2]] == ["Hello ", "from "]
    error = orjson.loads(events[-1])["error"]
    assert error["code"] == "bad_gateway" and "'up'" in error["message"]


# Embeddings -------------------------------------------------------------------------------------


async def test_embeddings_pass_through_float_and_base64(gateway: Any, upstream: OpenAITextUpstream) -> None:
    usage = Usage()
    client = await start(gateway, upstream, [usage], models=[{"name": "embed", "backend": "up", "model": EMBEDDING}])
    body = {"model": "embed", "input": ["one", "two"], "dimensions": 3, "encoding_format": "float", "user": "u"}
    resp = await client.post("/v1/embeddings", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert upstream.last.path == "/v1/embeddings" and upstream.last.body == {**body, "model": EMBEDDING}
    assert answer["model"] == "embed"
    assert [d["embedding"] for d in answer["data"]] == [vector(0, 3), vector(1, 3)]
    assert usage.seen == [("embeddings", {"prompt_tokens": 11, "total_tokens": 11}, None)]

    resp = await client.post("/v1/embeddings", json={**body, "encoding_format": "base64"})
    direct = await client.session.post(
        upstream.base_url + "/embeddings", json={**body, "model": EMBEDDING, "encoding_format": "base64"}
    )  # type: ignore[attr-defined]
    assert (await resp.json())["data"] == (await direct.json())["data"]  # the upstream's base64, untouched


async def test_embeddings_upstream_errors(gateway: Any, upstream: OpenAITextUpstream) -> None:
    client = await start(gateway, upstream)
    bad = {
        "error": {
            "message": "Invalid 'input': too long.",
            "type": "invalid_request_error",
            "param": "input",
            "code": None,
        }
    }
    upstream.reply(Reply(status=400, error=bad), Reply(status=503), Reply(hang=True))
    resp = await client.post("/v1/embeddings", json={"model": EMBEDDING, "input": "x"})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "input" and "too long" in error["message"]
    resp = await client.post("/v1/embeddings", json={"model": EMBEDDING, "input": "x"})
    assert resp.status == 502 and "'up'" in (await resp.json())["error"]["message"]
    resp = await client.post("/v1/embeddings", json={"model": EMBEDDING, "input": "x"})
    assert resp.status == 504


async def test_azure_deployment_urls_for_both(gateway: Any, upstream: OpenAITextUpstream) -> None:
    base = upstream.base_url.removesuffix("/v1") + "/openai"
    config = {
        "backends": [
            {
                "name": "az",
                "type": "openai_compat",
                "base_url": base,
                "deployment_urls": True,
                "api_version": "2024-06-01",
            }
        ],
        "models": [{"name": "m", "backend": "az", "model": "my-deployment"}],
    }
    client = await gateway(config)
    assert (await client.post("/v1/completions", json={"model": "m", "prompt": "x"})).status == 200
    assert upstream.last.path == "/openai/deployments/my-deployment/completions"
    assert upstream.last.query == {"api-version": "2024-06-01"}
    assert (await client.post("/v1/embeddings", json={"model": "m", "input": "x"})).status == 200
    assert upstream.last.path == "/openai/deployments/my-deployment/embeddings"


# The SDK ----------------------------------------------------------------------------------------


@pytest.fixture
async def sdk(gateway: Any, upstream: OpenAITextUpstream) -> AsyncIterator[AsyncOpenAI]:
    http = await start(gateway, upstream)
    async with AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="k", max_retries=0, timeout=5) as client:
        yield client


async def test_the_sdk_through_the_gateway_to_the_upstream(sdk: AsyncOpenAI, upstream: OpenAITextUpstream) -> None:
    completion = await sdk.completions.create(model=INSTRUCT, prompt="hi")
    assert completion.choices[0].text == "Hello from upstream" and completion.usage is not None
    stream = await sdk.completions.create(model=INSTRUCT, prompt="hi", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == "Hello from upstream"

    default = await sdk.embeddings.create(model=EMBEDDING, input=["a", "b"])  # the SDK asks for base64
    assert upstream.last.body["encoding_format"] == "base64"
    as_float = await sdk.embeddings.create(model=EMBEDDING, input=["a", "b"], encoding_format="float")
    assert [d.embedding for d in default.data] == [d.embedding for d in as_float.data] == [vector(0), vector(1)]


async def test_a_completions_stream_that_ends_after_its_finish_without_done_is_complete(
    gateway: Any, upstream: OpenAITextUpstream
) -> None:
    upstream.reply(Reply(content="all of it", done=False))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/completions", json={"model": INSTRUCT, "prompt": "x", "stream": True})
    events = payloads(await resp.read())
    assert events[-1] == b"[DONE]" and orjson.loads(events[-2])["choices"][0]["finish_reason"] == "stop"
    upstream.reply(Reply(content="all of it", done=False))
    body = {"model": INSTRUCT, "prompt": ["x", "y"], "stream": True}  # two prompts, one finish
    events = payloads(await (await client.post("/v1/completions", json=body)).read())
    assert orjson.loads(events[-1])["error"]["code"] == "bad_gateway"
