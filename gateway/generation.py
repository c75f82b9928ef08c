"""Config generations, for hot reload without dropping a request.

A ``Generation`` is one validated config with its plugin manager, hooks and backends (and a
``state`` dict where plugins cache what they build from that config, such as a router). Each
request pins the generation that is current when it arrives and keeps it to its last byte. A reload
validates the new config first (an invalid one is logged and changes nothing), opens the backends it
adds, and swaps it in: new requests use it, requests and streams in flight finish on theirs. A
replaced generation closes when its last request ends, and with it every backend that no live
generation shares (a backend whose settings did not change is kept, with its pooled connections).

What a reload cannot change: the plugin list (``plugins.enabled``/``disabled``) and the ``state``
section (the store is opened once with the app and its counters must not move or split): a reload
that changes either is refused and logged; the ``server`` and ``logging`` sections, and whatever plugins set up once on
the app in ``gateway_setup_app`` (routes, middlewares, CORS); those take a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import pluggy
import structlog
from aiohttp import web

from gateway.backend import Backend, BackendRegistry
from gateway.config import ConfigError, GatewayConfig
from gateway.hookcall import Hooks
from gateway.keys import generations_key
from gateway.loading import ConfigSource, Loaded, load

log = structlog.get_logger("gateway")


class Generation:
    """One config and everything built from it; ``active`` counts the requests pinned to it."""

    __slots__ = ("active", "backends", "config", "hooks", "number", "pm", "retired", "state")

    def __init__(self, number: int, config: GatewayConfig, pm: pluggy.PluginManager, backends: list[Backend]) -> None:
        self.number = number
        self.config = config
        self.pm = pm
        self.hooks = Hooks(pm, config)
        self.backends = BackendRegistry(backends)
        self.state: dict[str, Any] = {}  # plugins' caches built from this config, by plugin name
        self.active = 0
        self.retired = False


class Generations:
    """The current generation and those still serving requests; ``reload()`` swaps in a new one."""

    def __init__(self, loaded: Loaded, source: ConfigSource, plugins: Iterable[object] = ()) -> None:
        self.current = Generation(1, loaded.config, loaded.pm, loaded.backends)
        self.source = source
        self.plugins = tuple(plugins)
        self.live: LiveBackends = LiveBackends(self)
        self._users: dict[Backend, int] = {}  # backend -> live generations that hold it
        self._closing: set[asyncio.Task[None]] = set()
        self._lock = asyncio.Lock()

    # Requests ----------------------------------------------------------------------------------

    def pin(self) -> Generation:
        """The generation a new request uses, held until ``unpin``."""
        generation = self.current
        generation.active += 1
        return generation

    def unpin(self, generation: Generation) -> None:
        generation.active -= 1
        if generation.retired and generation.active == 0:
            self._close_later(generation)

    # Opening, swapping, closing ----------------------------------------------------------------

    async def open(self) -> None:
        """Open the first generation's backends (with the app)."""
        await self._enter(self.current)

    async def close(self) -> None:
        """Close every backend still open (the app is shutting down; requests are over)."""
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        for backend in list(self._users):
            await _exit(backend)
        self._users.clear()

    async def reload(self, source: ConfigSource | None = None) -> bool:
        """Validate ``source`` (default: the config this app started from) and, if it is valid, make
        it current. False, with the reason logged, when it is not; the current config stays."""

        async with self._lock:
            try:
                # read and validated off the event loop: streams in flight go on meanwhile
                loaded = await asyncio.to_thread(load, self.source if source is None else source, self.plugins)
            except ConfigError as exc:
                log.error("config reload failed; keeping the current config", error=str(exc))
                return False
            old = self.current
            refused = _restart_only(old.config, loaded.config)
            if refused:
                log.error("config reload refused; keeping the current config", error=refused)
                return False
            kept = {b.name: b for b in old.backends.values()}
            backends = [_same(kept.get(b.name), b) for b in loaded.backends]
            new = Generation(old.number + 1, loaded.config, loaded.pm, backends)
            try:
                await self._enter(new)
            except Exception as exc:
                log.error("config reload failed: a backend did not open; keeping the current config", error=repr(exc))
                return False
            self.current = new
            old.retired = True
            if old.active == 0:
                self._close_later(old)
            reused = sum(1 for b in backends if b in old.backends.values())
            log.info(
                "config reloaded",
                generation=new.number,
                models=[route.name for route in new.config.models],
                backends_kept=reused,
                backends_opened=len(backends) - reused,
                requests_on_previous=old.active,
            )
            return True

    async def _enter(self, generation: Generation) -> None:
        """Open the generation's backends that are not open yet; on failure close those just opened."""
        opened: list[Backend] = []
        try:
            for backend in generation.backends.values():
                if backend not in self._users:
                    await backend.__aenter__()
                    opened.append(backend)
                    self._users[backend] = 0
        except BaseException:
            for backend in opened:
                self._users.pop(backend, None)
                await _exit(backend)
            raise
        for backend in generation.backends.values():
            self._users[backend] += 1

    def _close_later(self, generation: Generation) -> None:
        task = asyncio.get_running_loop().create_task(self._release(generation))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _release(self, generation: Generation) -> None:
        for backend in generation.backends.values():
            users = self._users.get(backend)
            if users is None:
                continue
            if users <= 1:
                del self._users[backend]
                await _exit(backend)
            else:
                self._users[backend] = users - 1
        log.info("config generation closed", generation=generation.number)


