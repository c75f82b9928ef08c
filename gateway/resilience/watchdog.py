"""One timer per response: silence and deadline limits that cancel the task waiting on a backend."""

from __future__ import annotations

import asyncio


class Watchdog:
    """Cancels the current task when a backend stays silent too long, or when a deadline passes.

    ``timeout`` bounds the wait for the first output; once ``started()`` says it arrived, ``gap``
    (default: ``timeout``) bounds each wait between two chunks; ``deadline`` (a loop time, or None)
    bounds the whole response. One timer for the whole response, re-armed only when it fires: the
    per-chunk cost is two attribute writes (``since``), not a timer per chunk.
    """

    __slots__ = ("_handle", "deadline", "fired", "gap", "loop", "reason", "since", "task", "timeout")

    def __init__(self, timeout: float, gap: float | None = None, deadline: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        self.timeout = timeout  # the silence allowed now
        self.gap = timeout if gap is None else gap
        self.deadline = deadline
        self.since: float | None = None  # when the current wait began; None while not waiting
        self.fired = False
        self.reason = ""  # after firing: "silence" or "deadline"
        self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def waiting(self) -> None:
        self.since = self.loop.time()

    def idle(self) -> None:
        self.since = None

    def started(self) -> None:
        """The first output arrived: from now on the silence allowed is ``gap``."""
        self.since = None
        shorter = self.gap < self.timeout
        self.timeout = self.gap
        if shorter:  # the timer is due later than the new limit allows
            self._handle.cancel()
            self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def limit(self, timeout: float, gap: float | None = None) -> None:
        """New limits (the next attempt goes to another backend); the timer is re-armed."""
        self.timeout = timeout
        self.gap = timeout if gap is None else gap
        self._handle.cancel()
        self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def _due(self, now: float) -> float:
        due = (now if self.since is None else self.since) + self.timeout
        return due if self.deadline is None else min(due, self.deadline)

    def _check(self) -> None:
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.reason = "deadline"
        elif self.since is not None and now - self.since >= self.timeout:
            self.reason = "silence"
        else:
            self._handle = self.loop.call_at(self._due(now), self._check)
            return
        self.fired = True
        assert self.task is not None
        self.task.cancel()

    def expired(self) -> bool:
        """After a ``CancelledError``: True if this watchdog caused it (the cancel is then withdrawn)."""
        if not self.fired:
            return False
        self.fired = False
        assert self.task is not None
        self.task.uncancel()
        return True

    def stop(self) -> None:
        self._handle.cancel()
