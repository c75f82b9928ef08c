"""The sourcegraph backend against a fake Sourcegraph instance on 127.0.0.1 (tests/upstreams/sourcegraph.py)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import hookimpl
from gateway.config import ConfigError
from gateway.context import RequestContext
from gateway.testing import make_app
from gateway.upstream import errors as gateway_upstream
from tests.upstreams import UsageRecorder
from tests.upstreams.sourcegraph import MODELS, TOKEN, Reply, SourcegraphUpstream

SONNET, HAIKU, GPT4O = MODELS
MESSAGES = [{"role": "user", "content": "Hi"}]
EXAMPLE = Path(__file__).parents[3] / "config" / "examples" / "sourcegraph.yaml"


@pytest.fixture
async def instance(aiohttp_server: Any) -> SourcegraphUpstream:
    fake = SourcegraphUpstream()
    server = await aiohttp_server(fake.app)
    fake.url = str(server.make_url("")).rstrip("/")  # type: ignore[attr-defined]
    return fake


def sg_config(url: str, **options: Any) -> dict[str, Any]:
    backend = {"name": "sg", "type": "sourcegraph", "endpoint": url, "access_token": TOKEN, "timeout": 0.5}
    return {"backends": [{**backend, **options}]}


async def start(gateway: Any, instance: SourcegraphUpstream, plugins: Any = (), **options: Any) -> TestClient:
    return await gateway(sg_config(instance.url, **options), plugins)  # type: ignore[attr-defined]


def chat(model: str = SONNET, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": MESSAGES, "stream": stream, **extra}


def events(raw: bytes) -> list[Any]:
    """The data payloads of an SSE body, parsed (``[DONE]`` as the string)."""
    out = []
    for event in raw.split(b"\n\n"):
        if event:
            data = event.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def text_of(chunks: list[Any], index: int = 0) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in chunks
        if isinstance(c, dict) and c.get("choices") and c["choices"][0]["index"] == index
    )


class Usage:
    """Records ``ctx.usage`` of every finished request."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.seen.append(ctx.usage)


# Models ----------------------------------------------------------------------------------------


async def test_models_are_the_instances_owned_by_sourcegraph_plus_aliases(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, aliases={"claude": SONNET, "ghost": "anthropic::1::gone"})
    resp = await client.get("/v1/models")
    assert resp.status == 200
    listed = {m["id"]: m for m in (await resp.json())["data"]}
    assert set(listed) == {*MODELS, "claude"}  # an alias of a model the instance lacks is not listed
    assert {m["owned_by"] for m in listed.values()} == {"sourcegraph"}
    assert instance.requests[0].headers["Authorization"] == f"token {TOKEN}"
    assert (await (await client.get("/v1/models/claude")).json())["id"] == "claude"


async def test_the_model_list_is_cached_for_its_ttl(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance)
    for _ in range(3):
        assert (await client.get("/v1/models")).status == 200
    assert len(instance.requests) == 1
    client = await start(gateway, instance, models_ttl=0)
    for _ in range(2):
        assert (await client.get("/v1/models")).status == 200
    assert len(instance.requests) == 3


async def test_an_unlisted_model_is_404_model_not_found_without_a_chat_call(gateway: Any, instance: Any) -> None:
    instance.modelconfig_status = 404  # an instance before 5.6: no default model to fall back on
    client = await start(gateway, instance)
    resp = await client.post("/v1/chat/completions", json=chat("anthropic::2023-06-01::claude-9"))
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found" and "claude-9" in error["message"]
    assert instance.chat_requests() == []
    resp = await client.post("/v1/chat/completions", json=chat("default"))
    assert resp.status == 404


