"""The ``rate_limit`` plugin's counters in the shared state store (``state.store: redis``): every
instance and worker pointed at one Redis enforces one limit.

One round trip per request: ``ACQUIRE`` checks every charge and takes all or none, atomically,
on Redis's clock (``TIME``). Windows are GCRA (a "theoretical arrival time" per bucket, one number
in Redis: the same burst as a minute's sliding window, then a steady refill of ``limit`` per 60 s;
weighted charges, i.e. tokens, cost nothing more). Concurrency slots are sorted-set members scored
with a lease expiry (``LEASE`` seconds): released when the request ends, expired if the process
holding them dies. All keys sit under one hash tag (``{rl.v1}``): one Cluster slot, so a request's
key and model budgets are checked in the same step; ``v1`` is the version of the script and of the
key layout. With the store unavailable: ``on_error: allow`` serves uncounted, ``deny`` answers 503.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import Any

from gateway.state import Script, Store, StoreUnavailable
from gateway_plugins.rate_limit.store import Grant, Quota

TAG = "{rl.v1}"
LEASE = 900  # seconds a concurrency slot is held at most (a process that dies holding it)

_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
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
      redis.call('PEXPIRE', KEYS[i], lease)
    end
  end
end
return {ok, out}
"""

_SETTLE = """
local tat = tonumber(redis.call('GET', KEYS[1]))
if not tat then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
tat = tat + tonumber(ARGV[1]) * tonumber(ARGV[3]) / tonumber(ARGV[2])
if tat <= now then redis.call('DEL', KEYS[1]) return 1 end
redis.call('SET', KEYS[1], tostring(tat), 'PX', math.ceil(tat - now) + 1000)
return 1
"""

_RELEASE = "return redis.call('ZREM', KEYS[1], ARGV[1])"


def _no_twin(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> Any:
    """These scripts run only in Redis: the memory store keeps the plugin's own ``MemoryStore``."""
    raise TypeError("rate_limit's shared scripts need state.store: redis")


ACQUIRE = Script("rate_limit.acquire.v1", _ACQUIRE, _no_twin)
SETTLE = Script("rate_limit.settle.v1", _SETTLE, _no_twin)
RELEASE = Script("rate_limit.release.v1", _RELEASE, _no_twin)


class SharedStore:
    """A ``LimitStore`` over the state store's Redis (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def acquire(self, charges: Sequence[Any]) -> Any:
        keys = [f"{TAG}:{charge.bucket}" for charge in charges]
        args: list[Any] = []  # per charge: limit, amount, window (ms, 0: a slot), lease (ms), slot member
        members = [secrets.token_hex(8) if charge.window is None else "" for charge in charges]
        for charge, member in zip(charges, members, strict=True):
            window_ms = int(charge.window * 1000) if charge.window is not None else 0
            args += [charge.limit, charge.amount, window_ms, LEASE * 1000, member]
        try:
            ok, out = await self.store.run(ACQUIRE, keys, args)
        except StoreUnavailable:
            if self.store.config.on_error == "deny":
                raise
            return Grant(True, [Quota(c.limit, c.limit, 0.0, 0.0) for c in charges], [None] * len(charges))
        quotas = []
        for i, charge in enumerate(charges):
            remaining, reset, wait = out[i * 3 : i * 3 + 3]
            waited = math.inf if wait == -1 else None if wait == -2 else wait / 1000
            quotas.append(Quota(charge.limit, int(remaining), reset / 1000, waited))
        if not ok:
            return Grant(False, quotas)
        receipts = [
            (key, c.limit, int(c.window * 1000), c.amount) if c.window is not None else (key, member)
            for key, c, member in zip(keys, charges, members, strict=True)
        ]
        return Grant(True, quotas, receipts)

    async def settle(self, receipt: Any, amount: int) -> None:
        """``receipt`` carries the estimate charged; correct it by the difference."""
        if receipt is None:
            return
        key, limit, window_ms, estimate = receipt
        if amount != estimate:
            try:
                await self.store.run(SETTLE, [key], [amount - estimate, limit, window_ms])
            except StoreUnavailable:
                pass  # the estimate stands; it leaves the window within a minute

    async def release(self, receipt: Any) -> None:
        if receipt is None:
            return
        try:
            await self.store.run(RELEASE, [receipt[0]], [receipt[1]])
        except StoreUnavailable:
            pass  # the slot's lease expires it
