"""How the pipeline answers when a backend or a plugin fails in ways the gateway did not plan for."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway import Backend, hookimpl
from gateway.formats.chat import chunk, chunk_choice
from gateway.testing import mock_config

CHAT = "/v1/chat/completions"


def part(text: str) -> dict[str, Any]:
    return chunk("chatcmpl-1", 1, "flaky", [chunk_choice(0, {"content": text})])


class Flaky(Backend):
    """Fails as told by the request's last message: `reset` after one chunk, `disconnect` before
    any, `timeout`, or `sync` (``chat`` itself raises, before any iterator exists)."""

    type_name = "flaky"

    def chat(self, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        how = ctx.body["messages"][-1]["content"]
        if how == "sync":
            raise RuntimeError("chat() failed at once")
        return self._chat(how)

    async def _chat(self, how: str) -> AsyncIterator[dict[str, Any]]:
        if how == "disconnect":
            raise aiohttp.ServerDisconnectedError()
        if how == "timeout":
            raise TimeoutError
        yield part("first")
        if how == "reset":
            raise ConnectionResetError("upstream reset the connection")


class FlakyPlugin:
    def __init__(self) -> None:
        self.finished: list[tuple[int, BaseException | None]] = []

    @hookimpl
    def gateway_register_backends(self, register: Any) -> None:
        register("flaky", Flaky)

    @hookimpl
    def gateway_request_finished(self, ctx: Any, error: BaseException | None) -> None:
        self.finished.append((ctx.status, error))


CONFIG = {"backends": [{"name": "flaky", "type": "flaky", "models": ["flaky"]}]}


def ask(how: str, stream: bool = False) -> dict[str, Any]:
    return {"model": "flaky", "messages": [{"role": "user", "content": how}], "stream": stream}


def events(raw: bytes) -> list[bytes]:
    return [e for e in raw.split(b"\n\n") if e]


async def test_an_upstream_reset_mid_stream_is_an_error_event_not_a_quiet_end(gateway: Any) -> None:
    plugin = FlakyPlugin()
    client = await gateway(CONFIG, plugins=[plugin])
    resp = await client.post(CHAT, json=ask("reset", stream=True))
    sent = events(await resp.read())
    assert resp.status == 200
    assert orjson.loads(sent[0][6:])["choices"][0]["delta"] == {"content": "first"}
    error = orjson.loads(sent[-1][6:])["error"]
    assert error["code"] == "bad_gateway" and "flaky" in error["message"]
    assert b"data: [DONE]" not in sent
    await asyncio.sleep(0.05)
    assert plugin.finished[0][0] == 200  # not 499: the client did not leave
    assert plugin.finished[0][1] is not None


@pytest.mark.parametrize(
    ("how", "status", "code"),
    [("disconnect", 502, "bad_gateway"), ("timeout", 504, "upstream_timeout"), ("sync", 502, "bad_gateway")],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_any_backend_exception_is_a_502_or_504(
    gateway: Any, how: str, status: int, code: str, stream: bool
) -> None:
    client = await gateway(CONFIG, plugins=[FlakyPlugin()])
    resp = await client.post(CHAT, json=ask(how, stream))
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code
    assert "flaky" in error["message"]
    assert "chat() failed at once" not in error["message"]  # details stay in the log


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": [{"type": "text"}]}]}, "messages[0].content[0].text"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages[0].content[0].text"),
        ({"tools": [{"type": "function"}], "tool_choice": "required"}, "tools[0].function"),
        ({"tool_choice": {"type": "function", "function": "x"}}, "tool_choice.function"),
    ],
)
async def test_malformed_parts_and_tools_are_400_naming_the_param(
    gateway: Any, body: dict[str, Any], param: str
) -> None:
    client = await gateway()
    request = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "x"}], **body}
    resp = await client.post(CHAT, json=request)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == param


async def test_a_recursive_tool_schema_is_refused_quickly(gateway: Any) -> None:
    node = {"type": "object", "properties": {k: {"$ref": "#/$defs/n"} for k in "abc"}}
    tool = {"type": "function", "function": {"name": "t", "parameters": {"$defs": {"n": node}, "$ref": "#/$defs/n"}}}
    client = await gateway()
    request = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "x"}]}
    resp = await asyncio.wait_for(client.post(CHAT, json={**request, "tools": [tool], "tool_choice": "required"}), 5)
    assert resp.status == 400
    assert (await resp.json())["error"]["param"] == "tools"


async def test_a_failure_after_a_plugin_route_sent_its_headers_closes_the_connection(gateway: Any) -> None:
    """No second response is written into a response already under way."""
    finished: list[BaseException | None] = []

    async def broken(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"partial")
        raise RuntimeError("the plugin route broke")

    class Routes:
        @hookimpl
        def gateway_setup_app(self, app: web.Application) -> None:
            app.router.add_get("/broken", broken)

        @hookimpl
        def gateway_request_finished(self, error: BaseException | None) -> None:
            finished.append(error)

    client = await gateway(mock_config(), plugins=[Routes()])
    resp = await client.get("/broken")
    assert resp.status == 200
    with pytest.raises(aiohttp.ClientPayloadError):
        await resp.read()
    await asyncio.sleep(0.05)
    assert len(finished) == 1 and isinstance(finished[0], RuntimeError)
    assert (await client.get("/health")).status == 200  # the server carries on


async def test_a_plugin_answer_without_usage_gets_an_estimate(gateway: Any) -> None:
    class Cache:
        @hookimpl
        def gateway_process_request(self, ctx: Any) -> None:
            message = {"role": "assistant", "content": "cached words here", "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            ctx.response = {
                "id": "chatcmpl-c",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [choice],
            }

    client = await gateway(plugins=[Cache()])
    body = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}]}
    usage = (await (await client.post(CHAT, json=body)).json())["usage"]
    assert usage["completion_tokens"] == 5 and usage["total_tokens"] == usage["prompt_tokens"] + 5
    resp = await client.post(CHAT, json={**body, "stream": True, "stream_options": {"include_usage": True}})
    last = orjson.loads(events(await resp.read())[-2][6:])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 5


async def test_a_plugin_route_may_answer_with_a_file(gateway: Any, tmp_path: Any) -> None:
    """aiohttp sends a FileResponse itself: the core must not prepare it a second time."""
    from aiohttp import web

    from gateway import hookimpl

    page = tmp_path / "page.txt"
    page.write_text("a file from a plugin\n")

    class FilePlugin:
        @hookimpl
        def gateway_setup_app(self, app: web.Application, config: Any) -> None:
            async def send(request: web.Request) -> web.FileResponse:
                return web.FileResponse(page)

            app.router.add_get("/page", send)

    client = await gateway(plugins=[FilePlugin()])
    for _ in range(2):
        resp = await client.get("/page")
        assert resp.status == 200 and await resp.text() == "a file from a plugin\n"


class Buggy(Backend):
    """Fails with the gateway's own kind of fault (a TypeError, as orjson's for a body nested too deep)."""

    type_name = "buggy"

    async def _fail(self) -> AsyncIterator[dict[str, Any]]:
        raise TypeError("Recursion limit reached")
        yield {}

    def chat(self, ctx: Any) -> AsyncIterator[dict[str, Any]]:
        return self._fail()


class BuggyPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Any) -> None:
        register("buggy", Buggy)


BUGGY = {
    "backends": [{"name": "one", "type": "buggy"}, {"name": "two", "type": "buggy"}],
    "models": [
        {
            "name": "buggy",
            "deployments": [{"name": "one", "backend": "one"}, {"name": "two", "backend": "two"}],
            "strategy": "failover",
            "circuit": {"failures": 1, "window": 30, "cooldown": 30},
        }
    ],
}


async def test_the_gateways_own_fault_is_500_and_opens_no_circuit(gateway: Any) -> None:
    client = await gateway(BUGGY, plugins=[BuggyPlugin()])
    for _ in range(3):
        resp = await client.post(CHAT, json={"model": "buggy", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status == 500
        assert (await resp.json())["error"]["code"] == "internal_error"
        assert resp.headers["X-Gateway-Backend"] == "one" and resp.headers["X-Gateway-Attempts"] == "1"
    info = await (await client.get("/info")).json()
    assert {d["circuit"]["state"] for d in info["deployments"].values()} == {"closed"}
