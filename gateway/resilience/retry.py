"""Retry policy helpers: which failures may be retried, back-off with jitter, the upstream's
``Retry-After``, and a per-model retry budget that keeps retries from multiplying an outage."""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable, Collection
from typing import Literal

from gateway.errors import GatewayError, RateLimitError, UpstreamError
from gateway.model_table import RetryConfig

#: The upstream error code that says a model cannot take the request, though another model may.
CONTEXT_LENGTH = "context_length_exceeded"

Verdict = Literal["retry", "fallback", "final"]


def verdict(error: BaseException, on_status: Collection[int] | None = None) -> Verdict:
    """``retry``: the deployment failed (5xx, 429, timeout, connection refused or reset): another
    attempt may succeed. ``fallback``: the model cannot serve this request (its context is too
    short): only another model may. ``final``: the request itself is wrong; the client sees it.
    With ``on_status`` (the model's ``retry.on_status``), an upstream's answer with a listed status
    is retried, a 429 or 5xx not listed is final; timeouts and broken connections are always retried."""
    status = getattr(error, "upstream_status", None)
    if on_status is not None and status is not None:
        if status in on_status:
            return "retry"
        if status >= 500 or status == 429:
            return "final"
    if isinstance(error, UpstreamError | RateLimitError):
        return "retry"
    if isinstance(error, GatewayError) and error.code == CONTEXT_LENGTH:
        return "fallback"
    return "final"


def retry_after(error: BaseException) -> float | None:
    """Seconds from an error's ``Retry-After`` header (a number or an HTTP date), if any."""
    headers = getattr(error, "headers", None)
    value = headers.get("Retry-After") if headers else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff(config: RetryConfig, retries: int, rand: Callable[[], float] = random.random) -> float:
    """Seconds before retry number ``retries`` (1, 2, ...) of the same deployment: exponential,
    capped, with equal jitter (half fixed, half random)."""
    delay = min(config.max_backoff, config.backoff * 2 ** (retries - 1))
    return delay / 2 + rand() * delay / 2


class RetryBudget:
    """Retries may add at most ``ratio`` of the requests of the last ``ttl`` seconds, plus
    ``min_per_second``: a failing model gets a bounded number of retries, not a multiple of its load.
    Counted in one-second buckets."""

    __slots__ = ("_clock", "_requests", "_retries", "_second", "min_per_second", "ratio", "ttl")

    def __init__(
        self, ratio: float, min_per_second: float, ttl: int = 10, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ratio, self.min_per_second, self.ttl = ratio, min_per_second, ttl
        self._clock = clock
        self._requests = [0] * ttl
        self._retries = [0] * ttl
        self._second = int(clock())

    def _advance(self) -> int:
        now = int(self._clock())
        if now != self._second:
            for s in range(max(self._second + 1, now - self.ttl + 1), now + 1):
                self._requests[s % self.ttl] = self._retries[s % self.ttl] = 0
            self._second = now
        return now % self.ttl

    def request(self) -> None:
        """A request's first attempt on this model."""
        self._requests[self._advance()] += 1

    def withdraw(self) -> bool:
        """Take one retry from the budget; False when it is spent."""
        slot = self._advance()
        allowed = self.ratio * sum(self._requests) + self.min_per_second * self.ttl
        if sum(self._retries) >= allowed:
            return False
        self._retries[slot] += 1
        return True
