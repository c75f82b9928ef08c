"""``/v1/messages`` over the ``anthropic`` backend: native pass-through. The official ``anthropic``
SDK -> the gateway -> a fake Anthropic API (tests/upstreams/anthropic.py), checking that the request
reaching the upstream is the client's own (body and version headers) and that the answer and the
stream come back as Anthropic's own bytes, their usage counted."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import pytest

from gateway import hookimpl
from gateway.context import RequestContext
from gateway.log import setup_logging
from tests.upstreams.anthropic import API_KEY, AnthropicUpstream, Reply, frame, stream_events, text, tool_use

MODEL = "claude"  # the gateway's name; the upstream's is claude-sonnet-test
UPSTREAM_MODEL = "claude-sonnet-test"
CONFIGURED_VERSION = "2023-01-01"  # the backend's own anthropic-version: the client's wins
TOOL: Any = {"name": "get_weather", "description": "Weather", "input_schema": {"type": "object", "properties": {}}}
REQUEST: Any = {
    "model": MODEL,
    "max_tokens": 64,
    "system": [{"type": "text", "text": "Be terse.", "cache_control": {"type": "ephemeral"}}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}],
    "metadata": {"user_id": "u-1"},
    "stop_sequences": ["END"],
    "tools": [TOOL],
    "tool_choice": {"type": "auto"},
}
TOOL_REPLY = Reply(
    blocks=[text("Let me check."), tool_use("toolu_1", "get_weather", {"city": "Paris", "days": 3})],
    stop_reason="tool_use",
    usage={"input_tokens": 21, "output_tokens": 9},
)

Start = Callable[..., Awaitable[str]]


def config(base_url: str) -> dict[str, Any]:
    backend = {"name": "anthropic", "type": "anthropic", "base_url": base_url, "api_key": API_KEY}
    return {
        "backends": [{**backend, "version": CONFIGURED_VERSION, "models": [UPSTREAM_MODEL]}],
        "models": [{"name": MODEL, "backend": "anthropic", "model": UPSTREAM_MODEL}],
    }


@pytest.fixture
async def upstream(aiohttp_server: Any) -> AnthropicUpstream:
    fake = AnthropicUpstream()
    server = await aiohttp_server(fake.app)
    fake.base_url = str(server.make_url("")).rstrip("/")
    return fake


@pytest.fixture
async def start(gateway: Any, upstream: AnthropicUpstream) -> Start:
    """``url = await start(plugins=(), sections=None)``: the gateway in front of the fake upstream
    (``sections``: the config's ``plugins`` section)."""

    async def run(plugins: Any = (), sections: Any = None) -> str:
        client = await gateway({**config(upstream.base_url), "plugins": sections or {}}, plugins)
        return str(client.make_url("")).rstrip("/")

    return run


@pytest.fixture
async def claude(start: Start) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(base_url=await start(), api_key="unused", max_retries=0, timeout=10) as c:
        yield c


async def test_the_request_upstream_is_the_clients_own(upstream: AnthropicUpstream, claude: Any) -> None:
    upstream.reply(TOOL_REPLY)
    headers = {"anthropic-version": "2024-02-02", "anthropic-beta": "tools-2099-01-01"}
    message = await claude.messages.create(**REQUEST, extra_headers=headers)
    sent = upstream.last
    assert sent.body == {**REQUEST, "model": UPSTREAM_MODEL}  # cache_control, metadata, stop_sequences as sent
    assert sent.headers["anthropic-version"] == "2024-02-02"  # the client's, not the backend's
    assert sent.headers["anthropic-beta"] == "tools-2099-01-01"
    assert sent.headers["x-api-key"] == API_KEY  # the backend's key, not the client's
    assert message.id == "msg_01FakeUpstream"  # Anthropic's own answer
    assert message.model == UPSTREAM_MODEL
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[1].input == {"city": "Paris", "days": 3}
    assert message.stop_reason == "tool_use"
    assert message.usage.input_tokens == 21 and message.usage.output_tokens == 9


async def test_the_configured_version_when_the_client_sends_none(upstream: AnthropicUpstream, start: Start) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{await start()}/v1/messages", json=REQUEST) as response:
            assert response.status == 200
            assert (await response.json())["id"] == "msg_01FakeUpstream"
    assert upstream.last.headers["anthropic-version"] == CONFIGURED_VERSION
    assert "anthropic-beta" not in upstream.last.headers


async def test_the_stream_is_anthropics_own_bytes(upstream: AnthropicUpstream, start: Start) -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    upstream.reply(TOOL_REPLY)
    url = await start()
    async with aiohttp.ClientSession() as http:
        headers = {"anthropic-version": "2023-06-01"}
        async with http.post(f"{url}/v1/messages", json={**REQUEST, "stream": True}, headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "text/event-stream"
            raw = await response.read()
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()
    assert upstream.last.body == {**REQUEST, "model": UPSTREAM_MODEL, "stream": True}
    assert raw == b"".join(frame(e) for e in stream_events(TOOL_REPLY, UPSTREAM_MODEL))
    lines = [json.loads(x) for x in buffer.getvalue().splitlines()]
    [line] = [x for x in lines if x["event"] == "request" and x["path"] == "/v1/messages"]
    assert line["backend"] == "anthropic" and line["status"] == 200
    assert (line["prompt_tokens"], line["completion_tokens"]) == (21, 9)  # from message_start, message_delta
    assert 'gateway_requests_total{backend="anthropic",endpoint="messages"' in metrics
    assert 'gateway_tokens_total{backend="anthropic",key="",model="claude",type="completion"} 9.0' in metrics


async def test_the_sdk_stream_helpers(upstream: AnthropicUpstream, claude: Any) -> None:
    upstream.reply(Reply(blocks=[text("Hello native world")]))
    async with claude.messages.stream(**REQUEST) as stream:
        pieces = [piece async for piece in stream.text_stream]
        final = await stream.get_final_message()
    assert "".join(pieces) == "Hello native world" and len(pieces) == 3
    assert final.id == "msg_01FakeUpstream" and final.stop_reason == "end_turn"


async def test_a_stream_request_answered_in_one_piece_still_streams(upstream: AnthropicUpstream, claude: Any) -> None:
    upstream.reply(Reply(blocks=[text("All at once")], json_for_stream=True))
    async with claude.messages.stream(**REQUEST) as stream:
        final = await stream.get_final_message()
    assert final.content[0].text == "All at once" and final.usage.output_tokens == 5


async def test_upstream_errors_in_anthropics_shape(upstream: AnthropicUpstream, claude: Any) -> None:
    upstream.reply(Reply(status=429, error_message="slow down", headers={"retry-after": "7"}))
    with pytest.raises(anthropic.RateLimitError) as caught:
        await claude.messages.create(**REQUEST)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
    upstream.reply(Reply(error_event_after=4, error_event_type="overloaded_error", error_message="busy"))
    with pytest.raises(anthropic.APIStatusError) as failed:
        async with claude.messages.stream(**REQUEST) as stream:
            async for _ in stream:
                pass
    assert "busy" in str(failed.value)


class Rewrites:
    """A plugin that edits the (chat-form) request: its edit must reach the upstream."""

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        if ctx.body is not None:
            ctx.body["messages"].insert(0, {"role": "system", "content": "Policy first."})


class NeedsChat:
    """A plugin that must see the answer in the chat form."""

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        ctx.translate = True


@pytest.mark.parametrize("plugin", [Rewrites(), NeedsChat()])
async def test_a_plugin_that_changes_the_request_gets_the_translated_path(
    upstream: AnthropicUpstream, start: Start, plugin: Any
) -> None:
    url = await start([plugin])
    async with anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=10) as claude:
        message = await claude.messages.create(**REQUEST)
    assert message.id != "msg_01FakeUpstream"  # the gateway's own, translated back from chat
    assert message.model == MODEL
    sent = upstream.last.body
    assert "cache_control" not in json.dumps(sent)  # translated from the chat form
    if isinstance(plugin, Rewrites):
        assert sent["system"].startswith("Policy first.")


async def test_a_stop_sequence_on_the_translated_path(upstream: AnthropicUpstream, start: Start) -> None:
    url = await start([NeedsChat()])
    upstream.reply(Reply(blocks=[text("one two")], stop_reason="stop_sequence", stop_sequence="END"))
    async with anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=10) as claude:
        message = await claude.messages.create(**REQUEST)
        assert message.id != "msg_01FakeUpstream"  # through the chat form and back
        assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
        upstream.reply(Reply(blocks=[text("one two")], stop_reason="stop_sequence", stop_sequence="END"))
        async with claude.messages.stream(**REQUEST) as stream:
            final = await stream.get_final_message()
    assert (final.stop_reason, final.stop_sequence) == ("stop_sequence", "END")
    assert upstream.last.body["stop_sequences"] == ["END"]


