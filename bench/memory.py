"""Resident memory with many open streams: ``hold_streams`` opens them to the slow upstream model."""

from __future__ import annotations

import asyncio
from typing import Any

from harness import chat_body, rss_mb


async def _hold_streams(port: int, count: int, measure: Any) -> float:
    payload = chat_body(True, "mock-slow")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    writers = []

    async def open_one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(request)
        data = b""
        while b"data:" not in data:
            chunk = await reader.read(4096)
            if not chunk:
                raise RuntimeError(f"stream closed early: {data[:200]!r}")
            data += chunk

    for start in range(0, count, 100):  # connect in batches, like clients arriving
        await asyncio.gather(*(open_one() for _ in range(min(100, count - start))))
    value = measure()
    for writer in writers:
        writer.close()
    return value


def hold_streams(port: int, pid: int, count: int) -> float:
    """The RSS of ``pid`` (MB) while ``count`` streams through it are open."""
    return asyncio.run(asyncio.wait_for(_hold_streams(port, count, lambda: rss_mb(pid)), 120))
