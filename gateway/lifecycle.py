"""The shutdown grace period: in-flight requests get ``server.shutdown_timeout`` seconds to finish,
then each is ended with an answer instead of a cut: a 503 error, or a final SSE error event."""

from __future__ import annotations

import asyncio
import time

import structlog
from aiohttp import web

from gateway.keys import lifecycle_key

#: What aiohttp waits beyond the grace period for the requests the gateway has just ended.
AIOHTTP_MARGIN = 2.0
SHUTTING_DOWN = "The server is shutting down; retry the request."


def in_flight(app: web.Application) -> int:
    """The requests the app is handling now (each handler task in flight, a scrape of /metrics too)."""
    return len(app[lifecycle_key].tasks)


class Lifecycle:
    """Tracks the handler tasks in flight and ends them when the grace period after shutdown is over."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.tasks: set[asyncio.Task[object]] = set()
        self.expired = False
        self.stopping: float | None = None  # when the shutdown began (monotonic)
        self.in_flight_at_stop = 0
        self.ended = 0  # requests the end of the grace period cut short

    async def on_shutdown(self, app: web.Application) -> None:
        """``app.on_shutdown``: start the grace period (the listening sockets are already closed)."""
        self.stopping, self.in_flight_at_stop = time.monotonic(), len(self.tasks)
        asyncio.get_running_loop().call_later(self.grace, self._expire)

    def _expire(self) -> None:
        self.expired = True
        self.ended = len(self.tasks)
        for task in list(self.tasks):
            task.cancel()

    async def log_stopped(self, app: web.Application) -> None:
        """``app.on_cleanup`` of ``gateway serve``: one line once every request is over: how many
        were drained (finished in the grace period), how many it cut short, and how long it took."""
        if self.stopping is None:
            return
        structlog.get_logger("gateway").info(
            "gateway stopped",
            drained=self.in_flight_at_stop - self.ended,
            ended_by_timeout=self.ended,
            seconds=round(time.monotonic() - self.stopping, 3),
        )

    def ended_by_shutdown(self) -> bool:
        """After a ``CancelledError``: True if the grace period caused it (the cancel is withdrawn)."""
        if not self.expired:
            return False
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            task.uncancel()
        return True