async def test_default_is_the_instances_default_chat_model_from_its_model_configuration(
    gateway: Any, instance: Any
) -> None:
    """``/.api/modelconfig/supported-models.json`` names the default chat model: the model ``default``
    (the gateway's config naming no default_model) is answered by it."""
    instance.default_chat = HAIKU
    client = await start(gateway, instance)
    for stream in (False, True):
        resp = await client.post("/v1/chat/completions", json=chat("default", stream=stream))
        assert resp.status == 200, await resp.text()
        assert instance.chat_requests()[-1].body["model"] == HAIKU
    assert instance.modelconfig_requests == 1  # read with the model list, cached with it
    configured = await gateway({**sg_config(instance.url), "default_model": SONNET})  # type: ignore[attr-defined]
    await configured.post("/v1/chat/completions", json=chat("default"))
    assert instance.chat_requests()[-1].body["model"] == SONNET  # the config's default wins


async def test_the_model_configuration_lists_the_chat_models_when_the_llm_api_cannot(
    gateway: Any, instance: Any
) -> None:
    instance.models_status = 404
    client = await start(gateway, instance)
    listed = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert listed == list(MODELS)  # its chat models, not the autocomplete one
    instance.modelconfig_status = 404
    client = await start(gateway, instance)
    assert (await (await client.get("/v1/models")).json())["data"] == []  # neither lists


async def test_the_instances_model_not_available_answer_is_404_too(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance)
    assert (await client.get("/v1/models")).status == 200  # cached while the instance drops a model
    instance.models.remove(HAIKU)
    resp = await client.post("/v1/chat/completions", json=chat(HAIKU))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"
    assert len(instance.chat_requests()) == 1  # the 500 wrapping "model is not available" slipped through


async def test_an_unknown_name_refetches_a_list_older_than_models_retry(
    gateway: Any, instance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start(gateway, instance)
    instance.models.remove(GPT4O)
    assert (await client.get("/v1/models")).status == 200
    instance.models.append(GPT4O)
    assert (await client.post("/v1/chat/completions", json=chat(GPT4O))).status == 404  # the list is too fresh
    monkeypatch.setattr(gateway_upstream, "MODELS_RETRY", 0.0)
    resp = await client.post("/v1/chat/completions", json=chat(GPT4O))
    assert resp.status == 200, await resp.text()
    assert len([r for r in instance.requests if r.path == "/.api/llm/models"]) == 2


async def test_an_instance_without_a_model_list_leaves_the_check_to_the_instance(gateway: Any, instance: Any) -> None:
    instance.models_status = 404
    client = await start(gateway, instance)
    assert (await client.get("/v1/models")).status == 200  # this backend's listing is skipped
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    resp = await client.post("/v1/chat/completions", json=chat("claude-2"))
    assert resp.status == 404  # the instance's plain-text "not in the correct format" 400
    assert (await resp.json())["error"]["code"] == "model_not_found"


async def test_configured_models_are_served_without_listing(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, models=[SONNET])
    assert [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]] == [SONNET]
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    assert instance.chat_requests() and all(r.path != "/.api/llm/models" for r in instance.requests)


# Chat ------------------------------------------------------------------------------------------


async def test_chat_answers_an_openai_completion(gateway: Any, instance: Any) -> None:
    usage = Usage()
    client = await start(gateway, instance, plugins=[usage])
    resp = await client.post("/v1/chat/completions", json=chat(temperature=0.2, top_p=0.9, custom="kept"))
    assert resp.status == 200
    body = await resp.json()
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["model"] == SONNET
    assert body["created"] == 1727692163  # the instance's milliseconds, as seconds
    choice = body["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Hello from Sourcegraph", "refusal": None}
    assert choice["finish_reason"] == "stop"  # end_turn
    assert body["usage"]["completion_tokens"] > 0  # the instance reported zeros: estimated
    assert usage.seen == [body["usage"]]
    sent = instance.chat_requests()[0].body
    assert sent["model"] == SONNET and sent["messages"] == MESSAGES
    assert sent["max_tokens"] == 4000  # Sourcegraph's own default would be 16 tokens
    assert sent["temperature"] == 0.2 and sent["top_p"] == 0.9 and sent["custom"] == "kept"
    assert "stream" not in sent and "n" not in sent


