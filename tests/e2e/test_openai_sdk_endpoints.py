"""The official ``openai`` SDK on ``/v1/completions`` and ``/v1/embeddings``: sync ``OpenAI`` against a
server thread, async ``AsyncOpenAI`` against the ``gateway`` fixture; typed results, streams, errors."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.testing import MOCK_MODEL, RecordingPlugin, ServerThread, make_app, recording_config, run_in_thread

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with run_in_thread() as s:
        yield s


@pytest.fixture
def client(server: ServerThread) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=TIMEOUT) as c:
        yield c


@pytest.fixture
async def async_client(gateway: Any) -> AsyncIterator[AsyncOpenAI]:
    http = await gateway()
    async with AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key="unused", max_retries=0, timeout=TIMEOUT) as oai:
        yield oai


# Completions ------------------------------------------------------------------------------------


def test_completion_is_typed_and_echoes_the_prompt(client: OpenAI) -> None:
    completion = client.completions.create(model=MOCK_MODEL, prompt="Say this is a test", max_tokens=3, n=2)
    assert isinstance(completion, openai.types.Completion)
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert completion.model == MOCK_MODEL
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "Say this is ", "length"),
        (1, "Say this is ", "length"),
    ]
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (5, 6)


def test_completion_stream_with_usage(client: OpenAI) -> None:
    stream = client.completions.create(
        model=MOCK_MODEL, prompt="stream these four words", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(isinstance(c, openai.types.Completion) for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "stream these four words"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


async def test_async_completion_and_stream(async_client: AsyncOpenAI) -> None:
    completion = await async_client.completions.create(model=MOCK_MODEL, prompt=["first", "second"])
    assert [c.text for c in completion.choices] == ["first", "second"]
    stream = await async_client.completions.create(model=MOCK_MODEL, prompt="a b c", echo=True, stream=True)
    assert "".join([c.choices[0].text async for c in stream]) == "a b ca b c"


# Embeddings -------------------------------------------------------------------------------------


def test_embeddings_float_and_the_sdks_default_base64_give_the_same_vector(client: OpenAI) -> None:
    as_float = client.embeddings.create(model=MOCK_MODEL, input=["hello", "world"], encoding_format="float")
    assert isinstance(as_float, openai.types.CreateEmbeddingResponse)
    assert as_float.object == "list" and as_float.model == MOCK_MODEL
    assert [(d.object, d.index, len(d.embedding)) for d in as_float.data] == [("embedding", 0, 8), ("embedding", 1, 8)]
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == 4
    assert math.isclose(math.fsum(x * x for x in as_float.data[0].embedding), 1.0, rel_tol=1e-6)

    # no encoding_format: the SDK asks for base64 and decodes it
    default = client.embeddings.create(model=MOCK_MODEL, input=["hello", "world"])
    assert [d.embedding for d in default.data] == [d.embedding for d in as_float.data]
    explicit = client.embeddings.create(model=MOCK_MODEL, input="hello", encoding_format="base64")
    assert isinstance(explicit.data[0].embedding, str)  # asked for explicitly: the SDK leaves it encoded


async def test_async_embeddings_with_dimensions_and_tokens(async_client: AsyncOpenAI) -> None:
    result = await async_client.embeddings.create(model=MOCK_MODEL, input=[[1, 2, 3]], dimensions=32)
    assert len(result.data[0].embedding) == 32
    assert result.usage.prompt_tokens == 3


# Errors -----------------------------------------------------------------------------------------


def test_errors_raise_the_sdks_classes(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=MOCK_MODEL, input="")
    assert bad.value.param == "input" and bad.value.code == "empty_string"
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="nope", prompt="x")
    assert missing.value.code == "model_not_found"


def test_a_backend_without_the_endpoint_is_a_not_found_error() -> None:
    app = make_app(recording_config(), plugins=[RecordingPlugin()])
    with ServerThread(app) as s, OpenAI(base_url=s.url + "/v1", api_key="k", max_retries=0, timeout=TIMEOUT) as c:
        with pytest.raises(openai.NotFoundError) as exc_info:
            c.completions.create(model="recorded-model", prompt="x")
        assert exc_info.value.code == "unsupported_endpoint"
        assert "v1/chat/completions" in exc_info.value.message
        with pytest.raises(openai.NotFoundError):
            c.embeddings.create(model="recorded-model", input="x")
