"""The Redis store: redis-py's asyncio client, one connection pool per process, every call bounded
by ``timeout_ms`` and guarded by a breaker, so that a dead Redis costs one timeout per
``breaker_s`` rather than one per request, and the gateway recovers by itself. Scripts (the hot path:
one per rate-limited request) go over ``gateway.state.resp``'s lean pipelined connection."""

from __future__ import annotations

import asyncio
import secrets
import time
from bisect import bisect_left
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
import structlog
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from gateway.state.config import StateConfig
from gateway.state.resp import LeanConnection, pack, pack_args
from gateway.state.script import Script, StoreUnavailable

T = TypeVar("T")
log = structlog.get_logger("gateway.state")

#: Round-trip latency buckets (seconds) of the histogram on /info and /metrics.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

MAX_HEADS = 10_000  # packed EVALSHA commands and heads remembered (then forgotten all at once)

_PLAIN = frozenset((int, str, bytes))  # argument types whose values can key a packed command

_UNLOCK = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Breaker:
    """Open after a failed call for ``period`` seconds; then one call is let through (half-open):
    success closes it, failure opens it again. ``outage`` is True from the first failure until a
    success (so an outage is logged once, at its start, and once at its end)."""

    __slots__ = ("_clock", "_probing", "open_until", "outage", "period")

    def __init__(self, period: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = period
        self.open_until = 0.0
        self.outage = False
        self._probing = False
        self._clock = clock

    def allows(self) -> bool:
        if not self.outage:
            return True
        if self._probing or self._clock() < self.open_until:
            return False
        self._probing = True
        return True

    def failed(self) -> bool:
        """Record a failure; True when it starts an outage."""
        started = not self.outage
        self.outage, self._probing = True, False
        self.open_until = self._clock() + self.period
        return started

    def succeeded(self) -> bool:
        """Record a success; True when it ends an outage."""
        ended = self.outage
        self.outage = self._probing = False
        return ended


class RedisStore:
    """``Store`` in Redis (see ``gateway.state``)."""

    kind = "redis"

    def __init__(self, config: StateConfig) -> None:
        self.config = config
        assert config.url is not None
        timeout = config.timeout
        self.client = aioredis.Redis.from_url(
            config.url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=5,
            retry=Retry(NoBackoff(), 0),
            retry_on_timeout=False,
            max_connections=config.max_connections,
        )
        self.lean = LeanConnection(config.url, timeout)
        self.breaker = Breaker(config.breaker_s)
        self.errors = 0
        self.calls = 0
        self.latency = [0] * (len(BUCKETS) + 1)  # per bucket, the last is +Inf
        self.latency_sum = 0.0
        self.last_error: str | None = None
        self._heads: dict[tuple[Any, ...], bytes] = {}  # (script, argument count, *keys) -> EVALSHA head
        self._packed: dict[tuple[Any, ...], bytes] = {}  # (script, *keys, *args) -> the whole EVALSHA

    def key(self, key: str) -> str:
        return self.config.key_prefix + key

    async def _call(self, call: Callable[..., Awaitable[T]], *args: Any, bounded: bool = False) -> T:
        """``call(*args)`` through the breaker, counted and timed; ``bounded``: it bounds itself by
        ``timeout_ms`` (the lean connection), else it is bounded here."""
        if not self.breaker.allows():
            raise StoreUnavailable()
        started = time.perf_counter()
        try:
            if bounded:
                result = await call(*args)
            else:
                async with asyncio.timeout(self.config.timeout):
                    result = await call(*args)
        except (RedisError, OSError, TimeoutError) as exc:
            self.errors += 1
            self.last_error = type(exc).__name__
            if self.breaker.failed():
                log.warning(
                    "state store unavailable", store="redis", error=self.last_error, on_error=self.config.on_error
                )
            raise StoreUnavailable() from None
        except BaseException:
            self.breaker.succeeded()  # cancelled: not Redis's fault; let the next call probe
            raise
        elapsed = time.perf_counter() - started
        self.calls += 1
        self.latency_sum += elapsed
        self.latency[bisect_left(BUCKETS, elapsed)] += 1
        if self.breaker.succeeded():
            log.warning("state store available again", store="redis")
        return result

    async def get(self, key: str) -> bytes | None:
        return await self._call(self.client.get, self.key(key))

    async def set(self, key: str, value: bytes | str, ttl: float | None = None, *, only_new: bool = False) -> bool:
        px = None if ttl is None else max(1, int(ttl * 1000))
        return bool(await self._call(self.client.set, self.key(key), value, None, px, only_new))

    async def delete(self, key: str) -> None:
        await self._call(self.client.delete, self.key(key))

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        call = (script, self._evalsha(script, keys, args))
        return (await self._call(self._scripts, (call,), bounded=True))[0]

    async def run_many(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        packed = [(script, self._evalsha(script, keys, args)) for script, keys, args in calls]
        return await self._call(self._scripts, packed, bounded=True)

    def _evalsha(self, script: Script, keys: list[str], args: list[Any]) -> bytes:
        """``EVALSHA`` of ``script`` in RESP, remembered whole per script, keys and arguments (a
        request's limit check repeats the same command), else its head (the sha, the key count, the
        prefixed keys) per script, keys and argument count, and only the arguments packed."""
        whole = (script, *keys, *args) if _PLAIN.issuperset(map(type, args)) else None  # 1 == 1.0 == True
        packed = self._packed.get(whole)  # type: ignore[arg-type]
        if packed is not None:
            return packed
        cached = (script, len(args), *keys)
        head = self._heads.get(cached)
        if head is None:
            if len(self._heads) >= MAX_HEADS:
                self._heads.clear()
            words = ["EVALSHA", script.sha, len(keys), *[self.key(k) for k in keys]]
            head = self._heads[cached] = b"*%d\r\n" % (len(words) + len(args)) + pack_args(words)
        packed = head + pack_args(args)
        if whole is not None:
            if len(self._packed) >= MAX_HEADS:
                self._packed.clear()
            self._packed[whole] = packed
        return packed

    async def _scripts(self, calls: Sequence[tuple[Script, bytes]]) -> list[Any]:
        """Each packed ``EVALSHA``, pipelined; the scripts Redis does not know (a restart, a
        failover) are loaded and only their calls run again (the others ran)."""
        lean = self.lean
        if len(calls) == 1:
            replies = await lean.execute(calls[0][1])
        else:
            replies = await lean.execute(b"".join([packed for _, packed in calls]), len(calls))
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            scripts = list({calls[i][0]: None for i in missing})
            for reply in await lean.execute(b"".join([pack("SCRIPT", "LOAD", s.lua) for s in scripts]), len(scripts)):
                if isinstance(reply, Exception):
                    raise reply
            again = await lean.execute(b"".join([calls[i][1] for i in missing]), len(missing))
            for i, reply in zip(missing, again, strict=True):
                replies[i] = reply
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    @asynccontextmanager
    async def lock(self, key: str, ttl: float) -> AsyncIterator[bool]:
        token = secrets.token_hex(8)
        held = await self.set(key, token, ttl, only_new=True)
        try:
            yield held
        finally:
            if held:
                full = self.key(key)
                await self._call(self.client.eval, _UNLOCK, 1, full, token)

    def describe(self) -> dict[str, Any]:
        return {
            "store": self.kind,
            "connected": not self.breaker.outage,
            "on_error": self.config.on_error,
            "calls": self.calls,
            "errors": self.errors,
            "last_error": self.last_error,
            "latency_seconds": {
                "buckets": dict(zip([*map(str, BUCKETS), "+Inf"], _cumulative(self.latency), strict=True)),
                "sum": round(self.latency_sum, 6),
                "count": self.calls,
            },
        }

    async def close(self) -> None:
        self.lean.close()
        await self.client.aclose()


def _cumulative(counts: list[int]) -> list[int]:
    total, out = 0, []
    for count in counts:
        total += count
        out.append(total)
    return out
