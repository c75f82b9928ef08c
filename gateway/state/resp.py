"""A lean Redis connection for the hot path: scripts (``EVALSHA``) over one pipelined RESP2
connection per process, an ``asyncio.Protocol`` with a queue of waiters.

Every request's rate-limit check is one ``EVALSHA``; through redis-py's asyncio client that costs
about four times the CPU of writing the command and parsing its reply (connection checkout, command
packing, timeouts made of extra tasks, the generic parser). Here a call is one ``transport.write``
and one future; concurrent calls share the connection (Redis answers in order), so under load
several replies arrive in one read. The connection is opened on first use (``AUTH`` and ``SELECT``
from the URL), re-opened after it is lost, and dropped when a call times out, so that a half-open
connection is never reused (TCP keepalive is on as well). Each call and each connect is bounded by
``timeout`` (a timer per call, not a task); the rest of the store (get, set, locks) keeps redis-py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

CRLF = b"\r\n"


def pack(*words: Any) -> bytes:
    """One command in RESP: an array of bulk strings (ints and strs encoded)."""
    parts = [b"*%d\r\n" % len(words)]
    for word in words:
        kind = type(word)
        data = word if kind is bytes else b"%d" % word if kind is int else str(word).encode()
        parts += (b"$%d\r\n" % len(data), data, CRLF)
    return b"".join(parts)


def parse(buffer: bytearray, pos: int) -> tuple[Any, int]:
    """The reply at ``pos`` and the position after it; ``IndexError`` when it is incomplete. An
    error reply is a ``ResponseError`` (``NoScriptError`` for ``NOSCRIPT``) returned, not raised."""
    end = buffer.index(CRLF, pos)  # ValueError: incomplete
    kind, line = buffer[pos], bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind == 58:  # ':'
        return int(line), pos
    if kind == 36:  # '$'
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise IndexError
        return bytes(buffer[pos : pos + size]), pos + size + 2
    if kind == 42:  # '*'
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = parse(buffer, pos)
            items.append(item)
        return items, pos
    if kind == 43:  # '+'
        return line.decode(), pos
    if kind == 45:  # '-'
        message = line.decode(errors="replace")
        return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message), pos
    raise RedisConnectionError(f"unexpected reply from Redis: {bytes(buffer[pos - len(line) - 3 : pos])!r}")


class _Protocol(asyncio.Protocol):
    """Replies matched to waiters in order; each waiter is [future, replies expected, replies]."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[list[Any]] = deque()
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buffer):
                reply, end = parse(buffer, pos)
                if not waiters:
                    raise RedisConnectionError("a reply nobody asked for")
                pos = end
                waiter = waiters[0]
                waiter[2].append(reply)
                if len(waiter[2]) == waiter[1]:
                    waiters.popleft()
                    future = waiter[0]
                    if not future.done():  # else its caller timed out and left
                        future.set_result(waiter[2])
        except (ValueError, IndexError):  # an incomplete reply: wait for more
            pass
        except Exception as exc:  # garbage, or a reply nobody waits for: this connection is done
            self.fail(RedisConnectionError(str(exc) or type(exc).__name__))
            return
        del buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        while self.waiters:
            future = self.waiters.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


def _expire(future: asyncio.Future[Any], protocol: _Protocol) -> None:
    if not future.done():
        future.set_exception(TimeoutError())
        protocol.fail(RedisConnectionError("a call timed out"))  # the others on it fail too: never reused


class LeanConnection:
    """One pipelined connection to the Redis of ``url`` (see the module docstring)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def execute(self, packed: bytes, replies: int = 1) -> list[Any]:
        """Send ``packed`` (``replies`` commands) and return their replies, errors included as
        values; ``TimeoutError`` after ``timeout`` (the connection is dropped: it may hang). A caller
        that is cancelled leaves its reply to be skipped."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            async with asyncio.timeout(self.timeout):
                protocol = await self._connect()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        protocol.waiters.append([future, replies, []])
        protocol.transport.write(packed)  # type: ignore[union-attr]
        timer = loop.call_at(loop.time() + self.timeout, _expire, future, protocol)
        try:
            return await future
        finally:
            timer.cancel()

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            parts = urlsplit(self.url)
            if parts.scheme == "unix":
                _, protocol = await loop.create_unix_connection(_Protocol, parts.path)
            else:
                context = ssl.create_default_context() if parts.scheme == "rediss" else None
                host, port = parts.hostname or "localhost", parts.port or 6379
                _, protocol = await loop.create_connection(_Protocol, host, port, ssl=context)
            setup = []
            if parts.password is not None:
                user = unquote(parts.username) if parts.username else None
                setup.append(pack("AUTH", *([user] if user else []), unquote(parts.password)))
            db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
            if db and db != "0":
                setup.append(pack("SELECT", db))
            if setup:
                future = loop.create_future()
                protocol.waiters.append([future, len(setup), []])
                protocol.transport.write(b"".join(setup))  # type: ignore[union-attr]
                for reply in await future:
                    if isinstance(reply, Exception):
                        protocol.fail(reply)
                        raise reply
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("closed"))
            self._protocol = None
