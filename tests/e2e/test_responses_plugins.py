"""``/v1/responses`` through the built-in plugins, with the official ``openai`` SDK: API keys (401,
403, responses kept per key name), rate limits (429), a plugin's own answer, and a stream filter that
fails mid-stream (an ``error`` event, not ``response.failed``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import OpenAI

from gateway import hookimpl
from gateway.endpoints import RESPONSES
from gateway.formats.chat import chat_completion, message_choice
from gateway.testing import ServerThread, make_app

ADMIN, LIMITED = "sk-gw-admin-0123456789", "sk-gw-limited-0123456789"
AUTH: Any = {
    "backends": [{"name": "mock", "type": "mock", "models": ["mock-gpt-model", "mock-gpt-large"]}],
    "models": [{"name": "mock-gpt-model", "backend": "mock"}, {"name": "mock-gpt-large", "backend": "mock"}],
    "plugins": {
        "auth_api_keys": {
            "mode": "required",
            "keys": [
                {"name": "admin", "key": ADMIN},
                {
                    "name": "limited",
                    "key": LIMITED,
                    "models": ["mock-gpt-model"],
                    "limits": {"requests_per_minute": 3},
                },
            ],
        }
    },
}


def sdk(url: str, key: str) -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


@pytest.fixture
def keyed() -> Iterator[str]:
    with ServerThread(make_app(AUTH)) as server:
        yield server.url


def test_keys_limits_and_ownership(keyed: str) -> None:
    with sdk(keyed, ADMIN) as admin, sdk(keyed, LIMITED) as limited, sdk(keyed, "sk-wrong") as stranger:
        with pytest.raises(openai.AuthenticationError):
            stranger.responses.create(model="mock-gpt-model", input="hi")
        with pytest.raises(openai.PermissionDeniedError):
            limited.responses.create(model="mock-gpt-large", input="hi")
        mine = admin.responses.create(model="mock-gpt-model", input="hi")
        with pytest.raises(openai.AuthenticationError):
            stranger.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):  # another key's name: not its response
            limited.responses.retrieve(mine.id)
        assert admin.responses.retrieve(mine.id).id == mine.id
        for _ in range(3):
            limited.responses.create(model="mock-gpt-model", input="hi")
        with pytest.raises(openai.RateLimitError) as caught:
            limited.responses.create(model="mock-gpt-model", input="hi")
    assert caught.value.body["type"] == "requests"  # type: ignore[index]


class Answering:
    """A plugin that answers requests for a model itself (as a cache does), with a chat completion."""

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        if ctx.endpoint == RESPONSES.name:
            ctx.response = chat_completion(
                "chatcmpl-1", 1, ctx.model, [message_choice(0, "From the plugin.", "stop")], None
            )


def test_a_plugins_own_answer_is_a_response() -> None:
    with ServerThread(make_app(None, plugins=[Answering()])) as server, sdk(server.url, "any") as client:
        response = client.responses.create(model="mock-gpt-model", input="hi")
        assert response.output_text == "From the plugin." and response.id.startswith("resp_")
        assert response.usage is not None and response.usage.input_tokens > 0  # estimated
        assert client.responses.retrieve(response.id).output_text == "From the plugin."
        events = list(client.responses.create(model="mock-gpt-model", input="hi", stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == "From the plugin."  # type: ignore[union-attr]


class FailingFilter:
    """A stream filter that fails on the third chunk."""

    @hookimpl
    def gateway_stream_filter(self, ctx: Any) -> Any:
        seen = []

        def fail(chunk: dict[str, Any] | None) -> dict[str, Any] | None:
            seen.append(chunk)
            if len(seen) == 3:
                raise ValueError("the filter broke")
            return chunk

        return fail


async def test_a_failure_that_is_not_the_backends_is_an_error_event() -> None:
    with ServerThread(make_app(None, plugins=[FailingFilter()])) as server:
        body = {"model": "mock-gpt-model", "input": "one two three four", "stream": True}
        async with aiohttp.ClientSession() as http, http.post(f"{server.url}/v1/responses", json=body) as response:
            raw = (await response.read()).decode()
    blocks = raw.removesuffix("\n\n").split("\n\n")
    assert blocks[0].startswith("event: response.created\n")
    assert blocks[-1].startswith("event: error\n")
    error = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))
    assert error["type"] == "error" and error["sequence_number"] == len(blocks) - 1
    assert error["code"] == "internal_error" or error["message"]
    assert "response.failed" not in raw and "response.completed" not in raw
