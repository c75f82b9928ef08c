"""Cutting an upstream's Server-Sent Events into blocks of whole events as the bytes arrive, for a
pass-through backend: each network read gives one block (the events it completes) that can go to
the client as it is.

The work per read is a few C-level byte searches over the bytes that read brought, never over what
came before: an unfinished event waits as a list of pieces, joined once when its end arrives, so an
event of any size costs time in proportion to its size; above ``limit`` bytes the stream fails
(``problem``). Each block is checked by its events' first and last bytes, not parsed: an event is
``data: {...}`` (the fields ``event:``, ``id:``, ``retry:`` may stand beside its data),
``data: [DONE]`` or a comment (``:`` lines); a block that holds anything else is cut before it, and ``problem`` says
why. The ``[DONE]`` event ends the stream (``done``) and is not part of a block.
"""

from __future__ import annotations

import re

EVENT_END = b"\n\n"
DONE_EVENT = b"data: [DONE]\n\n"
#: The ``[DONE]`` event's line, with or without the space.
_DONE_LINE = re.compile(rb"data: ?\[DONE\][ \t]*")
_FIELDS = (b"data:", b"event:", b"id:", b"retry:")
#: A stream event of more bytes than this fails the stream, unless the backend sets its own limit.
DEFAULT_MAX_EVENT = 8 * 1024 * 1024


class EventBlocks:
    """One stream's reader: ``feed`` each network read, send what it returns."""

    __slots__ = ("cr", "done", "limit", "parts", "problem", "size")

    def __init__(self, limit: int = DEFAULT_MAX_EVENT) -> None:
        self.limit = limit
        self.parts: list[bytes] = []  # the unfinished event (and any blank lines before it), in pieces
        self.size = 0  # bytes in ``parts``
        self.cr = False  # the last read ended with a CR: the CRLF pair may be cut between two reads
        self.done = False  # the [DONE] event arrived
        self.problem: str | None = None  # why the stream cannot go on (a malformed or oversized event)

    def feed(self, data: bytes) -> bytes:
        """The whole events ``data`` completes, up to ``[DONE]`` or a malformed event (may be empty)."""
        if self.cr:
            data, self.cr = b"\r" + data, False
        if b"\r" in data:  # CRLF lines
            if data[-1:] == b"\r":
                data, self.cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n")
        end = data.rfind(EVENT_END)
        if end >= 0:
            cut = end + 2
        elif data[:1] == b"\n" and self.parts and self.parts[-1][-1:] == b"\n":
            cut = 1  # the blank line that ends the event came alone
        else:
            self._hold(data)
            return b""
        if self.parts:
            block = b"".join((*self.parts, data[:cut]))
            self.parts.clear()
        else:
            block = data if cut == len(data) else data[:cut]
        self.size = 0
        if cut < len(data):
            self._hold(data[cut:])
        if block.endswith(DONE_EVENT) and well_formed(head := block[: -len(DONE_EVENT)]):
            block, self.done = head, True  # the usual last read: whole events, then [DONE]
        elif not well_formed(block):  # [DONE] amid the events, other fields, comments, or a bad event
            block = self._check(block)
        if len(block) > self.limit and max(map(len, block.split(EVENT_END))) > self.limit:
            block, self.problem = b"", f"sent a stream event over {self.limit} bytes"
        return block

    def _check(self, block: bytes) -> bytes:
        """A block the counts did not pass: cut at ``[DONE]`` (``done``), then before its first
        malformed event (``problem``)."""
        at = done_at(block) if b"[DONE]" in block else -1
        if at >= 0:
            block, self.done = block[:at], True
        if not well_formed(block):
            bad = first_malformed(block)
            if bad is not None:
                block, self.problem = block[:bad], "sent a malformed stream event (not data: {...})"
        return block

    def _hold(self, data: bytes) -> None:
        self.parts.append(data)
        self.size += len(data)
        if self.size > self.limit and self.problem is None:
            self.problem = f"sent a stream event over {self.limit} bytes"

    def pending(self) -> bytes:
        """What came after the last whole event (at the end of the body: an unfinished one)."""
        return b"".join(self.parts)


def done_at(block: bytes) -> int:
    """The offset of the ``[DONE]`` event's line in ``block``, or -1: a line of its own (a JSON
    payload holds no raw newline, so ``data: [DONE]`` in a chunk's text never matches)."""
    i = block.find(b"[DONE]")
    while i >= 0:
        start = block.rfind(b"\n", 0, i) + 1
        stop = block.find(b"\n", i)
        if _DONE_LINE.fullmatch(block, start, len(block) if stop < 0 else stop):
            return start
        i = block.find(b"[DONE]", i + 6)
    return -1


def well_formed(block: bytes) -> bool:
    """The common case, by two counts: every event of ``block`` one ``data: {...}`` line. (Its newlines
    are then exactly the two that end each event: one pair at its end, one in each ``}\\n\\ndata: {``
    between two events.)"""
    if not block:
        return True
    lines = block.count(b"\n")
    if lines % 2 or not block.startswith(b"data: {") or not block.endswith(b"}\n\n"):
        return False
    return lines == 2 or block.count(b"}\n\ndata: {") == lines // 2 - 1


def first_malformed(block: bytes) -> int | None:
    """The offset of the first event of ``block`` that is neither ``data: {...}`` (its data lines
    joined), ``data: [DONE]`` nor a comment; None when every event is one of those."""
    offset = 0
    for event in block.split(EVENT_END):
        if event.strip(b"\n") and not _event_ok(event):
            return offset
        offset += len(event) + 2
    return None


def _event_ok(event: bytes) -> bool:
    data, fields = [], False
    for line in event.split(b"\n"):
        if not line or line[:1] == b":":  # a comment
            continue
        if not line.startswith(_FIELDS):
            return False
        if line.startswith(b"data:"):
            data.append(line[5:].strip(b" \t"))
        else:
            fields = True
    if not data:
        return not fields  # comments alone: clients skip them; fields alone make an event without data
    payload = b"\n".join(data)
    return payload == b"[DONE]" or (payload[:1] == b"{" and payload[-1:] == b"}")
