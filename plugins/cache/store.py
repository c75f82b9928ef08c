"""The response cache's per-process state: an LRU of answers bounded in bytes with a TTL per entry,
the requests in flight (single-flight) and the ``Idempotency-Key`` records."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway_plugins.cache.shared import SharedCache


class MemoryStore:
    """Answers (serialised JSON) by key, least recently used first out past ``max_bytes``."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def set(self, key: str, value: bytes, ttl: float) -> int:
        """Store ``value`` for ``ttl`` seconds; the bytes stored (0: larger than the whole cache)."""
        if len(value) > self.max_bytes:
            return 0
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (value, time.monotonic() + ttl)
        self.bytes += len(value)
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
        return len(value)

    def _drop(self, key: str) -> None:
        value, _ = self._entries.pop(key)
        self.bytes -= len(value)

    def __len__(self) -> int:
        return len(self._entries)


@dataclass(slots=True, eq=False)
class Flight:
    """One request being answered: its request key and the answer its followers wait for (None: it
    failed, each follower goes on its own)."""

    request: str
    expires: float = 0.0
    answer: asyncio.Future[bytes | None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def settle(self, answer: bytes | None) -> None:
        if not self.answer.done():
            self.answer.set_result(answer)


class CacheState:
    """What one process keeps: the memory store, flights by cache key, idempotency records by key
    (with ``shared``, answers and records are in the state store, and only flights stay here)."""

    def __init__(self, max_bytes: int, shared: SharedCache | None = None) -> None:
        self.memory = MemoryStore(max_bytes)
        self.shared = shared  # the state store's cache (redis): answers, locks and records live there
        self.writes: set[asyncio.Task[None]] = set()  # Redis writes under way (kept from the collector)
        self.flights: dict[str, Flight] = {}
        self.idempotency: dict[str, Flight] = {}

    def idempotency_record(self, key: str) -> Flight | None:
        record = self.idempotency.get(key)
        if record is not None and record.expires <= time.monotonic():
            del self.idempotency[key]
            return None
        return record
