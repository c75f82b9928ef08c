"""A client that disconnects cancels the backend call, the request is finished exactly once (499),
and the app keeps serving."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
from structlog.testing import capture_logs

from gateway import Backend, RequestContext, hookimpl
from gateway.errors import UpstreamTimeoutError, WriteTimeoutError
from gateway.formats.chat import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    message_choice,
    usage,
)
from tests.upstreams.openai import OpenAIUpstream, Reply

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


# A client that stops reading: server.write_timeout -----------------------------------------------


class Statuses:
    """The status and error of every finished request."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, BaseException | None]] = []

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext, error: BaseException | None) -> None:
        self.seen.append((ctx.status, error))

    async def wait(self, within: float) -> tuple[int, BaseException | None]:
        for _ in range(int(within / 0.01)):
            if self.seen:
                return self.seen[0]
            await asyncio.sleep(0.01)
        raise AssertionError(f"no request finished within {within} s")


async def stalled_reader(client: Any, payload: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A client with a tiny receive buffer that reads the response's headers and then nothing."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((client.server.host, client.server.port))
    sock.setblocking(False)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload
    )
    await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer


async def test_a_client_that_stops_reading_a_long_stream_is_cut_at_the_write_timeout_and_the_upstream_closed(
    gateway: Any, aiohttp_server: Any
) -> None:
    upstream = OpenAIUpstream()
    # ~7 MB of events sent at once, then the upstream holds the stream open: it never ends by itself
    upstream.default = Reply(content=" ".join(["w" * 200] * 30000), hang_after=30000)
    server = await aiohttp_server(upstream.app)
    statuses = Statuses()
    config = {
        "server": {"write_timeout": 0.4},
        "backends": [{"name": "up", "type": "openai_compat", "base_url": str(server.make_url("/v1"))}],
        "models": [{"name": "*", "backend": "up"}],
    }
    client = await gateway(config, plugins=[statuses])
    payload = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": True})
    with capture_logs() as logs:
        _reader, writer = await stalled_reader(client, payload)
        status, error = await statuses.wait(within=5)
    assert status == 499 and isinstance(error, WriteTimeoutError), (status, error)
    assert [e for e in logs if e["event"] == "client stopped reading; stream cut" and e["log_level"] == "warning"]
    for _ in range(200):  # the upstream's response is dropped with the client's
        if not upstream.active:
            break
        await asyncio.sleep(0.01)
    assert upstream.active == 0 and upstream.finished == 0
    writer.close()
    await assert_still_serving_mock(client)


async def assert_still_serving_mock(client: Any) -> None:
    resp = await client.get("/health")
    assert resp.status == 200


async def test_a_stream_cut_by_the_requests_own_time_limit_is_logged_as_504(gateway: Any) -> None:
    statuses = Statuses()
    config = {
        "backends": [{"name": "mock", "type": "mock", "models": ["m"], "chunk_delay": 0.1, "chunks": 50}],
        "models": [{"name": "m", "backend": "mock", "timeouts": {"total": 0.5}}],
    }
    client = await gateway(config, plugins=[statuses])
    resp = await client.post(
        CHAT, json={"model": "m", "stream": True, "messages": [{"role": "user", "content": "a b c"}]}
    )
    text = await resp.text()
    assert '"code":"upstream_timeout"' in text and "[DONE]" not in text
    status, error = await statuses.wait(within=2)
    assert status == 504 and isinstance(error, UpstreamTimeoutError)


async def test_a_stream_cut_by_its_time_limit_while_the_client_is_not_reading_is_504_too(gateway: Any) -> None:
    statuses = Statuses()
    config = {
        "server": {"write_timeout": 30},
        "backends": [{"name": "mock", "type": "mock", "models": ["m"], "reply": "w" * 8_000_000, "chunks": 4000}],
        "models": [{"name": "m", "backend": "mock", "timeouts": {"total": 0.5}}],
    }
    client = await gateway(config, plugins=[statuses])
    payload = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True})
    _reader, writer = await stalled_reader(client, payload)
    status, error = await statuses.wait(within=5)
    assert status == 504 and isinstance(error, UpstreamTimeoutError), (status, error)
    writer.close()
