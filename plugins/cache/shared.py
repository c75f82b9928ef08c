"""The response cache in the state store (``state.store: redis``): answers shared by every instance,
single-flight across instances with a short lock, ``Idempotency-Key`` records.

Keys (under the store's ``key_prefix``; the keys of one script share a hash tag, one Cluster slot):

- ``cache.v1:{<request key>}``: the answer (its JSON), set with a TTL (``PX``);
- ``cache.v1:{<request key>}:lock``: the single-flight lock, ``SET NX PX lock_ttl`` with a random
  token, renewed every ``lock_ttl / 3`` while its request runs, deleted (if still its holder's) when
  the answer is stored or the request fails; a dead holder's lock expires after ``lock_ttl``;
- ``idem.v1:{<idempotency key>}``: ``P<request><token>`` while the first request runs (renewed like
  the lock), then ``D<request><answer>`` for ``idempotency_ttl``; ``<request>`` is the 32-digit
  request key, so the same key with another body is seen at once.

Each step is one script (one round trip): a lookup reads the answer or takes the lock; a follower
polls that script (5 ms, doubling to 50 ms) until the answer is there, the lock is free (its holder
failed or died: the follower goes upstream itself, holding the lock) or ``wait`` has passed.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

from gateway.state import Script, Store, StoreUnavailable

POLL_FIRST, POLL_MAX = 0.005, 0.05
TOKEN = 16  # hex digits of a holder's random token


def _live(data: dict[str, Any], key: str, now: float) -> bytes | None:
    entry = data.get(key)
    if entry is None or entry[1] <= now:
        data.pop(key, None)
        return None
    return entry[0]


def _bytes(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _claim(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    if str(args[2]) == "1" and (answer := _live(data, keys[0], now)) is not None:
        return [1, answer]
    if _live(data, keys[1], now) is None:
        data[keys[1]] = (_bytes(args[0]), now + int(args[1]) / 1000)
        return [2]
    return [0]


def _store(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    data[keys[0]] = (_bytes(args[1]), now + int(args[2]) / 1000)
    if _live(data, keys[1], now) == _bytes(args[0]):
        del data[keys[1]]
    return 1


def _release(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    if _live(data, keys[0], now) == _bytes(args[0]):
        del data[keys[0]]
        return 1
    return 0


def _extend(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    if (value := _live(data, keys[0], now)) == _bytes(args[0]):
        data[keys[0]] = (value, now + int(args[1]) / 1000)
        return 1
    return 0


def _idem_claim(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    if (record := _live(data, keys[0], now)) is not None:
        return record
    data[keys[0]] = (_bytes(args[0]), now + int(args[1]) / 1000)
    return 1


def _idem_settle(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    if _live(data, keys[0], now) == _bytes(args[0]):
        data[keys[0]] = (_bytes(args[1]), now + int(args[2]) / 1000)
        return 1
    return 0


#: KEYS answer, lock; ARGV token, lock ms, read (1/0) -> {1, answer} | {2} (lock taken) | {0} (held)
CLAIM = Script(
    "cache.v1.claim",
    """if ARGV[3] == '1' then
  local answer = redis.call('GET', KEYS[1])
  if answer then return {1, answer} end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end
return {0}""",
    _claim,
)
#: KEYS answer, lock; ARGV token, answer, ttl ms: store the answer, release the lock if still ours
STORE = Script(
    "cache.v1.store",
    """redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1""",
    _store,
)
#: KEYS key; ARGV value: delete the key if it still holds value
RELEASE = Script(
    "cache.v1.release",
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
    _release,
)
#: KEYS key; ARGV value, ms: renew the key's TTL if it still holds value
EXTEND = Script(
    "cache.v1.extend",
    "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0",
    _extend,
)
#: KEYS record; ARGV pending value, lock ms -> the record, or 1 when it was absent and is now ours
IDEM_CLAIM = Script(
    "idem.v1.claim",
    """local record = redis.call('GET', KEYS[1])
