"""The ``rate_limit`` plugin's counters in the shared state store (``state.store: redis``): every
instance and worker pointed at one Redis enforces one limit.

One round trip per request: ``ACQUIRE`` checks every charge and takes all or none, atomically,
on Redis's clock (``TIME``). Windows are GCRA (a "theoretical arrival time" per bucket, one number
in Redis: the same burst as a minute's sliding window, then a steady refill of ``limit`` per 60 s;
weighted charges, i.e. tokens, cost nothing more). Concurrency slots are sorted-set members scored
with a lease expiry (``concurrency_lease_seconds``): released when the request ends, renewed while
it lives (one pipelined call per process every third of the lease, for all its slots), expired if
the process holding them dies.

Keys: ``{k:<key>}:rl2:<kind>`` and ``{m:<model>}:rl2:<kind>`` (after ``key_prefix``). The hash tag
is the scope, so a key's buckets sit in one Cluster slot and different keys spread over the
cluster; ``rl2`` and the scripts' ``.v2`` are the version of the scripts and of the key layout (a
rolling deploy's old callers keep their ``{rl.v1}`` keys and never meet the new code). A request
charged to a key's and a model's budgets makes one script call per scope, pipelined (still one
round trip); if one refuses, the others' charges are given back (a second round trip, on refusal
only; racing requests may then be refused early, never admitted over a limit).

A key already over a window limit is refused from a local cache, without a round trip: a request
window until its ``Retry-After``, a token window for at most ``TOKENS_CACHED`` s (settlements may
lower it sooner). A key under its limit always asks Redis. With the store unavailable:
``on_error: allow`` serves uncounted (and sends no ``x-ratelimit-*`` headers), ``deny`` answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Sequence
from typing import Any

from gateway.state import Script, Store, StoreUnavailable
from gateway_plugins.rate_limit.store import Charge, Grant, Quota

VERSION = "rl2"
TOKENS_CACHED = 1.0  # seconds a token window over its limit is refused locally, at most
MAX_CACHED = 10_000  # refusals held locally (then the expired ones are dropped, or all)

_NOW = "local t = redis.call('TIME')\nlocal now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

_ACQUIRE = (
    _NOW
    + """
