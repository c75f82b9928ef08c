"""Time to first byte of one deployment: a moving average (the ``lowest_latency`` strategy) and a
window of recent samples for percentiles (a hedged request's delay)."""

from __future__ import annotations

import math


class LatencyTracker:
    """An exponentially weighted moving average and the last ``size`` samples, in seconds."""

    __slots__ = ("_next", "_samples", "_sorted", "alpha", "average", "count", "size")

    def __init__(self, alpha: float = 0.3, size: int = 128) -> None:
        self.alpha = alpha
        self.size = size
        self.average: float | None = None
        self.count = 0
        self._samples: list[float] = []
        self._next = 0
        self._sorted: list[float] | None = None

    def record(self, seconds: float) -> None:
        avg = self.average
        self.average = seconds if avg is None else avg + self.alpha * (seconds - avg)
        self.count += 1
        if len(self._samples) < self.size:
            self._samples.append(seconds)
        else:
            self._samples[self._next] = seconds
            self._next = (self._next + 1) % self.size
        self._sorted = None

    def percentile(self, p: float) -> float | None:
        """The ``p``-th percentile (nearest rank) of the recent samples; None without samples."""
        if not self._samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        rank = max(1, math.ceil(p / 100 * len(self._sorted)))
        return self._sorted[rank - 1]