async def test_reported_usage_and_max_tokens_pass_through(gateway: Any, instance: Any) -> None:
    instance.default = Reply(usage=(12, 5), finish_reason="max_tokens")
    client = await start(gateway, instance, default_max_tokens=100)
    body = await (await client.post("/v1/chat/completions", json=chat(max_completion_tokens=7))).json()
    assert body["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    assert body["choices"][0]["finish_reason"] == "length"
    sent = instance.chat_requests()[0].body
    assert sent["max_tokens"] == 7 and "max_completion_tokens" not in sent
    await client.post("/v1/chat/completions", json=chat())
    assert instance.chat_requests()[1].body["max_tokens"] == 100


async def test_an_alias_asks_for_the_full_id_and_answers_with_the_alias(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, aliases={"claude": SONNET})
    resp = await client.post("/v1/chat/completions", json=chat("claude", stream=True))
    chunks = events(await resp.read())
    assert {c["model"] for c in chunks if isinstance(c, dict)} == {"claude"}
    assert instance.chat_requests()[0].body["model"] == SONNET


async def test_a_stream_is_the_instances_stream_as_openai_chunks(gateway: Any, instance: Any) -> None:
    instance.default = Reply(content="one two three", usage=(9, 3))
    client = await start(gateway, instance)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
    chunks = events(await resp.read())
    assert chunks[-1] == "[DONE]"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert text_of(chunks) == "one two three"
    finishes = [c["choices"][0]["finish_reason"] for c in chunks[:-2]]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["total_tokens"] == 12
    sent = instance.chat_requests()[0].body
    assert sent["stream"] is True and "stream_options" not in sent  # refused by early instances


async def test_an_instance_answering_a_stream_in_one_piece_is_streamed_word_by_word(
    gateway: Any, instance: Any
) -> None:
    instance.default = Reply(content="a b c", json_for_stream=True)
    client = await start(gateway, instance)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert text_of(chunks) == "a b c" and len(chunks) == 5  # 3 words, the finish, [DONE]


async def test_without_stream_support_the_reply_is_streamed_from_the_complete_answer(
    gateway: Any, instance: Any
) -> None:
    instance.stream = False
    instance.default = Reply(content="simulated word by word")
    client = await start(gateway, instance)
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=chat(stream=True))
        chunks = events(await resp.read())
        assert text_of(chunks) == "simulated word by word" and chunks[-1] == "[DONE]"
        assert len([c for c in chunks if isinstance(c, dict) and c["choices"][0]["delta"].get("content")]) == 4
    sent = [r.body.get("stream") for r in instance.chat_requests()]
    assert sent == [True, None, None]  # refused once, then remembered


async def test_concurrent_first_requests_all_learn_the_refusal(gateway: Any, instance: Any) -> None:
    instance.stream = instance.system = False
    client = await start(gateway, instance)
    payload = {**chat(stream=True), "messages": [{"role": "system", "content": "S"}, *MESSAGES]}
    responses = await asyncio.gather(*(client.post("/v1/chat/completions", json=payload) for _ in range(4)))
    for resp in responses:
        assert text_of(events(await resp.read())) == "Hello from Sourcegraph"


async def test_stream_false_in_config_never_asks_for_a_stream(gateway: Any, instance: Any) -> None:
    instance.stream = False
    client = await start(gateway, instance, stream=False)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert text_of(chunks) == "Hello from Sourcegraph"
    assert len(instance.chat_requests()) == 1 and "stream" not in instance.chat_requests()[0].body


async def test_stream_true_in_config_passes_the_refusal_on(gateway: Any, instance: Any) -> None:
    instance.stream = False
    client = await start(gateway, instance, stream=True)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert resp.status == 400
    assert (await resp.json())["error"]["message"] == "stream is not supported"


