"""The answer of ``gateway.upstream.http_client``'s lean client: its status and headers, and its body
buffered as the connection delivers it, read whole (``read``) or as it arrives (``iter_any``), with
back-pressure on the connection above ``HIGH_WATER`` bytes and the connection's return to the pool
(or its closing) on ``release``.
"""

from __future__ import annotations

import asyncio
import collections
import zlib
from typing import TYPE_CHECKING, Any

from aiohttp import ClientPayloadError
from multidict import CIMultiDict, CIMultiDictProxy

if TYPE_CHECKING:
    from gateway.upstream.http_client import _Connection

#: Bytes of body buffered before the connection stops reading from the upstream.
HIGH_WATER = 256 * 1024
#: Seconds the rest of an answer released unfinished may take to arrive (the end of a stream after
#: its last event, typically) for its connection to be reused; after that it is closed.
DRAIN = 1.0


class Response:
    """An upstream's answer: ``status``, ``reason``, ``headers``, and its body read with ``read`` or
    iterated as it arrives (``iter_any``). ``content`` is the response itself, as aiohttp spells it
    (``response.content.read(n)``). ``release`` after use: the connection goes back to the pool if
    the answer is complete, else it is closed."""

    def __init__(self, connection: _Connection, status: int, reason: str, headers: CIMultiDict[str]) -> None:
        self.connection = connection
        self.status, self.reason = status, reason
        self.headers = CIMultiDictProxy(headers)
        self.complete = False
        self.until_close = False
        self.keep_alive = False
        self.released = False
        self._drain: asyncio.TimerHandle | None = None
        self._settled = False
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._paused = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        encoding = headers.get("Content-Encoding", "").lower()
        self._decoder: Any = (
            zlib.decompressobj(wbits=31 if encoding == "gzip" else zlib.MAX_WBITS)
            if encoding in ("gzip", "deflate")
            else None
        )

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "application/octet-stream").partition(";")[0].strip().lower()

    @property
    def content(self) -> Response:
        return self

    # Filled by the connection

    def _feed(self, data: bytes) -> None:
        if self.released or self._error is not None:  # draining: the rest is not wanted; or failed
            return
        if self._decoder is not None:
            try:
                data = self._decoder.decompress(data)
            except zlib.error as exc:
                encoding = self.headers["Content-Encoding"]
                self._fail(ClientPayloadError(f"the answer's {encoding} body is corrupt: {exc}"))
                self.connection.close()
                return
            if not data:
                return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER and not self._paused and self.connection.transport is not None:
            self._paused = True
            self.connection.transport.pause_reading()
        self._wake()

    def _finish(self) -> None:
        if self._error is not None:  # the body failed (a corrupt encoding): it stays unfinished
            return
        self.complete = True
        if self._drain is not None:
            self._drain.cancel()
            self._settle()
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.complete or self._error is not None:  # the first error is the one that tells why
            return
        self._error = error
        if self._drain is not None:
            self._drain.cancel()
            self._settle()
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # Read by the caller

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        self._waiter = self.connection.loop.create_future()
        await self._waiter

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        if self._paused:
            self._paused = False
            if self.connection.transport is not None:
                self.connection.transport.resume_reading()
        return data

    async def read(self, limit: int = -1) -> bytes:
        """The body, or its first ``limit`` bytes (then the rest is not read)."""
        parts, size = [], 0
        while not self.complete and (limit < 0 or size < limit):
            if self._chunks:  # taken as it arrives, so that reading resumes above HIGH_WATER
                parts.append(block := self._take())
                size += len(block)
            else:
                await self._wait()
        if self._chunks:
            parts.append(self._take())
        data = b"".join(parts)
        return data if limit < 0 else data[:limit]

    def iter_any(self) -> Response:
        """The body as it arrives: every piece buffered so far, joined, per iteration."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks:
            if self.complete:
                raise StopAsyncIteration
            await self._wait()
        return self._take()

    def close(self) -> None:
        """Done with the answer, the rest of it unwanted: its connection is closed, not reused."""
        self.connection.close()
        self.release()

    def release(self) -> None:
        """Done with the answer: its connection back to the pool if reusable, else closed. An
        unfinished answer is drained first, for ``DRAIN`` seconds at most."""
        if self.released:
            return
        self.released = True
        self._chunks.clear()
        if self._paused and self.connection.transport is not None:
            self.connection.transport.resume_reading()
        if self.complete or self._error is not None or self.connection.closed or self.until_close:
            self._settle()
        else:
            self._drain = asyncio.get_running_loop().call_later(DRAIN, self._settle)

    def abort(self) -> None:
        """Done with an answer whose rest is not wanted (a broken stream): its connection is closed
        at once rather than drained for reuse."""
        self.connection.close()
        self.release()

    def _settle(self) -> None:
        if self._settled:
            return
        self._settled = True
        connection = self.connection
        connection.response = None
        reusable = self.complete and self.keep_alive and not connection.closed
        connection.client._done(connection, reusable)
