"""``gateway serve --workers N``: N processes serving one port (``SO_REUSEPORT``: the kernel spreads
connections over them), supervised by the parent.

The parent validates the config once, forks the workers, passes SIGTERM/SIGINT (as one SIGTERM,
so each worker shuts down gracefully once) and SIGHUP on to them, and restarts a worker that dies.
A worker that exits with an error within ``STARTUP_GRACE`` seconds of starting (the port is taken,
say) stops them all: restarting it would fail the same way. One killed by a signal is restarted
(logged at ERROR), and so is one that exited cleanly (someone sent it SIGTERM: logged at INFO).

Workers never outlive the supervisor: on Linux the kernel sends each one SIGTERM when it dies
(``prctl(PR_SET_PDEATHSIG)``), and everywhere a worker watches its parent's pid and stops itself,
gracefully, once the parent is gone (``PARENT_CHECK`` seconds at most).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import structlog

STARTUP_GRACE = 5.0
PARENT_CHECK = 1.0  # seconds between a worker's checks that its supervisor is alive
PR_SET_PDEATHSIG = 1  # linux/prctl.h

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
            if code is not None and code > 0 and time.monotonic() - started < STARTUP_GRACE:
                log.error("worker failed at start-up; stopping", pid=process.pid, exit_code=code)
                status = code
                stop(signal.SIGTERM, None)
                continue
            if code == 0:  # it was told to stop (SIGTERM) and did, gracefully
                log.info("worker exited; restarting it", pid=process.pid, exit_code=code)
            else:
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


def _die_with(parent: int) -> None:
    """SIGTERM this worker (a graceful stop) when ``parent`` dies: the kernel's parent-death signal on
    Linux, else a thread watching the parent's pid. (One of the two: a second SIGTERM would cut the
    graceful stop short.)"""
    if _parent_death_signal(signal.SIGTERM):
        if os.getppid() != parent:  # it died before the kernel was asked
            os.kill(os.getpid(), signal.SIGTERM)
        return

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gateway-parent-watch", daemon=True).start()


def _parent_death_signal(signum: int) -> bool:
    """Ask Linux to send ``signum`` when the parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _worker(serve: Callable[[], int]) -> None:
    """A worker: its own session, so a terminal's Ctrl-C reaches only the parent (which passes one
    SIGTERM on); default signal handlers until the server installs its own."""
    parent = os.getppid()
    for signum in (signal.SIGTERM, signal.SIGINT):  # first: the parent's handlers are no worker's
        signal.signal(signum, signal.SIG_DFL)
    if hasattr(signal, "SIGHUP"):  # a reload signal must never kill a worker that does not reload
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    os.setsid()
    _die_with(parent)
    sys.exit(serve())
