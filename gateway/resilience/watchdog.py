"""Silence and deadline limits that cancel the task waiting on a backend: one watchdog per response,
all of a loop's watchdogs on one timer."""

from __future__ import annotations

import asyncio
import math
import weakref


class Watchdog:
    """Cancels the current task when a backend stays silent too long, or when a deadline passes.

    ``timeout`` bounds the wait for the first output; once ``started()`` says it arrived, ``gap``
    (default: ``timeout``) bounds each wait between two chunks; ``deadline`` (a loop time, or None)
    bounds the whole response. Its time (``due``) is checked when it comes and only then moved on:
    the per-chunk cost is two attribute writes (``since``), not a timer per chunk; and it is kept
    on its loop's one timer (``_Clock``), not a timer of its own.

    ``watch_writes(seconds)`` also bounds each write to the client (``writing``: when the current one
    began): while it is on the timer fires at least every quarter of that, so a write the client has
    not accepted is cut within 1.25 times the limit.
    """

    __slots__ = (
        "_clock",
        "deadline",
        "due",
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
        self._clock = _clock(loop)
        self._clock.arm(self, self._due(loop.time()))

    def waiting(self) -> None:
        self.since = self.loop.time()

    def idle(self) -> None:
        self.since = None

    def started(self) -> None:
        """The first output arrived: from now on the silence allowed is ``gap``."""
        self.since = None
        shorter = self.gap < self.timeout
        self.timeout = self.gap
        if shorter:  # it is due later than the new limit allows
            self._clock.arm(self, self._due(self.loop.time()))

    def limit(self, timeout: float, gap: float | None = None) -> None:
        """New limits (the next attempt goes to another backend); the timer is re-armed."""
        self.timeout = timeout
        self.gap = timeout if gap is None else gap
        self._clock.arm(self, self._due(self.loop.time()))

    def watch_writes(self, seconds: float) -> None:
        """From now on a write to the client may take at most ``seconds`` (``writing`` marks each one)."""
        if seconds == self.write_timeout:
            return
        self.write_timeout = seconds
        self._clock.arm(self, self._due(self.loop.time()))

    def _due(self, now: float) -> float:
        due = (now if self.since is None else self.since) + self.timeout
        if self.write_timeout is not None:
            due = min(due, now + self.write_timeout / 4)
        return due if self.deadline is None else min(due, self.deadline)

    def check(self, now: float) -> None:
        """Its time came (``_Clock``): cancel the task if a limit passed, else move ``due`` on."""
        if self.deadline is not None and now >= self.deadline:
            self.reason = "deadline"
        elif self.since is not None and now - self.since >= self.timeout:
            self.reason = "silence"
        elif self.writing is not None and now - self.writing >= self.write_timeout:  # type: ignore[operator]
            self.reason = "write"
        else:
            self._clock.arm(self, self._due(now))
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
        self._clock.watchdogs.discard(self)


class _Clock:
    """One loop's timer for all its watchdogs, set for the earliest ``due`` among them; when it
    fires, each watchdog due is checked, then it is set for the next. Arming a watchdog is a set
    insertion (a timer of its own, uvloop's ``call_at`` and ``cancel``, cost 2.4 µs a response)."""

    __slots__ = ("__weakref__", "handle", "loop", "next", "watchdogs")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.watchdogs: set[Watchdog] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.next = math.inf  # when the timer fires

    def arm(self, watchdog: Watchdog, due: float) -> None:
        watchdog.due = due
        self.watchdogs.add(watchdog)
        if due < self.next:
            self._set(due)

    def _set(self, due: float) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.next, self.handle = due, self.loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self.next, self.handle = math.inf, None
        now = self.loop.time()
        soon = now + CLOCK_RESOLUTION  # a timer may fire that much early; a check too early re-arms
        for watchdog in [w for w in self.watchdogs if w.due <= soon]:
            self.watchdogs.discard(watchdog)
            watchdog.check(now)  # armed again unless it fired
        earliest = min((w.due for w in self.watchdogs), default=math.inf)
        if earliest < self.next:
            self._set(earliest)


#: Seconds by which a loop's timer may fire before its time (uvloop counts in milliseconds).
CLOCK_RESOLUTION = 0.001
#: Each loop's clock while it is in use (a watchdog or a pending timer holds it), by ``id(loop)``.
_clocks: weakref.WeakValueDictionary[int, _Clock] = weakref.WeakValueDictionary()
_last: _Clock | None = None  # the clock last used: most processes run one loop


def _clock(loop: asyncio.AbstractEventLoop) -> _Clock:
    """The clock of ``loop``."""
    global _last
    clock = _last
    if clock is None or clock.loop is not loop:
        clock = _clocks.get(id(loop))
        if clock is None or clock.loop is not loop:
            clock = _clocks[id(loop)] = _Clock(loop)
        _last = clock
    return clock
