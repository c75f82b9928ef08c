"""Where the JSON log lines go: straight to the output, or, while the server runs (``batch_lines``),
gathered and written once per turn of the event loop, so that a busy gateway makes one write per
loop turn rather than one per line (the access line's write was 7% of a request's CPU)."""

from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any

#: The loop whose turns batch the lines, and its thread (``batch_lines``); None: every line at once.
_loop: asyncio.AbstractEventLoop | None = None
_thread: int | None = None
_buffers: weakref.WeakSet[LineBuffer] = weakref.WeakSet()


class LineBuffer:
    """A binary output's stand-in (``write``, ``flush``) for log lines: written through at once, or,
    while lines are batched and the caller is the loop's thread, kept until the end of the loop turn
    in which the first of them arrived, then written in one write."""

    def __init__(self, output: Any) -> None:
        self.output = output
        self.lines: list[bytes] = []
        _buffers.add(self)

    def write(self, data: bytes) -> int:
        return len(data) if self._kept(data) else self.output.write(data)

    def write_line(self, data: bytes) -> None:
        """``write`` and ``flush`` in one call."""
        if not self._kept(data):
            self.output.write(data)
            self.output.flush()

    def _kept(self, data: bytes) -> bool:
        """Keep ``data`` for the end of this loop turn, if lines are batched and the caller is the loop's thread."""
        if _loop is None or threading.get_ident() != _thread:
            return False
        if not self.lines:
            _loop.call_soon(self.drain)
        self.lines.append(data)
        return True

    def flush(self) -> None:
        if _loop is None or threading.get_ident() != _thread:
            self.output.flush()  # a batched line is flushed when its turn ends

    def drain(self) -> None:
        """Write the lines gathered so far, in one write."""
        if self.lines:
            lines, self.lines = self.lines, []
            self.output.write(b"".join(lines))
            self.output.flush()


def batch_lines(loop: asyncio.AbstractEventLoop | None) -> None:
    """Batch log lines per turn of ``loop`` (called from its thread), or, with None, stop: the lines
    kept so far are written at once. A line logged from another thread is written at once."""
    global _loop, _thread
    _loop, _thread = loop, threading.get_ident() if loop is not None else None
    if loop is None:
        for buffer in list(_buffers):
            buffer.drain()
