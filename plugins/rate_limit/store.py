"""Where rate-limit counters live: the ``LimitStore`` interface, its charges and answers, and the
in-memory ``MemoryStore`` (exact sliding windows); the app holds the store under ``store_key``."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

WINDOW = 60.0  # seconds: limits are per minute


@dataclass(frozen=True, slots=True)
class Charge:
    """Take ``amount`` from ``bucket`` (capacity ``limit``): per sliding ``window`` of seconds, or
    with no window a concurrency slot, held until released (in a shared store, under a ``lease`` of
    seconds its holder renews). ``bucket`` is ``<scope>:<kind>``: a shared store keeps the buckets of
    one scope (``k:<key>``, ``m:<model>``) together."""

    bucket: str
    limit: int
    amount: int = 1
    window: float | None = WINDOW
    lease: float = 0.0


@dataclass(slots=True)
class Quota:
    """A bucket as a charge found it: ``remaining`` after the charge if granted, ``reset`` seconds
    until the bucket is full again, ``wait`` seconds until the charge fits (0: it did; ``math.inf``:
    never, it exceeds the limit; None: unknown, when a request in progress ends). ``remaining`` is
    None when the store could not say (Redis down under ``on_error: allow``): no headers then."""

    limit: int
    remaining: int | None
    reset: float
    wait: float | None


@dataclass(slots=True)
class Grant:
    """The outcome of ``acquire``: all charges taken, or none. ``receipts[i]`` (granted only) is
    what ``settle``/``release`` take for ``charges[i]``."""

    granted: bool
    quotas: list[Quota]
    receipts: list[Any] = field(default_factory=list)


class LimitStore(Protocol):
    """Where rate-limit counters live; every method is atomic."""

    async def acquire(self, charges: Sequence[Charge]) -> Grant:
        """Take every charge if all fit, else none."""

    async def settle(self, receipt: Any, amount: int) -> None:
        """Correct the amount of a window charge (the estimated tokens -> the actual ones)."""

    async def release(self, receipt: Any) -> None:
        """Give back a concurrency slot."""

    async def finish(self, slots: Sequence[Any], settles: Sequence[tuple[Any, int]]) -> None:
        """A request ended: release its ``slots`` and settle its token charges (receipt, actual
        amount), at once; runs to its end even if the caller is cancelled meanwhile."""


class _Window:
    """The charges of one bucket in the last ``length`` seconds, oldest first, and their sum: times
    and amounts side by side (plain numbers, nothing for the garbage collector to walk). The charge
    numbered ``n`` (the ``n``-th appended, from 0) sits at ``n - dropped``."""

    __slots__ = ("amounts", "dropped", "length", "times", "total")

    def __init__(self, length: float) -> None:
        self.times: deque[float] = deque()
        self.amounts: deque[int] = deque()
        self.length = length
        self.total = 0
        self.dropped = 0  # charges expired so far

    def expire(self, now: float) -> None:
        times, edge = self.times, now - self.length
        while times and times[0] <= edge:
            times.popleft()
            self.total -= self.amounts.popleft()
            self.dropped += 1

    def wait(self, amount: int, limit: int, now: float) -> float:
        excess = self.total + amount - limit
        if excess <= 0:
            return 0.0
        if amount > limit:
            return math.inf
        for at, taken in zip(self.times, self.amounts, strict=True):
            excess -= taken
            if excess <= 0:
                return at + self.length - now
        return math.inf  # not reached: the amounts sum to the total

    def reset(self, now: float) -> float:
        return self.times[-1] + self.length - now if self.times else 0.0


class MemoryStore:
    """A ``LimitStore`` in this process's memory (exact sliding windows); ``clock`` is injectable.
    Nothing in it waits: ``acquire_now`` and ``finish_now`` are its methods without a coroutine,
    which the plugin calls directly."""

    SWEEP_EVERY = 1000  # acquisitions between two sweeps of empty windows

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._slots: dict[str, int] = {}
        self._calls = 0

    async def acquire(self, charges: Sequence[Charge]) -> Grant:
        return self.acquire_now(charges)

    def acquire_now(self, charges: Sequence[Charge]) -> Grant:
        now = self.clock()
        self._calls += 1
        if self._calls % self.SWEEP_EVERY == 0:
            self._sweep(now)
        quotas: list[Quota] = []
        fits = True
        for charge in charges:
            quota = self._quota(charge, now)
            quotas.append(quota)
            fits = fits and quota.wait == 0
        if not fits:
            return Grant(False, quotas)
        receipts: list[Any] = []
        for charge in charges:
            if charge.window is None:
                self._slots[charge.bucket] = self._slots.get(charge.bucket, 0) + charge.amount
                receipts.append((charge.bucket, charge.amount))
            else:  # the charge joins its window; its receipt: the window, the charge's number
                window = self._windows[charge.bucket]
                window.times.append(now)
                window.amounts.append(charge.amount)
                window.total += charge.amount
                receipts.append((window, window.dropped + len(window.times) - 1))
        return Grant(True, quotas, receipts)

    def _quota(self, charge: Charge, now: float) -> Quota:
        if charge.window is None:
            used = self._slots.get(charge.bucket, 0)
            fits = used + charge.amount <= charge.limit
            return Quota(charge.limit, charge.limit - used - (charge.amount if fits else 0), 0.0, 0.0 if fits else None)
        window = self._windows.get(charge.bucket)
        if window is None:
            window = self._windows[charge.bucket] = _Window(charge.window)
        times = window.times
        if times and times[0] <= now - window.length:
            window.expire(now)
        limit, amount, total = charge.limit, charge.amount, window.total
        if total + amount <= limit:  # it fits
            reset = charge.window if amount else window.reset(now)
            return Quota(limit, limit - total - amount, reset, 0.0)
        return Quota(limit, max(0, limit - total), window.reset(now), window.wait(amount, limit, now))

    async def settle(self, receipt: Any, amount: int) -> None:
        self._settle(receipt, amount)

    def _settle(self, receipt: Any, amount: int) -> None:
        window, number = receipt
        at = number - window.dropped
        if at >= 0 and window.times[at] > self.clock() - window.length:  # still counted (else it left as it was)
            window.total += amount - window.amounts[at]
            window.amounts[at] = amount

    async def release(self, receipt: Any) -> None:
        self._release(receipt)

    def _release(self, receipt: Any) -> None:
        bucket, amount = receipt
        left = self._slots.get(bucket, 0) - amount
        if left > 0:
            self._slots[bucket] = left
        else:
            self._slots.pop(bucket, None)

    async def finish(self, slots: Sequence[Any], settles: Sequence[tuple[Any, int]]) -> None:
        self.finish_now(slots, settles)

    def finish_now(self, slots: Sequence[Any], settles: Sequence[tuple[Any, int]]) -> None:
        for receipt in slots:
            self._release(receipt)
        for receipt, amount in settles:
            self._settle(receipt, amount)

    def _sweep(self, now: float) -> None:
        for bucket, window in list(self._windows.items()):
            window.expire(now)
            if not window.times:
                del self._windows[bucket]


store_key = web.AppKey("rate_limit_store", LimitStore)