async def test_system_prompts_are_folded_into_the_first_user_message_when_refused(gateway: Any, instance: Any) -> None:
    instance.system = False
    client = await start(gateway, instance)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Use French."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {"role": "assistant", "content": "Salut"},
        {"role": "user", "content": "Again"},
    ]
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json={"model": SONNET, "messages": messages})
        assert resp.status == 200
    first, retried, second = (r.body["messages"] for r in instance.chat_requests())
    assert [m["role"] for m in first] == ["system", "system", "user", "assistant", "user"]
    assert retried == second
    assert retried[0] == {
        "role": "user",
        "content": [{"type": "text", "text": "Be brief.\n\nUse French."}, {"type": "text", "text": "Hi"}],
    }
    assert [m["role"] for m in retried] == ["user", "assistant", "user"]


async def test_n_is_emulated_with_one_call_per_choice_when_refused(gateway: Any, instance: Any) -> None:
    instance.n = False
    client = await start(gateway, instance)
    body = await (await client.post("/v1/chat/completions", json=chat(n=3))).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert [r.body.get("n") for r in instance.chat_requests()] == [3, None, None, None]
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(n=2, stream=True))).read())
    assert text_of(chunks, 0) == text_of(chunks, 1) == "Hello from Sourcegraph"
    assert len(instance.chat_requests()) == 6


async def test_n_beyond_max_n_cannot_be_emulated_and_is_a_clear_400(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, n=False, max_n=2)
    resp = await client.post("/v1/chat/completions", json=chat(n=3))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["param"] == "n" and "max_n" in error["message"]
    assert instance.chat_requests() == []


async def test_n_is_sent_to_an_instance_that_supports_it(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(n=2, stream=True))).read())
    assert text_of(chunks, 1) == "Hello from Sourcegraph"
    assert [r.body["n"] for r in instance.chat_requests()] == [2]


# Failures --------------------------------------------------------------------------------------


async def test_a_plain_text_400_keeps_its_status_and_message(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance)
    resp = await client.post("/v1/chat/completions", json=chat(response_format={"type": "json_object"}))
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["message"] == "response_format is not supported" and error["type"] == "invalid_request_error"


async def test_a_refused_token_is_a_502_that_never_shows_the_token(gateway: Any, instance: Any) -> None:
    instance.token = "sgp_another"
    client = await start(gateway, instance)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502
    text = await resp.text()
    assert "refused the gateway's credentials for it (HTTP 401)" in text and "'sg'" in text and TOKEN not in text
    assert (await resp.json())["error"]["code"] == "upstream_auth_error"


@pytest.mark.parametrize(
    ("reply", "status", "code", "said"),
    [
        (Reply(status=500, error="context deadline exceeded"), 502, "bad_gateway", "context deadline exceeded"),
        (Reply(status=503, error={"type": "error", "message": "maintenance"}), 502, "bad_gateway", "maintenance"),
        (Reply(status=429, error="rate limited", headers={"Retry-After": "7"}), 429, "rate_limit_exceeded", "rate"),
    ],
)
async def test_instance_errors_are_mapped(
    gateway: Any, instance: Any, reply: Reply, status: int, code: str, said: str
) -> None:
    instance.default = reply
    client = await start(gateway, instance)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code and "'sg'" in error["message"] and said in error["message"]
    if status == 429:
        assert resp.headers["Retry-After"] == "7"


async def test_a_hanging_instance_is_a_504(gateway: Any, instance: Any) -> None:
    instance.default = Reply(hang=True)
    client = await start(gateway, instance, timeout=0.2)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 504
    assert (await resp.json())["error"]["code"] == "upstream_timeout"


async def test_a_stream_that_goes_silent_ends_with_a_timeout_event(gateway: Any, instance: Any) -> None:
    instance.default = Reply(content="a b c d", hang_after=2)
    client = await start(gateway, instance, timeout=0.2)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert chunks[-1]["error"]["code"] == "upstream_timeout" and "[DONE]" not in chunks