if record then return record end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1""",
    _idem_claim,
)
#: KEYS record; ARGV pending value, done value, ttl ms: the answer, if the record is still ours
IDEM_SETTLE = Script(
    "idem.v1.settle",
    """if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0""",
    _idem_settle,
)


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))


class Held:
    """What a request holds in the store: the cache lock and/or its pending idempotency record, each
    as (key, value), renewed by a task until ``stop``."""

    __slots__ = ("lock", "record", "task")

    def __init__(self) -> None:
        self.lock: tuple[str, bytes] | None = None
        self.record: tuple[str, bytes] | None = None
        self.task: asyncio.Task[None] | None = None

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class IdempotencyConflict(Exception):
    """The key was used with another request."""


class SharedCache:
    """The cache's store operations (``Store.run`` of the scripts above); every call may raise
    ``StoreUnavailable``."""

    def __init__(self, store: Store, lock_ttl: float) -> None:
        self.store, self.lock_ttl = store, lock_ttl

    @staticmethod
    def keys(key: str) -> list[str]:
        return [f"cache.v1:{{{key}}}", f"cache.v1:{{{key}}}:lock"]

    async def lookup(self, key: str, read: bool, wait: float, held: Held) -> bytes | None:
        """The stored answer; else take the lock (``held.lock``) or, while another instance holds
        it, poll (``read``) until its answer is stored or it is gone; None: go upstream."""
        keys, token = self.keys(key), secrets.token_hex(TOKEN // 2).encode()
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + wait, POLL_FIRST
        while True:
            got = await self.store.run(CLAIM, keys, [token, _ms(self.lock_ttl), 1 if read else 0])
            if got[0] == 1:
                return got[1]
            if got[0] == 2:
                held.lock = (keys[1], token)
                return None
            if not read or loop.time() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def store_answer(self, key: str, data: bytes, ttl: float, held: Held) -> None:
        token = held.lock[1] if held.lock else b""
        await self.store.run(STORE, self.keys(key), [token, data, _ms(ttl)])
        held.lock = None

    async def claim_record(self, ikey: str, request: str, wait: float, held: Held) -> bytes | None:
        """The first answer of ``ikey`` (waiting while it runs), or None with the record now ours
        (``held.record``; not when ``wait`` passed). Raise ``IdempotencyConflict`` for another request."""
        key, exact = f"idem.v1:{{{ikey}}}", request.encode()
        mine = b"P" + exact + secrets.token_hex(TOKEN // 2).encode()
        loop = asyncio.get_running_loop()
        deadline, delay = loop.time() + wait, POLL_FIRST
        while True:
            got = await self.store.run(IDEM_CLAIM, [key], [mine, _ms(self.lock_ttl)])
            if got == 1:
                held.record = (key, mine)
                return None
            if got[1 : 1 + len(exact)] != exact:
                raise IdempotencyConflict()
            if got[:1] == b"D":
                return got[1 + len(exact) :]
            if loop.time() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, POLL_MAX)

    async def settle_record(self, data: bytes | None, ttl: float, held: Held) -> None:
        """The answer into the record held (kept ``ttl``), or, after a failure, the record freed."""
        if held.record is None:
            return
        key, mine = held.record
        held.record = None
        if data is None:
            await self.store.run(RELEASE, [key], [mine])
        else:
            await self.store.run(IDEM_SETTLE, [key], [mine, b"D" + mine[1:-TOKEN] + data, _ms(ttl)])

    async def release(self, held: Held) -> None:
        if held.lock is not None:
            key, token = held.lock
            held.lock = None
            await self.store.run(RELEASE, [key], [token])

    def keep(self, held: Held) -> None:
        """Renew what ``held`` holds every ``lock_ttl / 3`` until ``held.stop()``."""
        if held.task is None and (held.lock or held.record):
            held.task = asyncio.create_task(self._renew(held))

    async def _renew(self, held: Held) -> None:
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            for kept in (held.lock, held.record):
                if kept is not None:
                    try:
                        await self.store.run(EXTEND, [kept[0]], [kept[1], _ms(self.lock_ttl)])
                    except StoreUnavailable:  # Redis away: the lock lapses, others go upstream
                        pass
