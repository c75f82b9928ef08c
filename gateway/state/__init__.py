"""Shared state: one small interface (``Store``), kept in this process (``memory``, the default) or
in Redis (``redis``), so that several processes and machines behave as one gateway.

The store is a core facility: it opens with the app and closes with it. Plugins reach it as
``ctx.state_store`` per request, or ``store_of(app)`` in app hooks (``gateway_setup_app``,
``gateway_cleanup_ctx``). Config: the top-level ``state:`` section (``StateConfig``).

The interface (every method a coroutine except ``lock``, ``key`` and ``describe``):

- ``get(key)`` / ``set(key, value, ttl=None, only_new=False)`` / ``delete(key)``: bytes by key, with
  an optional time to live in seconds; ``only_new`` sets only when the key is absent and says
  whether it did.
- ``run(script, keys, args)``: one ``Script`` executed atomically (Redis: ``EVALSHA`` of its Lua,
  re-loaded on ``NOSCRIPT``; memory: its Python twin). One round trip; the way to check-and-count.
- ``run_many(calls)``: several ``(script, keys, args)`` in one round trip (Redis: a pipeline, not a
  transaction: each script is atomic, the batch is not); their results in order. For scripts whose
  keys sit in different hash tags (a Cluster cannot run them as one script).
- ``lock(key, ttl)``: ``async with store.lock(key, ttl) as held:`` a short exclusive lock
  (single-flight); ``held`` is False when someone else holds it. It expires after ``ttl`` seconds
  even if its holder dies.

Keys are given without the configured ``key_prefix`` (the store adds it). Keys one script touches
must share a hash tag (``{k:<key>}:rpm``) so that they sit in one Redis Cluster slot.

Every call may raise ``StoreUnavailable`` (Redis unreachable, slow past ``timeout_ms``, or its
breaker open); the caller applies ``config.on_error``: ``allow`` serves without the state, ``deny``
answers 503 (``StoreUnavailable`` is that OpenAI error). The memory store never raises it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from aiohttp import web

from gateway.keys import state_store_key
from gateway.state.config import StateConfig
from gateway.state.script import Script, StoreUnavailable

__all__ = ["Script", "StateConfig", "Store", "StoreUnavailable", "open_store", "store_of"]


class Store(Protocol):
    """Where shared state lives (see the module docstring for the contract)."""

    config: StateConfig

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes | str, ttl: float | None = None, *, only_new: bool = False) -> bool: ...

    async def delete(self, key: str) -> None: ...

    async def run(self, script: Script, keys: list[str], args: list[Any]) -> Any: ...

    async def run_many(self, calls: Sequence[tuple[Script, list[str], list[Any]]]) -> list[Any]: ...

    def lock(self, key: str, ttl: float) -> AbstractAsyncContextManager[bool]: ...

    def describe(self) -> dict[str, Any]:
        """The store's state for ``/info``: kind, connected, errors (never the URL's password)."""
        ...

    async def close(self) -> None: ...


def open_store(config: StateConfig) -> Store:
    """The store ``config`` names; ``redis`` is imported only when configured."""
    if config.store == "redis":
        from gateway.state.redis import RedisStore

        return RedisStore(config)
    from gateway.state.memory import MemoryStore

    return MemoryStore(config)


def store_of(app: web.Application) -> Store:
    """The app's state store (the documented accessor for app hooks)."""
    return app[state_store_key]


async def store_ctx(app: web.Application, store: Store) -> AsyncIterator[None]:
    """``cleanup_ctx`` of the store: nothing to wait for at start (Redis may be down), closed at the end."""
    try:
        yield
    finally:
        await store.close()
