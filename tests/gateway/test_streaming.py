"""SSE helpers, and the pass-through path: a backend that yields framed SSE bytes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from gateway import Backend, hookimpl
from gateway.formats.chat import chunk, chunk_choice
from gateway.resilience.watchdog import Watchdog
from gateway.streaming import apply_filters, decode_items, encode_event, flush_filters
from gateway.upstream.sse import iter_sse


def text_chunk(text: str, finish: str | None = None) -> dict[str, Any]:
    return chunk("chatcmpl-1", 1, "bytes-model", [chunk_choice(0, {"content": text} if text else {}, finish)])


EVENTS = [text_chunk("Hello"), text_chunk(" wor"), text_chunk("ld"), text_chunk("", "stop")]
#: Two events in one block, then two more: how an upstream's bytes arrive in network reads.
BLOCKS = [encode_event(EVENTS[0]) + encode_event(EVENTS[1]), encode_event(EVENTS[2]) + encode_event(EVENTS[3])]


class BytesBackend(Backend):
    """Yields pre-framed SSE bytes, as a pass-through backend does."""

    type_name = "bytes"

    async def chat(self, ctx: Any) -> AsyncIterator[bytes]:  # type: ignore[override]
        for block in BLOCKS:
            yield block


class BytesPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Any) -> None:
        register("bytes", BytesBackend)


CONFIG = {"backends": [{"name": "b", "type": "bytes", "models": ["bytes-model"]}]}
REQUEST = {"model": "bytes-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


async def test_backend_bytes_reach_the_client_untouched(gateway: Any) -> None:
    client = await gateway(CONFIG, plugins=[BytesPlugin()])
    resp = await client.post("/v1/chat/completions", json=REQUEST)
    assert resp.status == 200
    assert await resp.read() == b"".join(BLOCKS) + b"data: [DONE]\n\n"


async def test_a_pass_through_stream_s_headers_go_out_with_its_first_event(
    gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regression guard on cost: one write for the head and the first block, not one each."""
    from aiohttp import http_writer

    writes: list[bytes] = []
    real_write, real_writelines = http_writer.StreamWriter._write, http_writer.StreamWriter._writelines

    def write(self: Any, chunk: Any) -> None:
        writes.append(bytes(chunk))
        real_write(self, chunk)

    def writelines(self: Any, chunks: Any) -> None:
        writes.append(b"".join(chunks))
        real_writelines(self, chunks)

    monkeypatch.setattr(http_writer.StreamWriter, "_write", write)
    monkeypatch.setattr(http_writer.StreamWriter, "_writelines", writelines)
    client = await gateway(CONFIG, plugins=[BytesPlugin()])
    resp = await client.post("/v1/chat/completions", json=REQUEST)
    assert await resp.read() == b"".join(BLOCKS) + b"data: [DONE]\n\n"
    head = next(w for w in writes if w.startswith(b"HTTP/1.1 200"))
    assert b"text/event-stream" in head and head.endswith(BLOCKS[0] + b"\r\n")


async def test_bytes_are_decoded_when_a_filter_asks_for_chunks(gateway: Any) -> None:
    class Upper:
        @hookimpl
        def gateway_stream_filter(self, ctx: Any) -> Any:
            def upper(c: dict[str, Any] | None) -> Any:
                if c is not None and c["choices"][0]["delta"].get("content"):
                    c["choices"][0]["delta"]["content"] = c["choices"][0]["delta"]["content"].upper()
                return c

            return upper

    client = await gateway(CONFIG, plugins=[BytesPlugin(), Upper()])
    raw = await (await client.post("/v1/chat/completions", json=REQUEST)).read()
    events = raw.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    texts = [orjson.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-2]]
    assert texts == ["HELLO", " WOR", "LD", None]


def test_decode_items_skips_done_and_comments() -> None:
    block = b": keep-alive\n\n" + encode_event(EVENTS[0]) + b"data: [DONE]\n\n"
    assert decode_items(block) == [EVENTS[0]]
    assert decode_items(EVENTS[1]) == [EVENTS[1]]


def test_filters_apply_in_order_and_flush_through_later_filters() -> None:
    held: list[dict[str, Any]] = []

    def hold(c: dict[str, Any] | None) -> Any:  # holds everything back until the end
        if c is None:
            return list(held)
        held.append(c)
        return None

    def tag(c: dict[str, Any] | None) -> Any:
        return None if c is None else {**c, "tag": True}

    assert apply_filters([hold, tag], [EVENTS[0], EVENTS[1]]) == []
    assert flush_filters([hold, tag]) == [{**EVENTS[0], "tag": True}, {**EVENTS[1], "tag": True}]
    assert apply_filters([tag], [EVENTS[0]]) == [{**EVENTS[0], "tag": True}]


async def test_iter_sse_parses_events_data_lines_and_crlf() -> None:
    async def lines() -> AsyncIterator[bytes]:
        for line in [b"event: completion\r\n", b'data: {"a":\n', b"data: 1}\n", b"\n", b": comment\n", b"data: x\n"]:
            yield line

    assert [e async for e in iter_sse(lines())] == [("completion", b'{"a":\n1}'), ("message", b"x")]


async def test_watchdog_cancels_only_a_silent_wait() -> None:
    async def slow() -> None:
        watchdog = Watchdog(0.05)
        try:
            await asyncio.sleep(0.1)  # not waiting on a backend: the watchdog lets it be
            watchdog.waiting()
            with pytest.raises(asyncio.CancelledError):
                await asyncio.sleep(1)
            assert watchdog.expired()
            assert not watchdog.expired()  # reported once
        finally:
            watchdog.stop()

    await asyncio.wait_for(slow(), 2)
