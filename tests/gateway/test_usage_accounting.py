"""Usage accounting: every response's usage is the upstream's, stream or not; when an upstream reports
none, the gateway estimates it (``gateway.formats.chat``'s method) and marks it in the access line.

openai_compat against the fake OpenAI API (tests/upstreams/openai_text.py), whose ``report_usage=False``
answers without any usage; a dict-yielding backend of a test plugin; the mock and recording backends."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from gateway import hookimpl
from gateway.backend import Backend
from gateway.context import RequestContext
from gateway.formats.chat import chat_completion, completion_id, completion_to_chunks, message_choice
from gateway.log import setup_logging
from gateway.testing import MOCK_MODEL, Finished, RecordingPlugin, mock_config, recording_config
from tests.upstreams.openai import Reply
from tests.upstreams.openai_text import OpenAITextUpstream

CONTENT = "one two three four five six"  # 27 characters: ceil(27 / 4) = 7 tokens
MESSAGES = [{"role": "user", "content": "Hi"}]  # 3 per message + 1 for "Hi" + 3 priming = 7 tokens
UPSTREAM_USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


class Seen:
    """Records ``(ctx.usage, ctx.usage_estimated)`` of every finished request."""

    def __init__(self) -> None:
        self.usage: list[tuple[Any, bool]] = []

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.usage.append((ctx.usage, ctx.usage_estimated))


@pytest.fixture
def upstream(text_upstream: OpenAITextUpstream) -> OpenAITextUpstream:
    """The shared upstream, serving all three endpoints' models and answering ``CONTENT``."""
    text_upstream.models = ["gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small"]
    text_upstream.default = Reply(content=CONTENT)
    return text_upstream


@pytest.fixture
def access() -> Callable[[], list[dict[str, Any]]]:
    """JSON logging into a buffer; call it for the access lines written so far."""
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    return lambda: [line for line in map(json.loads, buffer.getvalue().splitlines()) if line["event"] == "request"]


async def start(gateway: Any, upstream: OpenAITextUpstream, *plugins: object, **options: Any) -> TestClient:
    backend = {"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "timeout": 10, **options}
    return await gateway({"backends": [backend], "models": [{"name": "*", "backend": "up"}]}, plugins)


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def tokens(text: str) -> dict[str, float]:
    """``gateway_tokens_total`` summed by type, from a /metrics text."""
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "gateway_tokens_total":
                sums[s.labels["type"]] = sums.get(s.labels["type"], 0) + s.value
    return sums


async def post(client: TestClient, path: str, body: dict[str, Any]) -> bytes:
    response = await client.post(path, json=body)
    assert response.status == 200, await response.text()
    return await response.read()


# The upstream's usage, stream or not ------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "options"),
    [(False, {}), (True, {}), (True, {"stream_options": {"include_usage": True}})],
    ids=["json", "stream", "stream-include-usage"],
)
@pytest.mark.parametrize("stream_usage", [True, False])
async def test_usage_is_the_upstreams(
    gateway: Any, upstream: OpenAITextUpstream, access: Any, stream: bool, options: dict[str, Any], stream_usage: bool
) -> None:
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished, stream_usage=stream_usage)
    await post(
        client, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **options}
    )
    await finished.wait(1)
    [line] = access()
    if stream and not options and not stream_usage:  # nobody asked the upstream for it: an estimate
        assert seen.usage == [(usage(7, 8), True)] and line["usage_estimated"] is True
        return
    assert seen.usage == [(UPSTREAM_USAGE, False)]
    assert (line["prompt_tokens"], line["completion_tokens"]) == (11, 4) and "usage_estimated" not in line


async def test_token_metrics_equal_the_upstreams_usage(gateway: Any, upstream: OpenAITextUpstream) -> None:
    finished = Finished()
    client = await start(gateway, upstream, finished)
    for stream in (False, True, True):
        await post(client, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream})
    await post(client, "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": True})
    await finished.wait(4)
    assert tokens(await (await client.get("/metrics")).text()) == {"prompt": 4 * 11, "completion": 4 * 4}


# An upstream that reports no usage ---------------------------------------------------------------


async def test_a_chat_completion_without_usage_is_estimated(
    gateway: Any, upstream: OpenAITextUpstream, access: Any
) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    answer = json.loads(await post(client, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}))
    assert "usage" not in answer  # the client gets the upstream's answer as it was
    await finished.wait(1)
    assert seen.usage == [(usage(7, 7), True)]
    [line] = access()
    assert (line["prompt_tokens"], line["completion_tokens"], line["usage_estimated"]) == (7, 7, True)


