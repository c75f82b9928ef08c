"""The fake Anthropic API (tests/upstreams/anthropic.py) checked with the official ``anthropic`` SDK:
what the backend's tests rely on is Anthropic's real protocol as the SDK reads it, not our guess."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest

from gateway.testing import ServerThread
from tests.upstreams.anthropic import API_KEY, AnthropicUpstream, Reply, text, tool_use

MESSAGES: list[anthropic.types.MessageParam] = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def fake() -> Iterator[AnthropicUpstream]:
    upstream = AnthropicUpstream()
    with ServerThread(upstream.app) as server:
        upstream.base_url = server.url
        yield upstream


@pytest.fixture
def client(fake: AnthropicUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(api_key=API_KEY, base_url=fake.base_url, max_retries=0, timeout=5) as c:
        yield c


MIXED = Reply(
    blocks=[
        text("Let me check both."),
        tool_use("toolu_01A", "get_weather", {"city": "Paris", "days": 3}),
        text("And the other one."),
        tool_use("toolu_01B", "get_time", {"zone": "Europe/Paris"}),
    ],
    stop_reason="tool_use",
    usage={"input_tokens": 30, "output_tokens": 40, "cache_read_input_tokens": 7},
)


def test_the_sdk_reads_a_reply(fake: AnthropicUpstream, client: anthropic.Anthropic) -> None:
    fake.reply(MIXED)
    message = client.messages.create(model="claude-sonnet-test", max_tokens=100, messages=MESSAGES)
    assert [b.type for b in message.content] == ["text", "tool_use", "text", "tool_use"]
    assert message.content[1].input == {"city": "Paris", "days": 3}  # type: ignore[union-attr]
    assert message.stop_reason == "tool_use"
    assert message.usage.cache_read_input_tokens == 7


def test_the_sdk_accumulates_a_stream_into_the_same_message(
    fake: AnthropicUpstream, client: anthropic.Anthropic
) -> None:
    fake.reply(MIXED)
    with client.messages.stream(model="claude-sonnet-test", max_tokens=100, messages=MESSAGES) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_message()
    assert events[0] == "message_start" and "ping" not in events  # the SDK swallows pings
    assert [b.type for b in final.content] == ["text", "tool_use", "text", "tool_use"]
    assert final.content[0].text == "Let me check both."  # type: ignore[union-attr]
    assert final.content[3].input == {"zone": "Europe/Paris"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 40


def test_the_sdk_raises_its_classes_for_the_fakes_errors(fake: AnthropicUpstream, client: anthropic.Anthropic) -> None:
    fake.reply(Reply(status=529, error_message="Overloaded"), Reply(status=429))
    with pytest.raises(anthropic.OverloadedError) as overloaded:
        client.messages.create(model="claude-sonnet-test", max_tokens=10, messages=MESSAGES)
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-sonnet-test", max_tokens=10, messages=MESSAGES)
    with pytest.raises(anthropic.BadRequestError, match="roles must alternate"):
        client.messages.create(
            model="claude-sonnet-test", max_tokens=10, messages=[*MESSAGES, {"role": "user", "content": "again"}]
        )


def test_the_sdk_raises_an_error_event_in_a_stream(fake: AnthropicUpstream, client: anthropic.Anthropic) -> None:
    fake.reply(Reply(error_event_after=4))
    with pytest.raises(anthropic.APIStatusError, match="overloaded_error"):
        with client.messages.stream(model="claude-sonnet-test", max_tokens=10, messages=MESSAGES) as stream:
            for _ in stream:
                pass


def test_the_sdk_pages_through_the_models(fake: AnthropicUpstream, client: anthropic.Anthropic) -> None:
    ids = [m.id for m in client.models.list(limit=2)]
    assert ids == fake.models
    assert [r.query.get("after_id") for r in fake.requests] == [None, "claude-haiku-test"]
