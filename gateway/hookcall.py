"""Calling the hooks of every request: the ones that may be async, each impl in call order, awaited
before the next; the sync ones without pluggy's per-call machinery."""

from __future__ import annotations

import asyncio
import inspect
import types
from collections.abc import Callable
from typing import Any

import pluggy
import structlog

from gateway.hookspecs import ASYNC_HOOKS, PER_REQUEST_HOOKS

log = structlog.get_logger("gateway")


class Hooks:
    """The per-request hooks of one plugin manager, with their impls resolved once at start-up; with
    ``config``, less the impls of the plugins idle under it (``gateway_idle``; a hook with a wrapper
    goes through pluggy, which calls them all)."""

    def __init__(self, pm: pluggy.PluginManager, config: Any = None) -> None:
        self._pm = pm
        self.idle = idle_plugins(pm, config) if config is not None else frozenset()
        self._impls: dict[str, tuple[tuple[Callable[..., Any], str], ...]] = {
            name: tuple(
                (_keywords(impl.function, impl.argnames, getattr(pm.hook, name).spec.argnames), impl.plugin_name)
                for impl in reversed(getattr(pm.hook, name).get_hookimpls())
                if impl.plugin_name not in self.idle
            )
            for name in ASYNC_HOOKS | PER_REQUEST_HOOKS
        }
        self._first = {name for name in PER_REQUEST_HOOKS if getattr(pm.hook, name).spec.opts.get("firstresult")}
        self._wrapped = {  # pluggy runs wrappers around the other impls: such a hook goes through pluggy
            name
            for name in PER_REQUEST_HOOKS
            if any(impl.hookwrapper or impl.wrapper for impl in getattr(pm.hook, name).get_hookimpls())
        }

    def call(self, name: str, **kwargs: Any) -> Any:
        """A sync hook's result as pluggy gives it (a firstresult hook's first non-None result, else
        the list of non-None results), from its impls called directly: pluggy's call machinery
        costs more than these hooks' impls."""
        if name in self._wrapped:
            return getattr(self._pm.hook, name)(**kwargs)
        first = name in self._first
        results = []
        for function, _ in self._impls[name]:
            result = function(**kwargs)
            if result is not None:
                if first:
                    return result
                results.append(result)
        return None if first else results

    async def first_result(self, name: str, **kwargs: Any) -> Any:
        """The first non-None result; later impls are not called. Exceptions propagate."""
        for function, _ in self._impls[name]:
            result = function(**kwargs)
            if result is not None and _awaitable(result):
                result = await result
            if result is not None:
                return result
        return None

    async def call_all(self, name: str, **kwargs: Any) -> None:
        """Call every impl in order. Exceptions propagate (decision hooks fail closed)."""
        for function, _ in self._impls[name]:
            result = function(**kwargs)
            if result is not None and _awaitable(result):
                await result

    async def notify(self, name: str, **kwargs: Any) -> None:
        """Call every impl in order; an exception is logged and the next impl still runs. A
        cancellation (the client left while an impl awaited) lets the next impls run too, and is
        raised after them."""
        cancelled: asyncio.CancelledError | None = None
        for function, plugin in self._impls[name]:
            try:
                result = function(**kwargs)
                if result is not None and _awaitable(result):
                    await result
            except asyncio.CancelledError as exc:
                cancelled = exc
            except Exception:
                log.exception("observer hook failed", hook=name, plugin=plugin)
        if cancelled is not None:
            raise cancelled


def idle_plugins(pm: pluggy.PluginManager, config: Any) -> frozenset[str]:
    """The plugins whose ``gateway_idle`` says they have nothing to do under ``config``."""
    impls = pm.hook.gateway_idle.get_hookimpls()
    return frozenset(impl.plugin_name for impl in impls if impl.function(*[config for _ in impl.argnames]))


def _keywords(function: Callable[..., Any], argnames: tuple[str, ...], spec: tuple[str, ...]) -> Callable[..., Any]:
    """An impl callable with every argument of its spec as keywords (as the callers pass them): the
    impl itself when it takes them all (no tuple built per call), else a wrapper that passes it its own."""
    if set(argnames) == set(spec):
        return function
    return lambda **kwargs: function(*map(kwargs.__getitem__, argnames))


def _awaitable(result: object) -> bool:
    """``inspect.isawaitable``, with the usual case (an ``async def`` impl's coroutine) first:
    the ABC check behind ``isawaitable`` costs microseconds per call."""
    return type(result) is types.CoroutineType or inspect.isawaitable(result)