@pytest.mark.parametrize("include_usage", [False, True])
async def test_a_stream_without_usage_counts_its_events(
    gateway: Any, upstream: OpenAITextUpstream, access: Any, include_usage: bool
) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}  # asked, and ignored by the upstream
    raw = await post(client, "/v1/chat/completions", body)
    assert raw.count(b"data: ") == 8 + 1  # the role event, six words, the finish event; [DONE]
    assert upstream.last.body["stream_options"] == {"include_usage": True}
    await finished.wait(1)
    assert seen.usage == [(usage(7, 8), True)]  # one token per data event
    [line] = access()
    assert (line["completion_tokens"], line["usage_estimated"]) == (8, True)
    metrics = tokens(await (await client.get("/metrics")).text())
    assert metrics == {"prompt": 7, "completion": 8}  # the estimate is counted too


async def test_a_stream_cut_short_counts_what_passed(gateway: Any, upstream: OpenAITextUpstream, access: Any) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False, die_after=3)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    raw = await post(client, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    assert b'"error"' in raw
    await finished.wait(1)
    assert seen.usage == [(usage(7, 3), True)]  # the role event, "one ", "two "
    [line] = access()
    assert line["usage_estimated"] is True and "error" in line


async def test_a_stream_answered_in_one_piece_counts_its_text(
    gateway: Any, upstream: OpenAITextUpstream, access: Any
) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False, json_for_stream=True)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    await post(client, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True})
    await finished.wait(1)
    assert seen.usage == [(usage(7, 7), True)]  # chunk dicts: ceil(27 characters / 4), as for the JSON answer


@pytest.mark.parametrize("stream", [False, True])
async def test_completions_without_usage_are_estimated(
    gateway: Any, upstream: OpenAITextUpstream, access: Any, stream: bool
) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "stream": stream}
    await post(client, "/v1/completions", body)
    await finished.wait(1)
    # a stream: six words and the finish event; a JSON answer: ceil(27 / 4)
    assert seen.usage == [(usage(1, 7), True)]
    [line] = access()
    assert (line["stream"], line["usage_estimated"]) == (stream, True)


async def test_embeddings_without_usage_are_estimated(gateway: Any, upstream: OpenAITextUpstream, access: Any) -> None:
    upstream.default = Reply(report_usage=False)
    seen, finished = Seen(), Finished()
    client = await start(gateway, upstream, seen, finished)
    await post(client, "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["hello world", "hi"]})
    await finished.wait(1)
    assert seen.usage == [({"prompt_tokens": 3 + 1, "total_tokens": 4}, True)]
    [line] = access()
    assert line["usage_estimated"] is True


async def test_the_official_client_gets_the_upstreams_stream_and_the_log_an_estimate(
    gateway: Any, upstream: OpenAITextUpstream, access: Any
) -> None:
    upstream.default = Reply(content=CONTENT, report_usage=False)
    finished = Finished()
    http = await start(gateway, upstream, finished)
    async with openai.AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="unused", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == CONTENT
    assert all(c.usage is None for c in chunks)  # the upstream sent none; the estimate is the gateway's own
    await finished.wait(1)
    [line] = access()
    assert (line["completion_tokens"], line["usage_estimated"]) == (8, True)


# Backends that yield chunk dicts ----------------------------------------------------------------


class Quiet(Backend):
    """A third-party backend that never sets ``ctx.usage``: it answers ``CONTENT`` word by word."""

    type_name = "quiet"

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        answer = chat_completion(completion_id(), 0, ctx.model or "", [message_choice(0, CONTENT, "stop")], None)
        if not ctx.stream:
            yield answer
            return
        for chunk in completion_to_chunks(answer, word_by_word=True):
            yield chunk


class QuietPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Callable[[str, type[Backend]], None]) -> None:
        register("quiet", Quiet)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_backend_without_usage_is_estimated_from_its_text(gateway: Any, access: Any, stream: bool) -> None:
    seen, finished = Seen(), Finished()
    config = {
        "backends": [{"name": "q", "type": "quiet", "models": ["quiet"]}],
        "models": [{"name": "quiet", "backend": "q"}],
    }
    client = await gateway(config, [QuietPlugin(), seen, finished])
    await post(client, "/v1/chat/completions", {"model": "quiet", "messages": MESSAGES, "stream": stream})
    await finished.wait(1)
    assert seen.usage == [(usage(7, 7), True)]  # stream or not, ceil(27 characters / 4)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_mock_and_recording_backends_keep_their_exact_usage(gateway: Any, access: Any, stream: bool) -> None:
    seen, finished = Seen(), Finished()
    body = {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "three words here"}], "stream": stream}
    client = await gateway(mock_config(), [seen, finished])
    await post(client, "/v1/chat/completions", body)
    recording = await gateway(recording_config(reply="a b c d e"), [RecordingPlugin(), seen, finished])
    await post(recording, "/v1/chat/completions", {**body, "model": "recorded-model"})
    await finished.wait(2)
    assert [(u["completion_tokens"], estimated) for u, estimated in seen.usage] == [(3, False), (5, False)]
    assert all("usage_estimated" not in line for line in access())
