"""gateway/resilience/watchdog.py: every watchdog of a loop on one timer, each firing at its own time."""

from __future__ import annotations

import asyncio
import threading
import time

from gateway.resilience import watchdog as watchdog_module
from gateway.resilience.watchdog import Watchdog


async def silent_wait(limit: float, started: list[float]) -> float:
    """Wait on a "backend" that never answers, under a watchdog of ``limit`` seconds: the seconds until
    the watchdog cut the wait."""
    watchdog = Watchdog(limit)
    watchdog.waiting()
    started.append(time.monotonic())
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        assert watchdog.expired()
        return time.monotonic() - started[-1]
    finally:
        watchdog.stop()
    raise AssertionError("the watchdog did not fire")


async def test_a_shorter_limit_armed_after_a_longer_one_fires_on_time() -> None:
    started: list[float] = []
    long = asyncio.create_task(silent_wait(0.6, started))
    await asyncio.sleep(0.01)
    short = asyncio.create_task(silent_wait(0.05, started))
    assert 0.04 <= await short < 0.3
    assert not long.done()
    assert 0.55 <= await long < 1.0


async def test_a_stopped_watchdog_never_fires_and_leaves_the_clock() -> None:
    kept = Watchdog(0.05)
    kept.waiting()
    kept.stop()
    clock = watchdog_module._clock(asyncio.get_running_loop())
    assert kept not in clock.watchdogs
    await asyncio.sleep(0.15)  # past its time: the task goes on
    started: list[float] = []
    assert 0.04 <= await silent_wait(0.05, started) < 0.3  # the clock still serves the next one
    assert not clock.watchdogs


async def test_many_watchdogs_fire_each_at_its_own_time() -> None:
    started: list[float] = []
    limits = [0.05, 0.2, 0.1, 0.15, 0.05]
    waited = await asyncio.gather(*(silent_wait(limit, started) for limit in limits))
    for limit, seconds in zip(limits, waited, strict=True):
        assert limit - 0.01 <= seconds < limit + 0.15, (limit, seconds)


def test_each_loop_has_its_own_clock() -> None:
    """Two loops in two threads at once: each one's watchdogs fire on its own timer."""
    results: list[float] = []

    def run() -> None:
        results.append(asyncio.run(silent_wait(0.05, [])))

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    assert len(results) == 2 and all(0.04 <= seconds < 0.5 for seconds in results)