local ok, out, new = 1, {}, {}
for i = 1, #KEYS do
  local b = (i - 1) * 5
  local limit, amount, window = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local fits, remaining, reset, wait
  if window > 0 then
    local interval = window / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or now)
    if tat < now then tat = now end
    local ntat = tat + amount * interval
    fits = ntat - now <= window
    local used = tat
    if fits then used = ntat; wait = 0 elseif amount > limit then wait = -1 else wait = ntat - window - now end
    remaining = math.max(0, math.floor((window - (used - now)) / interval + 1e-9))
    reset = used - now
    new[i] = ntat
  else
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    local held = redis.call('ZCARD', KEYS[i])
    fits = held + amount <= limit
    remaining = limit - held
    if fits then remaining = remaining - amount; wait = 0 else wait = -2 end
    reset = 0
  end
  if not fits then ok = 0 end
  out[#out + 1] = remaining
  out[#out + 1] = math.ceil(reset)
  out[#out + 1] = math.ceil(wait)
end
if ok == 1 then
  for i = 1, #KEYS do
    local b = (i - 1) * 5
    if tonumber(ARGV[b + 3]) > 0 then
      redis.call('SET', KEYS[i], tostring(new[i]), 'PX', math.ceil(new[i] - now) + 1000)
    else
      local lease = tonumber(ARGV[b + 4])
      redis.call('ZADD', KEYS[i], now + lease, ARGV[b + 5])
      if redis.call('PTTL', KEYS[i]) < lease then redis.call('PEXPIRE', KEYS[i], lease) end
    end
  end
end
return {ok, out}
"""
)

_SETTLE = (
    """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
"""
    + _NOW
    + """
tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[3]) / tonumber(ARGV[2])
if tat <= now then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""
)

_RELEASE = "return redis.call('ZREM', KEYS[1], ARGV[1])"

_RENEW = (
    _NOW
    + """
local lease = tonumber(ARGV[2])
if redis.call('ZADD', KEYS[1], 'XX', 'CH', now + lease, ARGV[1]) == 0 then return 0 end
if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
return 1
"""
)


def _no_twin(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    """These scripts run only in Redis: the memory store keeps the plugin's own ``MemoryStore``."""
    raise TypeError("rate_limit's shared scripts need state.store: redis")


ACQUIRE = Script("rate_limit.acquire.v2", _ACQUIRE, _no_twin)
SETTLE = Script("rate_limit.settle.v2", _SETTLE, _no_twin)
RELEASE = Script("rate_limit.release.v2", _RELEASE, _no_twin)
RENEW = Script("rate_limit.renew.v2", _RENEW, _no_twin)


def redis_key(bucket: str) -> tuple[str, str]:
    """``k:team:requests`` -> (``{k:team}:rl2:requests``, its hash tag ``k:team``)."""
    scope, _, kind = bucket.rpartition(":")
    return f"{{{scope}}}:{VERSION}:{kind}", scope


def _args(charge: Charge, member: str) -> list[Any]:
    """Per charge: limit, amount, window (ms; 0: a slot), lease (ms), slot member."""
    window_ms = int(charge.window * 1000) if charge.window is not None else 0
    return [charge.limit, charge.amount, window_ms, int(charge.lease * 1000), member]


def _receipt(key: str, charge: Charge, member: str) -> tuple[Any, ...]:
    """What ``settle`` (a window: key, limit, window in ms, amount) or ``release`` (a slot: key,
    member) takes."""
    if charge.window is None:
        return (key, member)
    return (key, charge.limit, int(charge.window * 1000), charge.amount)


def _unknown(charges: Sequence[Charge]) -> list[Quota]:
    return [Quota(c.limit, None, 0.0, 0.0) for c in charges]


class SharedStore:
    """A ``LimitStore`` over the state store's Redis (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.refused: dict[str, tuple[float, int, int, float]] = {}  # key -> until, limit, amount, reset at
        self.held: dict[str, tuple[str, float]] = {}  # slot member -> its key, lease (s): renewed
        self._keys: dict[str, tuple[str, str, bool]] = {}  # bucket -> its Redis key, hash tag, requests?
        self._renewer: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()

    # Admission -----------------------------------------------------------------------------------

    async def acquire(self, charges: Sequence[Charge]) -> Grant:
        placed = [self._placed(c.bucket) for c in charges]
        keys = [key for key, _, _ in placed]
        if self.refused:
            local = self._refused_locally(charges, keys)
            if local is not None:
                return local
        members = [secrets.token_hex(8) if c.window is None else "" for c in charges]
        if len(placed) == 1 or all(p[1] == placed[0][1] for p in placed):  # one scope: one script call
            groups = [range(len(charges))]
            calls = [(ACQUIRE, keys, [a for c, m in zip(charges, members, strict=True) for a in _args(c, m)])]
        else:
            by_tag: dict[str, list[int]] = {}
            for i, (_, tag, _) in enumerate(placed):
                by_tag.setdefault(tag, []).append(i)
            groups = list(by_tag.values())
            calls = [
                (ACQUIRE, [keys[i] for i in idx], [a for i in idx for a in _args(charges[i], members[i])])
                for idx in groups
            ]
        run = self.store.run_many(calls)
        try:
            if all(p[2] for p in placed):  # requests only: a request counted when its client left still came
                answers = await run
            else:  # it reserves (tokens, slots): if the client leaves meanwhile, what it took goes back
                task = asyncio.ensure_future(run)
                try:
                    answers = await asyncio.shield(task)
                except asyncio.CancelledError:
                    task.add_done_callback(lambda done: self._abandoned(done, groups, charges, keys, members))
                    raise
        except StoreUnavailable:
            if self.store.config.on_error == "deny":
                raise
            return Grant(True, _unknown(charges), [None] * len(charges))
        quotas: list[Quota] = [None] * len(charges)  # type: ignore[list-item]
        granted: list[int] = []
        for idx, (ok, out) in zip(groups, answers, strict=True):
            for n, i in enumerate(idx):
                wait = out[n * 3 + 2]
                waited = 0.0 if wait == 0 else wait / 1000 if wait > 0 else math.inf if wait == -1 else None
                quotas[i] = Quota(charges[i].limit, out[n * 3], out[n * 3 + 1] / 1000, waited)
            if ok:
                granted.extend(idx)
        receipts = [_receipt(key, c, member) for key, c, member in zip(keys, charges, members, strict=True)]
        if len(granted) < len(charges):
            self._remember(charges, keys, quotas)
            if granted:  # another scope refused: give back what this one took
                await self._give_back([receipts[i] for i in granted], [charges[i] for i in granted])
            return Grant(False, quotas)
        for c, member, key in zip(charges, members, keys, strict=True):
            if c.window is None:
                self.held[member] = (key, c.lease)
                if self._renewer is None:  # one per process, for all its slots
                    self._renewer = asyncio.get_running_loop().create_task(self._renew())
        return Grant(True, quotas, receipts)

    def _abandoned(self, done: asyncio.Future[list[Any]], groups: Sequence[Sequence[int]], *of: Sequence[Any]) -> None:
        """``acquire`` was cancelled while Redis ran it: give back what the scopes that granted took."""
        if done.cancelled() or done.exception() is not None:
            return
        charges, keys, members = of
        taken = [i for idx, (ok, _) in zip(groups, done.result(), strict=True) if ok for i in idx]
        if taken:
            receipts = [_receipt(keys[i], charges[i], members[i]) for i in taken]
            self._track(self._give_back(receipts, [charges[i] for i in taken]))

    def _track(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    def _placed(self, bucket: str) -> tuple[str, str, bool]:
        """The bucket's Redis key and hash tag (``redis_key``), and whether it counts requests, remembered."""
        placed = self._keys.get(bucket)
        if placed is None:
            if len(self._keys) >= MAX_CACHED:
                self._keys.clear()
            key, tag = redis_key(bucket)
            placed = self._keys[bucket] = (key, tag, key.endswith(":requests"))
        return placed

    def _refused_locally(self, charges: Sequence[Charge], keys: Sequence[str]) -> Grant | None:
        """A refusal from the local cache, when a charge meets a window Redis refused and the wait
        Redis gave has not passed (never a grant: a key under its limit always asks Redis)."""
        now = time.monotonic()
        for i, key in enumerate(keys):
            hit = self.refused.get(key)
            if hit is None:
                continue
            until, limit, amount, reset_at = hit
            if now >= until or limit != charges[i].limit:
                del self.refused[key]
            elif charges[i].amount >= amount:
                quotas = _unknown(charges)
                quotas[i] = Quota(limit, 0, max(0.0, reset_at - now), until - now)
                return Grant(False, quotas)
        return None

    def _remember(self, charges: Sequence[Charge], keys: Sequence[str], quotas: Sequence[Quota]) -> None:
        now = time.monotonic()
        if len(self.refused) >= MAX_CACHED:
            self.refused = {k: v for k, v in self.refused.items() if v[0] > now}
            if len(self.refused) >= MAX_CACHED:
                self.refused.clear()
        for c, key, quota in zip(charges, keys, quotas, strict=True):
            wait = quota.wait
            if c.window is not None and wait is not None and 0 < wait < math.inf:
                hold = wait if key.endswith(":requests") else min(wait, TOKENS_CACHED)
                self.refused[key] = (now + hold, c.limit, c.amount, now + quota.reset)

    async def _give_back(self, receipts: Sequence[Any], charges: Sequence[Charge]) -> None:
        calls = [
            (SETTLE, [r[0]], [-c.amount, r[1], r[2]]) if c.window is not None else (RELEASE, [r[0]], [r[1]])
            for r, c in zip(receipts, charges, strict=True)
        ]
        with contextlib.suppress(StoreUnavailable):  # else the charges leave the window, the slots expire
            await self.store.run_many(calls)

    # The end of a request ------------------------------------------------------------------------

    async def settle(self, receipt: Any, amount: int) -> None:
        await self.finish((), [(receipt, amount)])

    async def release(self, receipt: Any) -> None:
        await self.finish([receipt], ())

    async def finish(self, slots: Sequence[Any], settles: Sequence[tuple[Any, int]]) -> None:
        """Release ``slots`` and correct each token charge by (actual - reserved), in one round trip;
        shielded, so that a second cancellation of the request cannot leave a slot held."""
        calls: list[tuple[Script, list[str], list[Any]]] = []
        for receipt in slots:
            if receipt is not None:
                self.held.pop(receipt[1], None)
                calls.append((RELEASE, [receipt[0]], [receipt[1]]))
        for receipt, amount in settles:
            if receipt is not None and amount != receipt[3]:
                key, limit, window_ms, reserved = receipt
                calls.append((SETTLE, [key], [amount - reserved, limit, window_ms]))
                if amount < reserved:
                    self.refused.pop(key, None)
        if not calls:
            return
        await asyncio.shield(self._track(self._run(calls)))

    async def _run(self, calls: list[tuple[Script, list[str], list[Any]]]) -> None:
        with contextlib.suppress(StoreUnavailable):  # the reservations leave the window; slots expire
            await (self.store.run_many(calls) if len(calls) > 1 else self.store.run(*calls[0]))

    # Leases --------------------------------------------------------------------------------------

    async def _renew(self) -> None:
        """Renew the leases of this process's live slots, every third of the shortest lease; ends
        when it holds none (the next slot starts it again)."""
        while self.held:
            await asyncio.sleep(min(lease for _, lease in self.held.values()) / 3)
            if not self.held:
                break
            calls = [(RENEW, [key], [member, int(lease * 1000)]) for member, (key, lease) in self.held.items()]
            with contextlib.suppress(StoreUnavailable):
                await self.store.run_many(calls)
        self._renewer = None

    async def close(self) -> None:
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None
