"""A lean Redis connection for the hot path: scripts (``EVALSHA``) over one pipelined RESP2
connection per process, an ``asyncio.Protocol`` with a queue of waiters.

Every request's rate-limit check is one ``EVALSHA``; through redis-py's asyncio client that costs
about four times the CPU of writing the command and parsing its reply (connection checkout, command
packing, timeouts made of extra tasks, the generic parser). Here a call is one future and its packed
command appended to a list; the list is written once per event-loop iteration (auto-pipelining), so
under load the calls of many concurrent requests cost one write and their replies (Redis answers in
order) come back in one read. The connection is opened on first use (``AUTH`` and ``SELECT`` from
the URL), re-opened after it is lost, and dropped when a call times out, so that a half-open
connection is never reused (TCP keepalive is on as well); the calls queued on it then fail too.
Each call and each connect is bounded by ``timeout``: one timer per connection, at the oldest
unanswered call's deadline (not a timer or a task per call). The rest of the store (get, set,
locks) keeps redis-py.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

CRLF = b"\r\n"


def pack(*words: Any) -> bytes:
    """One command in RESP: an array of bulk strings (ints and strs encoded)."""
    return b"*%d\r\n" % len(words) + pack_args(words)


def pack_args(words: Sequence[Any]) -> bytes:
    """``words`` as RESP bulk strings, without the array's header (ints and strs encoded)."""
    if bytes not in map(type, words):  # one encode for them all
        text = "".join([f"${len(word)}\r\n{word}\r\n" for word in map(str, words)])
        data = text.encode()
        if len(data) == len(text):  # else some are not ASCII: their lengths are in bytes
            return data
    parts = []
    for word in words:
        kind = type(word)
        data = word if kind is bytes else b"%d" % word if kind is int else str(word).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def parse(buffer: bytes | bytearray, pos: int) -> tuple[Any, int]:
    """The reply at ``pos`` and the position after it; ``ValueError`` or ``IndexError`` when it is
    incomplete. An error reply is a ``ResponseError`` (``NoScriptError`` for ``NOSCRIPT``) returned,
    not raised."""
    end = buffer.index(CRLF, pos)  # ValueError: incomplete
    kind = buffer[pos]
    if kind == 58:  # ':'
        return int(buffer[pos + 1 : end]), end + 2
    if kind == 42:  # '*': the integers of a script's reply parsed here, the rest recursively
        count = int(buffer[pos + 1 : end])
        pos = end + 2
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            if buffer[pos] == 58:  # IndexError: incomplete
                end = buffer.index(CRLF, pos)
                items.append(int(buffer[pos + 1 : end]))
                pos = end + 2
            else:
                item, pos = parse(buffer, pos)
                items.append(item)
        return items, pos
    line = bytes(buffer[pos + 1 : end])
    pos = end + 2
    if kind == 36:  # '$'
        size = int(line)
        if size < 0:
            return None, pos
        if len(buffer) < pos + size + 2:
            raise IndexError
        return bytes(buffer[pos : pos + size]), pos + size + 2
    if kind == 43:  # '+'
        return line.decode(), pos
    if kind == 45:  # '-'
        message = line.decode(errors="replace")
        return (NoScriptError if message.startswith("NOSCRIPT") else ResponseError)(message), pos
    raise RedisConnectionError(f"unexpected reply from Redis: {bytes(buffer[pos - len(line) - 3 : pos])!r}")