@pytest.mark.parametrize(
    "reply", [Reply(content="a b c d", die_after=2), Reply(content="a b c d", done=False, finish_reason="")]
)
async def test_a_stream_that_dies_ends_with_an_error_event(gateway: Any, instance: Any, reply: Reply) -> None:
    instance.default = reply
    client = await start(gateway, instance)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert chunks[0]["choices"][0]["delta"]["content"] == "a "
    assert chunks[-1]["error"]["code"] == "bad_gateway" and "[DONE]" not in chunks


async def test_an_error_event_mid_stream_is_the_final_event(gateway: Any, instance: Any) -> None:
    instance.default = Reply(content="a b c", error_event_after=1, error_message="overloaded_error")
    client = await start(gateway, instance)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert "overloaded_error" in chunks[-1]["error"]["message"] and "[DONE]" not in chunks


async def test_connection_refused_is_a_502(gateway: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = await gateway(sg_config(f"http://127.0.0.1:{port}"))
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502
    assert "unreachable" in (await resp.json())["error"]["message"]
    assert (await client.get("/v1/models")).status == 200  # a failing backend does not break the list


# Legacy mode -----------------------------------------------------------------------------------


async def test_legacy_mode_speaks_the_completions_stream_dialect(gateway: Any, instance: Any) -> None:
    instance.default = Reply(content="one two three", finish_reason="stop_sequence")
    client = await start(gateway, instance, legacy=True)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "user", "content": "there"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Count"},
    ]
    payload = {"model": SONNET, "messages": messages, "max_tokens": 50, "temperature": 0.5, "stop": "END"}
    chunks = events(await (await client.post("/v1/chat/completions", json={**payload, "stream": True})).read())
    assert [text_of([c]) for c in chunks[:3]] == ["one ", "two ", "three"]  # deltas of the whole text so far
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[3]["choices"][0]["finish_reason"] == "stop" and chunks[-1] == "[DONE]"
    sent = instance.chat_requests("/.api/completions/stream")[0]
    assert sent.query["api-version"] == "1"
    assert sent.body == {
        "messages": [
            {"speaker": "human", "text": "Be brief.\n\nHi\n\nthere"},
            {"speaker": "assistant", "text": "Hello"},
            {"speaker": "human", "text": "Count"},
        ],
        "maxTokensToSample": 50,
        "temperature": 0.5,
        "stopSequences": ["END"],
        "model": SONNET,
        "stream": True,
    }
    body = await (await client.post("/v1/chat/completions", json=payload)).json()
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["usage"]["completion_tokens"] > 0


async def test_legacy_incremental_api_versions_and_n(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, legacy=True, legacy_api_version=2, legacy_trailing_assistant=True)
    body = await (await client.post("/v1/chat/completions", json=chat(n=2))).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["Hello from Sourcegraph"] * 2
    sent = instance.chat_requests("/.api/completions/stream")
    assert len(sent) == 2 and sent[0].query["api-version"] == "2"
    assert sent[0].body["messages"][-1] == {"speaker": "assistant"}


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(error_event_after=0, error_message="upstream provider failed"), "bad_gateway"),
        (Reply(error_event_after=0, error_message="rate limit exceeded for user"), "rate_limit_exceeded"),
        (Reply(done=False, finish_reason=""), "bad_gateway"),  # no stop reason, no done event
    ],
)
async def test_legacy_errors_before_any_output(gateway: Any, instance: Any, reply: Reply, code: str) -> None:
    instance.default = reply
    client = await start(gateway, instance, legacy=True)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert (await resp.json())["error"]["code"] == code


@pytest.mark.parametrize("stream", [False, True])
async def test_a_legacy_stream_that_ends_after_its_stop_reason_without_done_is_complete(
    gateway: Any, instance: Any, stream: bool
) -> None:
    instance.default = Reply(content="a b c", done=False)
    client = await start(gateway, instance, legacy=True)
    resp = await client.post("/v1/chat/completions", json=chat(stream=stream))
    if stream:
        chunks = events(await resp.read())
        assert chunks[-1] == "[DONE]" and text_of(chunks) == "a b c"
    else:
        assert (await resp.json())["choices"][0]["message"]["content"] == "a b c"


