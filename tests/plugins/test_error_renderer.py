"""The ``error_renderer`` plugin: OpenAI's error shape, Anthropic's on the ``/v1/messages`` front
door (before and after a stream started), and another dialect added by a plugin the same way."""

from __future__ import annotations

from typing import Any

from gateway import hookimpl
from gateway.errors import DialectError, GatewayError
from gateway.testing import mock_config

MESSAGE = {"role": "user", "content": "hi"}


async def test_openai_shape_on_chat_and_anthropic_shape_on_messages(gateway: Any) -> None:
    client = await gateway()
    resp = await client.post("/v1/chat/completions", json={"model": "nope", "messages": [MESSAGE]})
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "model_not_found"
    resp = await client.post("/v1/messages", json={"model": "nope", "max_tokens": 5, "messages": [MESSAGE]})
    assert resp.status == 404
    assert await resp.json() == {
        "type": "error",
        "error": {
            "type": "not_found_error",
            "message": "The model `nope` does not exist or you do not have access to it.",
        },
    }
    for path in ("/v1/messages/nope", "/v1/messages/count_tokens"):  # no endpoint named, or a GET
        resp = await client.get(path)
        assert resp.status in (404, 405)
        assert (await resp.json())["type"] == "error"


async def test_an_error_after_the_stream_started_is_an_anthropic_error_event(gateway: Any) -> None:
    config = mock_config(failure={"mode": "midstream", "after_chunks": 2})
    client = await gateway(config)
    body = {"model": "mock-gpt-model", "max_tokens": 50, "stream": True, "messages": [MESSAGE]}
    resp = await client.post("/v1/messages", json=body)
    assert resp.status == 200
    raw = (await resp.read()).decode()
    last = raw.strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    assert '"type":"api_error"' in last


class Teapot(DialectError):
    """A made-up dialect: ``{"teapot": {"why": ...}}``."""

    def to_dict(self) -> dict[str, Any]:
        return {"teapot": {"why": self.message, "status": self.status}}


class TeapotDialect:
    """A plugin's front door in its own dialect: its requests' errors in its shape."""

    @hookimpl
    def gateway_handle_error(self, ctx: Any, error: BaseException) -> GatewayError | None:
        if ctx.request.headers.get("X-Dialect") != "teapot":
            return None
        return Teapot(error if isinstance(error, GatewayError) else GatewayError("failed"))


async def test_a_plugin_adds_a_dialect_the_same_way(gateway: Any) -> None:
    client = await gateway(None, [TeapotDialect()])
    body = {"model": "nope", "messages": [MESSAGE]}
    resp = await client.post("/v1/chat/completions", json=body, headers={"X-Dialect": "teapot"})
    assert resp.status == 404
    assert await resp.json() == {
        "teapot": {"why": "The model `nope` does not exist or you do not have access to it.", "status": 404}
    }
    resp = await client.post("/v1/chat/completions", json=body)
    assert (await resp.json())["error"]["code"] == "model_not_found"
