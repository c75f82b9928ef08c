"""A client that disconnects cancels the backend call, the request is finished exactly once (499),
and the app keeps serving."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from gateway import Backend, RequestContext, hookimpl
from gateway.formats.chat import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    message_choice,
    usage,
)

MODEL = "rec-model"
CHAT = "/v1/chat/completions"
NORMAL = "answer normally"
CONFIG = {
    "backends": [{"name": "rec", "type": "recording", "models": [MODEL]}],
    "models": [{"name": MODEL, "backend": "rec"}],
}


class Recorder:
    """What the recording backend saw, and a plugin registering it and observing finished requests."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.seen: list[type[BaseException]] = []
        self.finished: list[tuple[str, int, BaseException | None]] = []
        self.finished_event = asyncio.Event()
        recorder = self

        class RecordingBackend(Backend):
            type_name = "recording"

            def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
                return recorder.chat(ctx)

        self.backend_class = RecordingBackend

    @hookimpl
    def gateway_register_backends(self, register: Callable[[str, type[Backend]], None]) -> None:
        register("recording", self.backend_class)

    @hookimpl
    async def gateway_request_finished(self, ctx: RequestContext, error: BaseException | None) -> None:
        await asyncio.sleep(0)  # an async observer, still run after a cancellation
        self.finished.append((ctx.client_request_id, ctx.status, error))  # the id the test sent
        self.finished_event.set()

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        text = ctx.body["messages"][-1]["content"]
        cid, created = completion_id(), int(time.time())
        if text == NORMAL:
            if ctx.stream:
                yield chunk(cid, created, MODEL, [chunk_choice(0, {"role": "assistant", "content": ""})])
                yield chunk(cid, created, MODEL, [chunk_choice(0, {"content": "fine"})])
                yield chunk(cid, created, MODEL, [chunk_choice(0, {}, "stop")])
            else:
                yield chat_completion(cid, created, MODEL, [message_choice(0, "fine", "stop")], usage(1, 1))
            return
        try:
            self.started.set()
            if ctx.stream:
                yield chunk(cid, created, MODEL, [chunk_choice(0, {"role": "assistant", "content": ""})])
            await asyncio.sleep(30)
            yield chunk(cid, created, MODEL, [chunk_choice(0, {"content": "too late"})])
        except (asyncio.CancelledError, GeneratorExit) as exc:
            self.seen.append(type(exc))
            self.cancelled.set()
            raise


def body(text: str, stream: bool) -> bytes:
    return orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": text}], "stream": stream})


async def assert_still_serving(client: Any) -> None:
    resp = await client.post(CHAT, data=body(NORMAL, False), headers={"Content-Type": "application/json"})
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "fine"
    resp = await client.post(CHAT, data=body(NORMAL, True), headers={"Content-Type": "application/json"})
    raw = await resp.read()
    assert resp.status == 200
    assert raw.endswith(b"data: [DONE]\n\n")
    assert b'"content":"fine"' in raw


async def assert_finished_once(recorder: Recorder, request_id: str) -> None:
    await asyncio.wait_for(recorder.finished_event.wait(), 2)
    mine = [(status, error) for rid, status, error in recorder.finished if rid == request_id]
    assert len(mine) == 1, recorder.finished
    assert mine[0][0] == 499
    assert mine[0][1] is not None


async def test_raw_socket_disconnect_mid_stream_cancels_backend(gateway: Any) -> None:
    recorder = Recorder()
    client = await gateway(CONFIG, plugins=[recorder])
    payload = body("hang forever", True)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: gone-1\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200")
    assert b"text/event-stream" in head
    first = await asyncio.wait_for(reader.readuntil(b"\n\n"), 2)
    assert b"data: " in first and b'"role":"assistant"' in first
    assert recorder.started.is_set() and not recorder.cancelled.is_set()

    started = time.monotonic()
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(recorder.cancelled.wait(), 2)
    assert time.monotonic() - started < 2
    assert recorder.seen and recorder.seen[0] in (asyncio.CancelledError, GeneratorExit)

    await assert_finished_once(recorder, "gone-1")
    await assert_still_serving(client)
    await asyncio.sleep(0.05)  # any late, duplicate request_finished would land by now
    assert [rid for rid, _, _ in recorder.finished].count("gone-1") == 1


async def test_aiohttp_client_close_mid_stream_cancels_backend(gateway: Any) -> None:
    recorder = Recorder()
    client = await gateway(CONFIG, plugins=[recorder])
    url = client.make_url(CHAT)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            url, data=body("hang forever", True), headers={"Content-Type": "application/json", "X-Request-ID": "gone-2"}
        )
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 2)
        assert first.startswith(b"data: {")
        resp.close()  # drops the connection, not back to the pool
        await asyncio.wait_for(recorder.cancelled.wait(), 2)
    await assert_finished_once(recorder, "gone-2")
    await assert_still_serving(client)


async def test_disconnect_while_waiting_for_non_stream_answer_cancels_backend(gateway: Any) -> None:
    recorder = Recorder()
    client = await gateway(CONFIG, plugins=[recorder])
    payload = body("hang forever", False)
    _, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"X-Request-ID: gone-3\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    await writer.drain()
    await asyncio.wait_for(recorder.started.wait(), 2)
    writer.close()
    await writer.wait_closed()
    await asyncio.wait_for(recorder.cancelled.wait(), 2)
    await assert_finished_once(recorder, "gone-3")
    await assert_still_serving(client)