async def test_a_chat_api_stream_that_ends_after_its_finish_without_done_is_complete(
    gateway: Any, instance: Any
) -> None:
    instance.default = Reply(content="a b c", done=False)
    client = await start(gateway, instance)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert chunks[-1] == "[DONE]" and text_of(chunks) == "a b c"


async def test_legacy_errors_mid_stream_and_unknown_models(gateway: Any, instance: Any) -> None:
    instance.models_status = 404  # an older instance: no /.api/llm/models
    instance.default = Reply(content="a b c", error_event_after=2, error_message="provider overloaded")
    client = await start(gateway, instance, legacy=True)
    chunks = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert text_of(chunks) == "a b " and "provider overloaded" in chunks[-1]["error"]["message"]
    resp = await client.post("/v1/chat/completions", json=chat("anthropic/claude-2"))
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "model_not_found"


async def test_legacy_mode_refuses_what_it_cannot_carry(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance, legacy=True)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    for extra, param in (
        ({"messages": [{"role": "user", "content": [image]}]}, "messages[0].content"),
        ({"tools": tools}, "tools"),
    ):
        resp = await client.post("/v1/chat/completions", json={**chat(), **extra})
        assert resp.status == 400 and (await resp.json())["error"]["param"] == param
    assert instance.chat_requests("/.api/completions/stream") == []


# Config and /info ------------------------------------------------------------------------------


async def test_the_token_never_shows_on_info(gateway: Any, instance: Any) -> None:
    client = await start(gateway, instance)
    text = await (await client.get("/info")).text()
    assert TOKEN not in text and '"type":"sourcegraph"' in text.replace(" ", "")


def test_a_bad_endpoint_fails_at_start_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"backends\[0\]\.endpoint: Value error, must start with http"):
        make_app(sg_config("sourcegraph.example.com"))
    with pytest.raises(
        ConfigError, match=r"backends\[0\]\.stream: Value error, must be true, false or auto \(got 'sometimes'\)$"
    ):
        make_app(sg_config("https://sourcegraph.example.com", stream="sometimes"))


async def test_the_example_config_serves_seed_000_from_the_environment(
    aiohttp_client: Any, instance: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SRC_ENDPOINT", instance.url)
    monkeypatch.setenv("SRC_ACCESS_TOKEN", TOKEN)
    monkeypatch.delenv("SRC_DEFAULT_MODEL", raising=False)
    client = await aiohttp_client(make_app(EXAMPLE))
    models = (await (await client.get("/v1/models")).json())["data"]
    assert {m["id"] for m in models} == set(MODELS) and {m["owned_by"] for m in models} == {"sourcegraph"}
    resp = await client.post("/v1/chat/completions", json=chat(max_tokens=8000, temperature=0.7))
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hello from Sourcegraph"
    resp = await client.post("/v1/chat/completions", json=chat(stream=True), headers={"Origin": "http://x.test"})
    assert resp.headers["Access-Control-Allow-Origin"] in ("*", "http://x.test")
    assert text_of(events(await resp.read())) == "Hello from Sourcegraph"


@pytest.mark.parametrize("stream", [False, True])
async def test_usage_counted_by_the_gateway_is_said_to_be_estimated(gateway: Any, instance: Any, stream: bool) -> None:
    """Zeros from the instance (as many report), its figures, the legacy API (which reports none)."""
    recorder = UsageRecorder()
    client = await start(gateway, instance, [recorder])
    await client.post("/v1/chat/completions", json=chat(stream=stream))
    instance.default = Reply(usage=(9, 4))
    await client.post("/v1/chat/completions", json=chat(stream=stream))
    legacy = await start(gateway, instance, [recorder], legacy=True)
    await legacy.post("/v1/chat/completions", json=chat(stream=stream))
    assert [estimated for _, estimated in recorder.seen] == [True, False, True]
    assert recorder.seen[1][0] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
