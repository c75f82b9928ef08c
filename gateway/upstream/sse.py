"""Reading an upstream's Server-Sent Events."""

from __future__ import annotations

from collections.abc import AsyncIterator


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
