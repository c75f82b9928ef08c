"""``gateway.hookcall.Hooks``: the async hook policies (first result, call all, notify) and the direct
calls of sync hooks, compared with what pluggy gives."""

from __future__ import annotations

import asyncio
from typing import Any

import pluggy
import pytest
import structlog

from gateway import hookimpl, hookspecs
from gateway.hookcall import Hooks


def hooks_of(*plugins: object) -> Hooks:
    """``Hooks`` over a bare manager with ``plugins`` registered in this order (called LIFO)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    return Hooks(pm)


class Recorder:
    """A plugin whose ``gateway_authenticate`` and ``gateway_process_request`` record a name."""

    def __init__(
        self, log: list[str], name: str, result: Any = None, is_async: bool = False, fail: bool = False
    ) -> None:
        self.log, self.name, self.result, self.is_async, self.fail = log, name, result, is_async, fail

    def _run(self) -> Any:
        if not self.is_async:
            self.log.append(self.name)
            if self.fail:
                raise RuntimeError(f"{self.name} failed")
            return self.result

        async def run() -> Any:
            self.log.append(self.name + ":start")
            await asyncio.sleep(0.01)
            self.log.append(self.name + ":end")
            if self.fail:
                raise RuntimeError(f"{self.name} failed")
            return self.result

        return run()


def recorder(
    log: list[str], name: str, *, result: Any = None, is_async: bool = False, fail: bool = False, **marks: bool
) -> object:
    base = Recorder(log, name, result, is_async, fail)

    class Plugin:
        @hookimpl(**marks)
        def gateway_authenticate(self, ctx: Any) -> Any:
            return base._run()

        @hookimpl(**marks)
        def gateway_process_request(self, ctx: Any) -> Any:
            return base._run()

        @hookimpl(**marks)
        def gateway_request_finished(self, ctx: Any, error: Any) -> Any:
            return base._run()

    return Plugin()


async def test_first_result_stops_at_the_first_non_none() -> None:
    log: list[str] = []
    hooks = hooks_of(
        recorder(log, "D", result="d"),
        recorder(log, "C", result="c", is_async=True),
        recorder(log, "B", result=None, is_async=True),
        recorder(log, "A", result=None),
    )
    assert await hooks.first_result("gateway_authenticate", ctx=None) == "c"
    assert log == ["A", "B:start", "B:end", "C:start", "C:end"]


async def test_first_result_none_when_every_impl_passes() -> None:
    log: list[str] = []
    hooks = hooks_of(recorder(log, "B", is_async=True), recorder(log, "A"))
    assert await hooks.first_result("gateway_authenticate", ctx=None) is None
    assert log == ["A", "B:start", "B:end"]
    assert await hooks_of().first_result("gateway_authenticate", ctx=None) is None


async def test_first_result_propagates_exceptions() -> None:
    log: list[str] = []
    hooks = hooks_of(recorder(log, "B"), recorder(log, "A", fail=True))
    with pytest.raises(RuntimeError, match="A failed"):
        await hooks.first_result("gateway_authenticate", ctx=None)
    assert log == ["A"]


async def test_call_all_awaits_each_impl_before_the_next() -> None:
    log: list[str] = []
    hooks = hooks_of(recorder(log, "C"), recorder(log, "B", is_async=True), recorder(log, "A"))
    await hooks.call_all("gateway_process_request", ctx=None)
    assert log == ["A", "B:start", "B:end", "C"]


async def test_call_all_follows_tryfirst_and_trylast() -> None:
    log: list[str] = []
    hooks = hooks_of(
        recorder(log, "first", tryfirst=True),
        recorder(log, "last", trylast=True, is_async=True),
        recorder(log, "plain-1"),
        recorder(log, "plain-2", is_async=True),
    )
    await hooks.call_all("gateway_process_request", ctx=None)
    assert log == ["first", "plain-2:start", "plain-2:end", "plain-1", "last:start", "last:end"]


async def test_call_all_fails_closed() -> None:
    log: list[str] = []
    hooks = hooks_of(recorder(log, "B"), recorder(log, "A", is_async=True, fail=True))
    with pytest.raises(RuntimeError, match="A failed"):
        await hooks.call_all("gateway_process_request", ctx=None)
    assert log == ["A:start", "A:end"]


async def test_notify_logs_an_exception_and_calls_the_next_impl() -> None:
    log: list[str] = []
    hooks = hooks_of(
        recorder(log, "C"),
        recorder(log, "B", is_async=True, fail=True),
        recorder(log, "A", fail=True),
    )
    with structlog.testing.capture_logs() as logs:
        await hooks.notify("gateway_request_finished", ctx=None, error=None)
    assert log == ["A", "B:start", "B:end", "C"]
    failures = [entry for entry in logs if entry["event"] == "observer hook failed"]
    assert len(failures) == 2
    assert all(entry["hook"] == "gateway_request_finished" for entry in failures)
    assert all(entry["log_level"] == "error" and entry.get("exc_info") for entry in failures)


async def test_notify_calls_the_next_impls_when_one_is_cancelled() -> None:
    """The client leaving cancels the request's task while an observer awaits: the observers after it
    (the access line, a rate limiter's slots) still run, then the cancellation goes on."""
    log: list[str] = []
    waiting, gate = asyncio.Event(), asyncio.Event()

    class Waiting:
        @hookimpl
        async def gateway_request_finished(self, ctx: Any) -> None:
            log.append("waiting")
            waiting.set()
            await gate.wait()

    hooks = hooks_of(recorder(log, "after"), Waiting(), recorder(log, "before"))
    task = asyncio.create_task(hooks.notify("gateway_request_finished", ctx=None, error=None))
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert log == ["before", "waiting", "after"]


async def test_impls_may_take_fewer_arguments() -> None:
    seen: list[Any] = []

    class Partial:
        @hookimpl
        def gateway_request_finished(self, error: Any) -> None:
            seen.append(error)

    await hooks_of(Partial()).notify("gateway_request_finished", ctx="the ctx", error="the error")
    assert seen == ["the error"]


def sync_hooks_plugin(name: str, deployment: Any = None, chunk_filter: Any = None, **marks: bool) -> object:
    class Plugin:
        @hookimpl(**marks)
        def gateway_select_backend(self, ctx: Any, backends: Any) -> Any:
            ctx.append(name)
            return deployment

        @hookimpl(**marks)
        def gateway_stream_filter(self, ctx: Any) -> Any:
            ctx.append(name)
            return chunk_filter

    return Plugin()


def test_call_gives_what_pluggy_gives_in_the_same_order() -> None:
    plugins = (
        sync_hooks_plugin("last", deployment="d-last", chunk_filter="f-last", trylast=True),
        sync_hooks_plugin("B", deployment="d-B"),
        sync_hooks_plugin("A", chunk_filter="f-A"),
        sync_hooks_plugin("first", tryfirst=True),
    )
    hooks = hooks_of(*plugins)
    for name, kwargs in (("gateway_select_backend", {"backends": None}), ("gateway_stream_filter", {})):
        direct: list[str] = []
        via_pluggy: list[str] = []
        result = hooks.call(name, ctx=direct, **kwargs)
        assert result == getattr(hooks._pm.hook, name)(ctx=via_pluggy, **kwargs)
        assert direct == via_pluggy
    assert hooks.call("gateway_select_backend", ctx=[], backends=None) == "d-B"  # firstresult: B, then stop
    assert hooks.call("gateway_stream_filter", ctx=[]) == ["f-A", "f-last"]
    assert hooks_of().call("gateway_select_backend", ctx=[], backends=None) is None
    assert hooks_of().call("gateway_stream_filter", ctx=[]) == []


def test_call_lets_pluggy_run_a_hook_with_a_wrapper() -> None:
    class Wrapper:
        @hookimpl(wrapper=True)
        def gateway_stream_filter(self, ctx: Any) -> Any:
            ctx.append("before")
            result = yield
            ctx.append("after")
            return [*result, "f-wrapper"]

    log: list[str] = []
    hooks = hooks_of(sync_hooks_plugin("A", chunk_filter="f-A"), Wrapper())
    assert hooks.call("gateway_stream_filter", ctx=log) == ["f-A", "f-wrapper"]
    assert log == ["before", "A", "after"]


class Settings:
    """A stand-in config for ``gateway_idle``: which plugins have nothing to do."""

    def __init__(self, *idle: str) -> None:
        self.idle = idle


def idle_when_named(name: str, log: list[str]) -> object:
    class Plugin:
        @hookimpl
        def gateway_idle(self, config: Any) -> bool:
            return name in config.idle

        @hookimpl
        def gateway_process_request(self, ctx: Any) -> None:
            log.append(name)

    return Plugin()


async def test_the_impls_of_a_plugin_idle_under_the_config_are_not_called() -> None:
    log: list[str] = []
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(idle_when_named("a", log), name="a")
    pm.register(idle_when_named("b", log), name="b")
    pm.register(recorder(log, "c"), name="c")  # no gateway_idle: never idle
    hooks = Hooks(pm, Settings("a"))
    assert hooks.idle == {"a"}
    await hooks.call_all("gateway_process_request", ctx=None)
    assert log == ["c", "b"]
    log.clear()
    await Hooks(pm).call_all("gateway_process_request", ctx=None)  # without a config: nothing idle
    assert log == ["c", "b", "a"]
