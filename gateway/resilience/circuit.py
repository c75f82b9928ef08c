"""A circuit breaker for one deployment: closed -> open after N failures in a window -> after a
cool-down, half-open with a single probe request -> closed (the probe succeeded) or open again."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

from gateway.model_table import CircuitConfig

State = Literal["closed", "open", "half_open"]


class CircuitBreaker:
    """Counts a deployment's failures; ``available()`` says whether it may take a request now.

    The router calls ``available()`` to filter, then ``acquire()`` on the one it picked (which takes
    the probe slot when the cool-down is over); the pipeline reports ``success()``, ``failure()``, or
    ``release()`` for an attempt that ended without an outcome (cancelled).
    """

    __slots__ = ("_clock", "_failures", "config", "opened_at", "probing", "state")

    def __init__(self, config: CircuitConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.state: State = "closed"
        self.opened_at = 0.0
        self.probing = False  # the half-open probe is under way
        self._failures: deque[float] = deque()
        self._clock = clock

    def available(self) -> bool:
        """Closed, or open with the cool-down over and no probe under way."""
        if self.state == "closed":
            return True
        return not self.probing and self._clock() - self.opened_at >= self.config.cooldown

    def retry_in(self) -> float:
        """Seconds until ``available()`` may be true (0 when it is)."""
        if self.state == "closed" or self.probing:
            return 0.0 if self.state == "closed" else self.config.cooldown
        return max(0.0, self.opened_at + self.config.cooldown - self._clock())

    def acquire(self) -> None:
        """The router picked this deployment: past the cool-down, this request is the probe."""
        if self.state != "closed":
            self.state, self.probing = "half_open", True

    def success(self) -> None:
        if self.state != "closed":
            self.state, self.probing = "closed", False
            self._failures.clear()

    def failure(self) -> None:
        now = self._clock()
        if self.state != "closed":  # the probe failed: cool down again
            self._open(now)
            return
        failures = self._failures
        failures.append(now)
        while failures and now - failures[0] > self.config.window:
            failures.popleft()
        if len(failures) >= self.config.failures:
            self._open(now)

    def release(self) -> None:
        """An attempt ended without telling (cancelled): a probe slot is given back."""
        if self.probing:
            self.state, self.probing = "open", False

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.probing = "open", now, False
        self._failures.clear()

    def describe(self) -> dict[str, Any]:
        """For /info: the state, recent failures, and seconds until a probe may go."""
        info: dict[str, Any] = {"state": self.state, "recent_failures": len(self._failures)}
        if self.state != "closed":
            info["probe_in"] = round(self.retry_in(), 3)
        return info
