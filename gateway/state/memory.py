"""The memory store: this process's dict (today's behaviour, no dependency); never unavailable."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from gateway.state.config import StateConfig
from gateway.state.script import Script


class MemoryStore:
    """``Store`` in one process: values with an expiry time, scripts run as their Python twins."""

    kind = "memory"
    SWEEP_EVERY = 1000  # writes between two sweeps of expired values

    def __init__(self, config: StateConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or StateConfig()
        self.clock = clock
        self.data: dict[str, Any] = {}  # the scripts' values
        self._values: dict[str, tuple[bytes, float | None]] = {}
        self._writes = 0

    def key(self, key: str) -> str:
        return self.config.key_prefix + key

    async def get(self, key: str) -> bytes | None:
        return self._get(self.key(key))

    def _get(self, full: str) -> bytes | None:
        entry = self._values.get(full)
        if entry is None:
            return None
        if entry[1] is not None and entry[1] <= self.clock():
            del self._values[full]
            return None
        return entry[0]

    async def set(self, key: str, value: bytes | str, ttl: float | None = None, *, only_new: bool = False) -> bool:
        full = self.key(key)
        if only_new and self._get(full) is not None:
            return False
        self._writes += 1
        if self._writes % self.SWEEP_EVERY == 0:
            self._sweep()
        expires = None if ttl is None else self.clock() + ttl
        self._values[full] = (value.encode() if isinstance(value, str) else value, expires)
        return True

    async def delete(self, key: str) -> None:
        self._values.pop(self.key(key), None)

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        return script.local(self.data, [self.key(k) for k in keys], args, self.clock())

    async def run_many(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]:
        now = self.clock()
        return [script.local(self.data, [self.key(k) for k in keys], args, now) for script, keys, args in calls]

    @asynccontextmanager
    async def lock(self, key: str, ttl: float) -> AsyncIterator[bool]:
        token = str(id(object())).encode()
        held = await self.set(key, token, ttl, only_new=True)
        try:
            yield held
        finally:
            if held and self._get(self.key(key)) == token:
                await self.delete(key)

    def _sweep(self) -> None:
        now = self.clock()
        for full, (_, expires) in list(self._values.items()):
            if expires is not None and expires <= now:
                del self._values[full]

    def describe(self) -> dict[str, Any]:
        return {"store": self.kind, "connected": True}

    async def close(self) -> None:
        self._values.clear()
        self.data.clear()
