"""The plugin author's test kit (gateway.testing), used the way its docs show."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import orjson

from gateway import Principal, hookimpl
from gateway.testing import RecordingPlugin, ServerThread, make_app, recorded, recording_config

CHAT = "/v1/chat/completions"


class Rewriter:
    """A plugin under test: a caller named by a header, and a system prompt added to every request."""

    @hookimpl
    def gateway_authenticate(self, ctx: Any) -> Principal | None:
        name = ctx.request.headers.get("X-Caller")
        return Principal(name=name) if name else None

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        if ctx.body is not None:
            ctx.body["messages"].insert(0, {"role": "system", "content": "Be brief."})


def ask(content: str = "hello", **extra: Any) -> dict[str, Any]:
    return {"model": "recorded-model", "messages": [{"role": "user", "content": content}], **extra}


async def test_the_backend_records_the_request_as_plugins_left_it(aiohttp_client: Any) -> None:
    app = make_app(recording_config(), plugins=[RecordingPlugin(), Rewriter()])
    client = await aiohttp_client(app)
    resp = await client.post(CHAT, json=ask(temperature=0.5, custom_field=[1]), headers={"X-Caller": "alice"})
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "recorded reply"
    [call] = recorded(app)
    assert call.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert call.body["custom_field"] == [1] and call.body["temperature"] == 0.5
    assert call.model == "recorded-model" and call.stream is False
    assert call.principal is not None and call.principal.name == "alice"
    assert call.outcome == "completed"


async def test_a_recorded_stream_and_its_usage(aiohttp_client: Any) -> None:
    app = make_app(recording_config(reply="one two three"), plugins=[RecordingPlugin()])
    client = await aiohttp_client(app)
    resp = await client.post(CHAT, json=ask(stream=True, stream_options={"include_usage": True}))
    events = [e for e in (await resp.read()).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two three"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert recorded(app)[0].outcome == "completed"


async def test_a_client_that_leaves_shows_as_a_cancelled_call(aiohttp_client: Any) -> None:
    app = make_app(recording_config(chunk_delay=5), plugins=[RecordingPlugin()])
    client = await aiohttp_client(app)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(client.make_url(CHAT), json=ask(stream=True))
        await resp.content.readuntil(b"\n\n")  # the first event
        resp.close()
    for _ in range(100):
        if recorded(app)[0].outcome != "running":
            break
        await asyncio.sleep(0.02)
    assert recorded(app)[0].outcome == "cancelled"


def test_the_openai_sdk_against_a_threaded_server() -> None:
    app = make_app(recording_config(), plugins=[RecordingPlugin()])
    with ServerThread(app) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=10)
        reply = client.chat.completions.create(model="recorded-model", messages=[{"role": "user", "content": "x"}])
    assert reply.choices[0].message.content == "recorded reply"
    assert [c.body["messages"][0]["content"] for c in recorded(app)] == ["x"]