class LiveBackends(Mapping[str, Backend]):
    """The current generation's backends, whichever that is (``app[backends_key]``)."""

    def __init__(self, generations: Generations) -> None:
        self._generations = generations

    def __getitem__(self, name: str) -> Backend:
        return self._generations.current.backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._generations.current.backends)

    def __len__(self) -> int:
        return len(self._generations.current.backends)


def _same(current: Backend | None, new: Backend) -> Backend:
    """The running backend when its settings did not change (its connections are kept), else the new one."""
    if current is not None and type(current) is type(new) and current.config == new.config:
        return current
    return new


def _restart_only(old: GatewayConfig, new: GatewayConfig) -> str | None:
    """Why a reload cannot apply ``new`` (None when it can). Changes to ``server`` and ``logging``
    are logged and wait for a restart; a different plugin list refuses the reload."""
    if (old.plugins.enabled, old.plugins.disabled) != (new.plugins.enabled, new.plugins.disabled):
        return "plugins.enabled and plugins.disabled cannot change without a restart"
    if old.state != new.state:
        return "the state section cannot change without a restart (the store holds shared counters)"
    waiting = [section for section in ("server", "logging") if getattr(old, section) != getattr(new, section)]
    if waiting:
        log.warning("config sections that apply after a restart changed", sections=waiting)
    return None


async def _exit(backend: Backend) -> None:
    try:
        await backend.__aexit__(None, None, None)
    except Exception:
        log.exception("closing a backend failed", backend=backend.name)


async def watch(generations: Generations, path: str, interval: float) -> None:
    """Reload whenever the config file's modification time or size changes (checked every ``interval`` s)."""

    def signature() -> tuple[float, int] | None:
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    seen = signature()
    while True:
        await asyncio.sleep(interval)
        now = signature()
        if now is not None and now != seen:
            seen = now
            await generations.reload()


def watching(generations: Generations, path: str, interval: float) -> Callable[[Any], AsyncIterator[None]]:
    """An ``app.cleanup_ctx`` entry that runs ``watch`` while the app serves (``server.watch_config``)."""

    async def ctx(app: Any) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(watch(generations, path, interval))
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return ctx


def reload_on_sighup(app: web.Application) -> None:
    """Reload the config on SIGHUP while the app serves (``gateway serve``; the main thread only)."""
    generations = app[generations_key]
    tasks: set[asyncio.Task[bool]] = set()

    def reload() -> None:
        task = asyncio.get_running_loop().create_task(generations.reload())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def install(app: web.Application) -> None:
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, reload)

    async def remove(app: web.Application) -> None:
        if hasattr(signal, "SIGHUP"):
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)

    app.on_startup.append(install)
    app.on_cleanup.append(remove)