async def test_a_native_stream_that_ends_after_message_delta_is_complete(
    upstream: AnthropicUpstream, claude: Any
) -> None:
    """Ended cleanly after its stop reason without message_stop: the client gets the message_stop
    itself; a stream cut before the stop reason stays an error."""
    upstream.reply(Reply(blocks=[text("one two")], message_stop=False))
    async with claude.messages.stream(**REQUEST) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn" and final.content[0].text == "one two"
    upstream.reply(Reply(blocks=[text("one two three")], end_after=4))
    with pytest.raises(anthropic.APIError):
        async with claude.messages.stream(**REQUEST) as stream:
            await stream.get_final_message()


@pytest.mark.parametrize("stream", [False, True])
async def test_a_transforms_response_filter_applies_on_the_translated_path(
    upstream: AnthropicUpstream, start: Start, stream: bool
) -> None:
    rules = {"transforms": {"rules": [{"response_filters": [{"pattern": r"\d{3}-\d{4}", "replacement": "[PHONE]"}]}]}}
    url = await start(sections=rules)
    upstream.reply(Reply(blocks=[text("Call 555-0100 now")]))
    async with anthropic.AsyncAnthropic(base_url=url, api_key="unused", max_retries=0, timeout=10) as claude:
        if stream:
            async with claude.messages.stream(**REQUEST) as events:
                message = await events.get_final_message()
        else:
            message = await claude.messages.create(**REQUEST)
    assert message.content[0].text == "Call [PHONE] now"  # type: ignore[union-attr]
