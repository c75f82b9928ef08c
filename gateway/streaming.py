"""Server-Sent Events: encoding chunks, applying chunk filters, parsing upstream streams, and the
watchdog that bounds how long a backend may stay silent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
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


async def iter_sse(lines: AsyncIterator[bytes]) -> AsyncIterator[tuple[str, bytes]]:
    """Parse an upstream SSE byte stream (an iterator of lines) into ``(event, data)`` pairs."""
    event, data = "message", []
    async for raw in lines:
        line = raw.rstrip(b"\r\n")
        if not line:
            if data:
                yield event, b"\n".join(data)
            event, data = "message", []
        elif line.startswith(b"data:"):
            data.append(line[5:].removeprefix(b" "))
        elif line.startswith(b"event:"):
            event = line[6:].strip().decode()
    if data:
        yield event, b"\n".join(data)


class Watchdog:
    """Cancels the current task when a backend stays silent too long, or when a deadline passes.

    ``timeout`` bounds the wait for the first output; once ``started()`` says it arrived, ``gap``
    (default: ``timeout``) bounds each wait between two chunks; ``deadline`` (a loop time, or None)
    bounds the whole response. One timer for the whole response, re-armed only when it fires: the
    per-chunk cost is two attribute writes (``since``), not a timer per chunk.
    """

    __slots__ = ("_handle", "deadline", "fired", "gap", "loop", "reason", "since", "task", "timeout")

    def __init__(self, timeout: float, gap: float | None = None, deadline: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.timeout = timeout  # the silence allowed now
        self.gap = timeout if gap is None else gap
        self.deadline = deadline
        self.since: float | None = None  # when the current wait began; None while not waiting
        self.fired = False
        self.reason = ""  # after firing: "silence" or "deadline"
        self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def waiting(self) -> None:
        self.since = self.loop.time()

    def idle(self) -> None:
        self.since = None

    def started(self) -> None:
        """The first output arrived: from now on the silence allowed is ``gap``."""
        self.since = None
        shorter = self.gap < self.timeout
        self.timeout = self.gap
        if shorter:  # the timer is due later than the new limit allows
            self._handle.cancel()
            self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def limit(self, timeout: float, gap: float | None = None) -> None:
        """New limits (the next attempt goes to another backend); the timer is re-armed."""
        self.timeout = timeout
        self.gap = timeout if gap is None else gap
        self._handle.cancel()
        self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def _due(self, now: float) -> float:
        due = (now if self.since is None else self.since) + self.timeout
        return due if self.deadline is None else min(due, self.deadline)

    def _check(self) -> None:
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.reason = "deadline"
        elif self.since is not None and now - self.since >= self.timeout:
            self.reason = "silence"
        else:
            self._handle = self.loop.call_at(self._due(now), self._check)
            return
        self.fired = True
        assert self.task is not None
        self.task.cancel()

    def expired(self) -> bool:
        """After a ``CancelledError``: True if this watchdog caused it (the cancel is then withdrawn)."""
        if not self.fired:
            return False
        self.fired = False
        assert self.task is not None
        self.task.uncancel()
        return True

    def stop(self) -> None:
        self._handle.cancel()
