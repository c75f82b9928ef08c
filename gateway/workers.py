"""``gateway serve --workers N``: N processes serving one port (``SO_REUSEPORT``: the kernel spreads
connections over them), supervised by the parent.

The parent validates the config once, forks the workers, passes SIGTERM/SIGINT (as one SIGTERM,
so each worker shuts down gracefully once) and SIGHUP on to them, and restarts a worker that dies.
A worker that exits with an error within ``STARTUP_GRACE`` seconds of starting (the port is taken,
say) stops them all: restarting it would fail the same way. One killed by a signal is restarted.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import structlog

STARTUP_GRACE = 5.0

log = structlog.get_logger("gateway")


def supervise(count: int, serve: Callable[[], int]) -> int:
    """Run ``serve`` in ``count`` forked processes until a signal stops them; the exit status."""
    context = multiprocessing.get_context("fork")
    workers: dict[int, tuple[BaseProcess, float]] = {}
    stopping = False

    def start(slot: int) -> None:
        process = context.Process(target=_worker, args=(serve,), name=f"gateway-worker-{slot}")
        process.start()
        workers[slot] = (process, time.monotonic())

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            _signal_all(workers, signal.SIGTERM)

    def reload(signum: int, frame: object) -> None:
        _signal_all(workers, signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, reload)
    for slot in range(count):
        start(slot)
    log.info("workers started", workers=count, pids=[p.pid for p, _ in workers.values()])
    status = 0
    while workers:
        wait([p.sentinel for p, _ in workers.values()], timeout=1.0)
        for slot, (process, started) in list(workers.items()):
            if process.is_alive():
                continue
            del workers[slot]
            code = process.exitcode
            _forget_metrics(process.pid)
            if stopping:
                continue
            if code is not None and code >= 0 and time.monotonic() - started < STARTUP_GRACE:
                log.error("worker failed at start-up; stopping", pid=process.pid, exit_code=code)
                status = code or 1
                stop(signal.SIGTERM, None)
                continue
            log.error("worker died; restarting it", pid=process.pid, exit_code=code)
            start(slot)
    return status


def _forget_metrics(pid: int | None) -> None:
    """A worker's live gauges (requests in flight) no longer count once it is gone: prometheus-client's
    multiprocess mode needs the parent to say so when the worker could not (it was killed)."""
    if pid is None or not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid)


def _signal_all(workers: dict[int, tuple[BaseProcess, float]], signum: int) -> None:
    for process, _ in workers.values():
        if process.pid is not None and process.is_alive():
            os.kill(process.pid, signum)


def _worker(serve: Callable[[], int]) -> None:
    """A worker: its own session, so a terminal's Ctrl-C reaches only the parent (which passes one
    SIGTERM on); default signal handlers until the server installs its own."""
    os.setsid()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):  # a reload signal must never kill a worker that does not reload
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    sys.exit(serve())
