"""Server-Sent Events to the client: encoding chunks and applying chunk filters."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import orjson
from aiohttp import web

#: A stream filter (see ``gateway_stream_filter``): called with each chunk, then once with None.
#: It returns the chunk to send, None to drop it, or a list of chunks.
ChunkFilter = Callable[[dict[str, Any] | None], dict[str, Any] | list[dict[str, Any]] | None]

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
DONE = b"data: [DONE]\n\n"


class EventStreamResponse(web.StreamResponse):
    """A streamed response whose headers go out with its first write, in one packet: aiohttp's
    ``StreamResponse`` sends them on their own at ``prepare()``, a syscall more per stream. The
    pipeline prepares a stream once its first event is in hand, so nothing waits for them."""

    _send_headers_immediately = False  # aiohttp's switch (its Response sets it so too)


def encode_event(item: dict[str, Any] | bytes) -> bytes:
    """One SSE event for a chunk dict; bytes are already framed events and pass as they are."""
    if type(item) is bytes:
        return item
    return b"data: " + orjson.dumps(item) + b"\n\n"


def iter_sse_data(block: bytes) -> Iterable[bytes]:
    """The ``data:`` payloads of complete SSE events in ``block``."""
    for event in block.split(b"\n\n"):
        for line in event.splitlines():
            if line.startswith(b"data:"):
                yield line[5:].lstrip(b" ")


def decode_items(item: dict[str, Any] | bytes) -> list[dict[str, Any]]:
    """The chunk dicts in a backend item (a dict, or framed SSE events as bytes)."""
    if type(item) is not bytes:
        return [item]  # type: ignore[list-item]
    return [orjson.loads(data) for data in iter_sse_data(item) if data and data != b"[DONE]"]


def apply_filters(filters: list[ChunkFilter], chunks: list[dict[str, Any]], start: int = 0) -> list[dict[str, Any]]:
    """Pass ``chunks`` through ``filters[start:]`` in order."""
    for f in filters[start:]:
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            result = f(chunk)
            if result is None:
                continue
            if isinstance(result, dict):
                out.append(result)
            else:
                out.extend(result)
        chunks = out
    return chunks


def flush_filters(filters: list[ChunkFilter]) -> list[dict[str, Any]]:
    """Call each filter with None, in order; what one releases passes through the later ones."""
    released: list[dict[str, Any]] = []
    for f in filters:
        released = apply_filters([f], released)
        held = f(None)
        if held is not None:
            released += [held] if isinstance(held, dict) else list(held)
    return released