class _Protocol(asyncio.Protocol):
    """Replies matched to waiters in order; each waiter is [future, replies expected, replies,
    deadline]. Commands wait in ``pending`` until ``flush``, once per event-loop iteration, writes
    them all at once; ``watch`` (one timer, armed at the oldest waiter's deadline) bounds every call."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.timeout = timeout
        self.transport: asyncio.Transport | None = None
        self.waiters: deque[list[Any]] = deque()
        self.pending: list[bytes] = []
        self.timer: asyncio.TimerHandle | None = None
        self.buffer = bytearray()
        self.closed = False
        self.writes = 0  # transport writes of commands (tests: fewer than calls under load)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def send(self, packed: bytes, replies: int) -> asyncio.Future[list[Any]]:
        """Queue ``packed`` (``replies`` commands) for this iteration's write; its replies' future."""
        loop = self.loop
        future = loop.create_future()
        deadline = loop.time() + self.timeout
        self.waiters.append([future, replies, [], deadline])
        pending = self.pending
        if not pending:
            loop.call_soon(self.flush)
        pending.append(packed)
        if self.timer is None:
            self.timer = loop.call_at(deadline, self.watch)
        return future

    def flush(self) -> None:
        pending = self.pending
        if pending and not self.closed:
            self.writes += 1
            self.transport.write(pending[0] if len(pending) == 1 else b"".join(pending))  # type: ignore[union-attr]
        pending.clear()

    def watch(self) -> None:
        """At the oldest waiter's deadline: if it has not been answered (its caller may have left),
        it times out and the connection is dropped, as it may hang (the calls queued behind it fail
        too); else the timer moves to the next oldest."""
        self.timer = None
        if self.closed or not self.waiters:
            return
        head = self.waiters[0]
        if head[3] <= self.loop.time():
            if not head[0].done():
                head[0].set_exception(TimeoutError())
            self.fail(RedisConnectionError("a call timed out"))
        else:
            self.timer = self.loop.call_at(head[3], self.watch)

    def data_received(self, data: bytes) -> None:
        buffer: bytes | bytearray = self.buffer
        if buffer:
            buffer += data  # type: ignore[operator]
        else:  # the usual case: parsed where it arrived, only an incomplete tail is kept
            buffer = data
        pos = 0
        waiters = self.waiters
        try:
            while pos < len(buffer):
                reply, end = parse(buffer, pos)
                if not waiters:
                    raise RedisConnectionError("a reply nobody asked for")
                pos = end
                waiter = waiters[0]
                if waiter[1] == 1:
                    waiters.popleft()
                    future = waiter[0]
                    if not future.done():  # else its caller timed out or left
                        future.set_result([reply])
                    continue
                waiter[2].append(reply)
                if len(waiter[2]) == waiter[1]:
                    waiters.popleft()
                    future = waiter[0]
                    if not future.done():
                        future.set_result(waiter[2])
        except (ValueError, IndexError):  # an incomplete reply: wait for more
            pass
        except Exception as exc:  # garbage, or a reply nobody waits for: this connection is done
            self.fail(RedisConnectionError(str(exc) or type(exc).__name__))
            return
        if buffer is data:
            if pos < len(data):
                self.buffer += data[pos:]
        else:
            del self.buffer[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(RedisConnectionError("Redis closed the connection"))

    def fail(self, exc: Exception) -> None:
        self.closed = True
        self.pending.clear()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        while self.waiters:
            future = self.waiters.popleft()[0]
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()


class LeanConnection:
    """One pipelined connection to the Redis of ``url`` (see the module docstring)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    def execute(self, packed: bytes, replies: int = 1) -> Awaitable[list[Any]]:
        """Send ``packed`` (``replies`` commands) and return their replies, errors included as
        values; ``TimeoutError`` after ``timeout`` (the connection is dropped: it may hang). The
        command goes out with the others of this event-loop iteration, in one write. A caller that
        is cancelled leaves its reply to be skipped."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            return self._execute_connecting(packed, replies)
        return protocol.send(packed, replies)

    async def _execute_connecting(self, packed: bytes, replies: int) -> list[Any]:
        async with asyncio.timeout(self.timeout):
            protocol = await self._connect()
        return await protocol.send(packed, replies)

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._protocol is not None and not self._protocol.closed:
                return self._protocol
            loop = asyncio.get_running_loop()
            parts = urlsplit(self.url)
            timeout = self.timeout

            def factory() -> _Protocol:
                return _Protocol(loop, timeout)

            if parts.scheme == "unix":
                _, protocol = await loop.create_unix_connection(factory, parts.path)
            else:
                context = ssl.create_default_context() if parts.scheme == "rediss" else None
                host, port = parts.hostname or "localhost", parts.port or 6379
                _, protocol = await loop.create_connection(factory, host, port, ssl=context)
            setup = []
            if parts.password is not None:
                user = unquote(parts.username) if parts.username else None
                setup.append(pack("AUTH", *([user] if user else []), unquote(parts.password)))
            db = parts.path.lstrip("/") if parts.scheme != "unix" else ""
            if db and db != "0":
                setup.append(pack("SELECT", db))
            if setup:
                for reply in await protocol.send(b"".join(setup), len(setup)):
                    if isinstance(reply, Exception):
                        protocol.fail(reply)
                        raise reply
            self._protocol = protocol
            return protocol

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.fail(RedisConnectionError("closed"))
            self._protocol = None
