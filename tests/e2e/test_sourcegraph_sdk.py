"""Seed 000 end to end: the official ``openai`` SDK (sync and async, streaming or not) against the
gateway serving config/examples/sourcegraph.yaml, in front of a fake Sourcegraph instance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.app import create_app
from gateway.testing import ServerThread
from tests.upstreams.sourcegraph import MODELS, TOKEN, Reply, SourcegraphUpstream

EXAMPLE = Path(__file__).parents[2] / "config" / "examples" / "sourcegraph.yaml"
SONNET = MODELS[0]
MESSAGES: list[Any] = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a joke"}]


@pytest.fixture
def instance() -> Iterator[SourcegraphUpstream]:
    fake = SourcegraphUpstream()
    fake.stream = fake.system = False  # an instance of the API's first versions
    fake.default = Reply(content="Why do programmers prefer dark mode? Because light attracts bugs.")
    with ServerThread(fake.app) as server:
        fake.url = server.url  # type: ignore[attr-defined]
        yield fake


@pytest.fixture
def server(instance: SourcegraphUpstream, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerThread]:
    monkeypatch.setenv("SRC_ENDPOINT", instance.url)  # type: ignore[attr-defined]
    monkeypatch.setenv("SRC_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("SRC_DEFAULT_MODEL", SONNET)
    with ServerThread(create_app(EXAMPLE)) as s:
        yield s


@pytest.fixture
def client(server: ServerThread) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10) as c:
        yield c


def test_models_list_the_instances_models(client: OpenAI) -> None:
    models = client.models.list().data
    assert {m.id for m in models} == set(MODELS)
    assert {m.owned_by for m in models} == {"sourcegraph"}


def test_a_completion_from_an_instance_without_system_messages(client: OpenAI, instance: Any) -> None:
    completion = client.chat.completions.create(model=SONNET, messages=MESSAGES, max_tokens=8000)
    assert completion.model == SONNET
    assert completion.choices[0].message.content.startswith("Why do programmers")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    sent = instance.chat_requests()[-1].body
    assert sent["messages"] == [{"role": "user", "content": "Be brief.\n\nTell me a joke"}]


def test_a_stream_simulated_word_by_word_with_usage(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model="default", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    pieces, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == "Why do programmers prefer dark mode? Because light attracts bugs."
    assert len(pieces) == 10
    assert usage is not None and usage.completion_tokens > 0


def test_an_unknown_model_raises_not_found(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert caught.value.code == "model_not_found"


async def test_async_stream_through_an_instance_that_streams(server: ServerThread, instance: Any) -> None:
    instance.stream = True
    async with AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10) as oai:
        stream = await oai.chat.completions.create(model=SONNET, messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Why do programmers prefer dark mode? Because light attracts bugs."
    assert instance.chat_requests()[-1].body["stream"] is True
