"""One timer per response: silence and deadline limits that cancel the task waiting on a backend."""

from __future__ import annotations

import asyncio


class Watchdog:
    """Cancels the current task when a backend stays silent too long, or when a deadline passes.

    ``timeout`` bounds the wait for the first output; once ``started()`` says it arrived, ``gap``
    (default: ``timeout``) bounds each wait between two chunks; ``deadline`` (a loop time, or None)
    bounds the whole response. One timer for the whole response, re-armed only when it fires: the
    per-chunk cost is two attribute writes (``since``), not a timer per chunk.

    ``watch_writes(seconds)`` also bounds each write to the client (``writing``: when the current one
    began): while it is on the timer fires at least every quarter of that, so a write the client has
    not accepted is cut within 1.25 times the limit.
    """

    __slots__ = (
        "_handle",
        "deadline",
        "fired",
        "gap",
        "loop",
        "reason",
        "since",
        "task",
        "timeout",
        "write_timeout",
        "writing",
    )

    def __init__(
        self,
        timeout: float,
        gap: float | None = None,
        deadline: float | None = None,
        write_timeout: float | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self.loop = loop = loop or asyncio.get_running_loop()
        self.task = asyncio.current_task(loop)
        self.timeout = timeout  # the silence allowed now
        self.gap = timeout if gap is None else gap
        self.deadline = deadline
        self.since: float | None = None  # when the current wait began; None while not waiting
        self.fired = False
        self.reason = ""  # after firing: "silence", "deadline" or "write"
        self.write_timeout = write_timeout  # see ``watch_writes``: given here, the timer is armed once
        self.writing: float | None = None  # when the current write to the client began; None: none
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

    def watch_writes(self, seconds: float) -> None:
        """From now on a write to the client may take at most ``seconds`` (``writing`` marks each one)."""
        if seconds == self.write_timeout:
            return
        self.write_timeout = seconds
        self._handle.cancel()
        self._handle = self.loop.call_at(self._due(self.loop.time()), self._check)

    def _due(self, now: float) -> float:
        due = (now if self.since is None else self.since) + self.timeout
        if self.write_timeout is not None:
            due = min(due, now + self.write_timeout / 4)
        return due if self.deadline is None else min(due, self.deadline)

    def _check(self) -> None:
        now = self.loop.time()
        if self.deadline is not None and now >= self.deadline:
            self.reason = "deadline"
        elif self.since is not None and now - self.since >= self.timeout:
            self.reason = "silence"
        elif self.writing is not None and now - self.writing >= self.write_timeout:  # type: ignore[operator]
            self.reason = "write"
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
