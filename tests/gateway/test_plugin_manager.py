"""Loading plugins (built-ins, YAML module paths, entry points), validating their impls, the async
hook caller, and the contract of each hook as seen through HTTP."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
import structlog
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import GatewayError, Principal, hookimpl, hookspecs
from gateway.backend import Backend, BackendConfig
from gateway.config import ConfigError
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.hookcall import Hooks
from gateway.loading import load
from gateway.plugin_manager import (
    DEFAULT_PLUGINS,
    ESSENTIAL_PLUGINS,
    build_plugin_manager,
    describe,
)
from gateway.testing import MOCK_MODEL, make_app, mock_config

BUILTINS = [p.removeprefix("gateway_plugins.") for p in DEFAULT_PLUGINS]
USER = [{"role": "user", "content": "hello there"}]
TEST_MODULES = ("gw_test_upper", "gw_test_broken_import", "fakeplug_mod", "gw_test_wrong_argument")


@pytest.fixture(autouse=True)
def forget_test_modules() -> Iterator[None]:
    """Modules written to tmp_path are imported fresh by every test."""
    for name in TEST_MODULES:
        sys.modules.pop(name, None)
    yield
    for name in TEST_MODULES:
        sys.modules.pop(name, None)


def chat_body(stream: bool = False, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MOCK_MODEL, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


async def reply_of(resp: Any) -> str:
    assert resp.status == 200, await resp.text()
    return (await resp.json())["choices"][0]["message"]["content"]


def names(pm: pluggy.PluginManager) -> list[str]:
    return [name for name, plugin in pm.list_name_plugin() if plugin is not None]


def config_error(extra: Any = (), **config: Any) -> ConfigError:
    """The ConfigError of ``mock_config()`` updated with ``config``, with the ``extra`` plugin objects."""
    with pytest.raises(ConfigError) as exc_info:
        load({**mock_config(), **config}, extra)
    return exc_info.value


# Which plugins load ----------------------------------------------------------------------------


def test_builtins_load_by_default() -> None:
    pm = load(mock_config()).pm
    assert names(pm)[: len(BUILTINS)] == BUILTINS
    assert BUILTINS[:3] == ["error_renderer", "routing", "request_logging"]  # the defaults' order
    assert {"cors", "backends.mock", "backends.openai_compat"} <= set(BUILTINS)
    hooks = {entry["name"]: entry["hooks"] for entry in describe(pm)}
    assert "gateway_select_backend" in hooks["routing"]
    assert hooks["error_renderer"] == ["gateway_handle_error"]
    assert "gateway_setup_app" in hooks["cors"]
    assert hooks["backends.mock"] == ["gateway_register_backends"]
    assert "error_renderer" in ESSENTIAL_PLUGINS


async def test_disabling_cors_removes_it(gateway: Any) -> None:
    pm = load({**mock_config(), "plugins": {"disabled": ["cors"]}}).pm
    assert not pm.has_plugin("cors")
    assert pm.is_blocked("cors")
    assert "cors" not in names(pm)

    with_cors = await gateway()
    resp = await with_cors.get("/health", headers={"Origin": "http://site.example"})
    assert resp.headers.get("Access-Control-Allow-Origin") == "http://site.example"
    without = await gateway({**mock_config(), "plugins": {"disabled": ["cors"]}})
    resp = await without.get("/health", headers={"Origin": "http://site.example"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


def test_section_of_a_disabled_plugin_is_unknown() -> None:
    error = config_error(plugins={"disabled": ["cors"], "cors": {"allow_origins": ["*"]}})
    assert [path for path, _ in error.problems] == ["plugins.cors"]
    assert str(error).startswith("<config>: plugins.cors: ")


def test_essential_plugin_cannot_be_disabled() -> None:
    error = config_error(plugins={"disabled": ["error_renderer"]})
    assert error.problems[0][0] == "plugins.disabled[0]"
    assert "error_renderer" in str(error) and "cannot be disabled" in str(error)


def test_disabling_an_unknown_name_lists_known_names() -> None:
    error = config_error(plugins={"disabled": ["routing", "corz"]})
    [(path, message)] = error.problems
    assert path == "plugins.disabled[1]"
    assert "'corz'" in message
    for name in BUILTINS:
        assert name in message


def test_disabling_routing_leaves_no_router() -> None:
    pm = load({**mock_config(), "plugins": {"disabled": ["routing"]}}).pm
    assert not pm.hook.gateway_select_backend.get_hookimpls()


# Modules named in YAML -------------------------------------------------------------------------

UPPER_PLUGIN = """
from gateway import hookimpl

@hookimpl
def gateway_process_request(ctx):
    for message in ctx.body["messages"]:
        if message["role"] == "user":
            message["content"] = message["content"].upper()
"""


async def test_enabled_module_is_imported_and_registered(
    gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gw_test_upper.py").write_text(UPPER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {**mock_config(), "plugins": {"enabled": ["gw_test_upper"]}}
    assert "gw_test_upper" in names(load(config).pm)
    client = await gateway(config)
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "HELLO THERE"


async def test_enabled_module_can_be_disabled_again(
    gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "gw_test_upper.py").write_text(UPPER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    config = {**mock_config(), "plugins": {"enabled": ["gw_test_upper"], "disabled": ["gw_test_upper"]}}
    assert "gw_test_upper" not in names(load(config).pm)
    client = await gateway(config)
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"


def test_unimportable_module() -> None:
    error = config_error(plugins={"enabled": ["gw_test_no_such_module_anywhere"]})
    [(path, message)] = error.problems
    assert path == "plugins.enabled[0]"
    assert "gw_test_no_such_module_anywhere" in message


def test_module_whose_import_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gw_test_broken_import.py").write_text("import gw_test_this_dependency_is_missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    error = config_error(plugins={"enabled": ["gateway.hookcall", "gw_test_broken_import"]})
    [(path, message)] = error.problems
    assert path == "plugins.enabled[1]"
    assert "gw_test_this_dependency_is_missing" in message


# Entry points ----------------------------------------------------------------------------------

FAKEPLUG = """
from gateway import hookimpl

@hookimpl
def gateway_process_request(ctx):
    ctx.body["messages"][-1]["content"] += " [fakeplug]"
"""


@pytest.fixture
def fakeplug(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed distribution ``fakeplug`` whose ``gateway`` entry point ``fakeplug`` is ``fakeplug_mod``."""
    site = tmp_path / "site"
    info = site / "fakeplug-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[gateway]\nfakeplug = fakeplug_mod\n")
    (site / "fakeplug_mod.py").write_text(FAKEPLUG)
    monkeypatch.syspath_prepend(str(site))
    return site


async def test_entry_point_plugin_is_loaded(gateway: Any, fakeplug: Path) -> None:
    pm = load(mock_config()).pm
    assert "fakeplug" in names(pm)
    assert pm.get_plugin("fakeplug").__name__ == "fakeplug_mod"
    client = await gateway()
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there [fakeplug]"


async def test_entry_point_plugin_can_be_disabled(gateway: Any, fakeplug: Path) -> None:
    config = {**mock_config(), "plugins": {"disabled": ["fakeplug"]}}
    pm = load(config).pm
    assert "fakeplug" not in names(pm)
    assert "fakeplug_mod" not in sys.modules
    client = await gateway(config)
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"


def test_entry_point_names_are_known(fakeplug: Path) -> None:
    error = config_error(plugins={"disabled": ["nothing-by-this-name"]})
    assert "fakeplug" in error.problems[0][1]


# Impl validation -------------------------------------------------------------------------------


class AsyncSelect:
    @hookimpl
    async def gateway_select_backend(self, ctx: Any, backends: Any) -> None:
        return None


class AsyncSetup:
    @hookimpl
    async def gateway_setup_app(self, app: Any, config: Any) -> None:
        return None


class WrapperOnAsyncHook:
    @hookimpl(wrapper=True)
    def gateway_process_request(self, ctx: Any) -> Any:
        return (yield)


class OldStyleWrapperOnAsyncHook:
    @hookimpl(hookwrapper=True)
    def gateway_handle_error(self, ctx: Any, error: Any) -> Any:
        yield


class UnknownHook:
    @hookimpl
    def gateway_nope(self, ctx: Any) -> None:
        return None


@pytest.mark.parametrize("plugin", [AsyncSelect(), AsyncSetup()], ids=["select_backend", "setup_app"])
def test_async_impl_of_a_sync_hook_is_refused(plugin: object) -> None:
    error = config_error([plugin])
    assert error.problems[0][0] == "plugins"
    assert "synchronous" in str(error)


@pytest.mark.parametrize("plugin", [WrapperOnAsyncHook(), OldStyleWrapperOnAsyncHook()], ids=["wrapper", "hookwrapper"])
def test_wrapper_on_an_async_hook_is_refused(plugin: object) -> None:
    error = config_error([plugin])
    assert "wrapper" in str(error)


def test_impl_of_an_unknown_hook_is_refused() -> None:
    error = config_error([UnknownHook()])
    assert error.problems[0][0] == "plugins"
    assert "gateway_nope" in str(error)


def test_impl_with_an_argument_the_spec_lacks_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module named in the YAML whose impl asks for an argument the hook does not have: a config
    error (exit code 2 from the CLI), not pluggy's PluginValidationError escaping as a traceback."""
    (tmp_path / "gw_test_wrong_argument.py").write_text(
        "from gateway import hookimpl\n\n@hookimpl\ndef gateway_process_request(ctx, request):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    error = config_error(plugins={"enabled": ["gw_test_wrong_argument"]})
    assert "gateway_process_request" in str(error)
    assert "request" in str(error)


def test_wrapper_on_a_sync_hook_is_allowed() -> None:
    class SyncWrapper:
        @hookimpl(wrapper=True)
        def gateway_select_backend(self, ctx: Any, backends: Any) -> Any:
            return (yield)

    assert load(mock_config(), [SyncWrapper()]).pm


# Plugin config sections ------------------------------------------------------------------------


class GreeterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefix: str = "Hi"
    times: int = Field(1, ge=1)


class Greeter:
    @hookimpl
    def gateway_register_config(self, register: Any) -> None:
        register("greeter", GreeterConfig)

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        section = ctx.config.plugin_config("greeter")
        message = ctx.body["messages"][-1]
        message["content"] = " ".join([section.prefix] * section.times + [message["content"]])


async def test_plugin_reads_its_own_section(gateway: Any) -> None:
    client = await gateway({**mock_config(), "plugins": {"greeter": {"prefix": "Yo", "times": 2}}}, [Greeter()])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "Yo Yo hello there"


async def test_absent_section_gets_the_defaults(gateway: Any) -> None:
    client = await gateway(None, [Greeter()])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "Hi hello there"


def test_invalid_value_in_a_plugin_section() -> None:
    error = config_error([Greeter()], plugins={"greeter": {"times": 0, "volume": 3}})
    paths = [path for path, _ in error.problems]
    assert sorted(paths) == ["plugins.greeter.times", "plugins.greeter.volume"]
    assert "<config>: plugins.greeter.times: " in str(error)
    assert "<config>: plugins.greeter.volume: unknown key" in str(error)


def test_a_section_declared_twice() -> None:
    class Other:
        @hookimpl
        def gateway_register_config(self, register: Any) -> None:
            register("greeter", GreeterConfig)

    error = config_error([Greeter(), Other()])
    assert "greeter" in str(error) and "twice" in str(error)


def test_a_section_named_like_a_reserved_key() -> None:
    class Reserved:
        @hookimpl
        def gateway_register_config(self, register: Any) -> None:
            register("enabled", GreeterConfig)

    assert "enabled" in str(config_error([Reserved()]))


def test_a_backend_type_registered_twice() -> None:
    class SecondMock(Backend):
        type_name = "mock"

        async def chat(self, ctx: Any) -> AsyncIterator[dict[str, Any]]:  # pragma: no cover
            yield {}

    class RegistersMock:
        @hookimpl
        def gateway_register_backends(self, register: Any) -> None:
            register("mock", SecondMock)

    error = config_error([RegistersMock()])
    [(path, message)] = error.problems
    assert path == "backends"
    assert "'mock'" in message and "twice" in message


# gateway.hookcall.Hooks ------------------------------------------------------------------------


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


# gateway_request_finished: exactly once per request --------------------------------------------


class Finished:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, BaseException | None]] = []

    @hookimpl
    async def gateway_request_finished(self, ctx: Any, error: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append((ctx.request_id, ctx.endpoint, ctx.status, error))

    async def wait_for(self, request_id: str) -> list[tuple[str, str, int, BaseException | None]]:
        """The calls for ``request_id``, once there is one (and a moment for a second one)."""
        for _ in range(200):
            if any(call[0] == request_id for call in self.calls):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        return [call for call in self.calls if call[0] == request_id]


async def test_request_finished_once_on_success(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "ok-1"})
    assert resp.headers["X-Request-ID"] == "ok-1"
    assert await reply_of(resp) == "hello there"
    assert await finished.wait_for("ok-1") == [("ok-1", "chat.completions", 200, None)]


async def test_request_finished_once_on_error(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post(
        "/v1/chat/completions", json={**chat_body(), "model": "nope"}, headers={"X-Request-ID": "e-1"}
    )
    assert resp.status == 404
    [(_, _, status, error)] = await finished.wait_for("e-1")
    assert status == 404
    assert isinstance(error, GatewayError)

    resp = await client.post("/v1/chat/completions", data=b"{not json", headers={"X-Request-ID": "e-2"})
    assert resp.status == 400
    [(_, _, status, error)] = await finished.wait_for("e-2")
    assert status == 400 and error is not None

    resp = await client.get("/no/such/path", headers={"X-Request-ID": "e-3"})
    assert resp.status == 404
    assert len(await finished.wait_for("e-3")) == 1


async def test_request_finished_once_for_a_stream(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers={"X-Request-ID": "s-1"})
    text = await resp.text()
    assert resp.status == 200 and text.endswith("data: [DONE]\n\n")
    assert await finished.wait_for("s-1") == [("s-1", "chat.completions", 200, None)]


async def test_request_finished_once_for_a_broken_stream(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}), [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers={"X-Request-ID": "s-2"})
    text = await resp.text()
    assert resp.status == 200 and '"error"' in text and "[DONE]" not in text
    [(_, _, status, error)] = await finished.wait_for("s-2")
    assert status == 200 and isinstance(error, GatewayError)


async def test_request_finished_failure_does_not_break_the_response(gateway: Any) -> None:
    finished = Finished()

    class Broken:
        @hookimpl(tryfirst=True)
        def gateway_request_finished(self, ctx: Any, error: Any) -> None:
            raise RuntimeError("observer bug")

    client = await gateway(None, [finished, Broken()])
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "b-1"})
    assert await reply_of(resp) == "hello there"
    assert len(await finished.wait_for("b-1")) == 1


# gateway_setup_app and gateway_cleanup_ctx -----------------------------------------------------


class CustomRoute:
    @hookimpl
    def gateway_setup_app(self, app: web.Application, config: Any) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": config.default_model})

        app.router.add_get("/custom/hello", hello)


async def test_setup_app_route_gets_the_middleware_and_cors(gateway: Any) -> None:
    client = await gateway(None, [CustomRoute()])
    resp = await client.get("/custom/hello", headers={"X-Request-ID": "custom-1", "Origin": "http://site.example"})
    assert resp.status == 200
    assert await resp.json() == {"hello": MOCK_MODEL}
    assert resp.headers["X-Request-ID"] == "custom-1"
    assert resp.headers["Access-Control-Allow-Origin"] == "http://site.example"

    preflight = await client.options(
        "/custom/hello", headers={"Origin": "http://site.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://site.example"


async def test_cleanup_ctx_runs_startup_and_cleanup(aiohttp_client: Any) -> None:
    events: list[str] = []

    class Lifecycle:
        @hookimpl
        def gateway_cleanup_ctx(self, app: web.Application, config: Any) -> Any:
            async def lifecycle(app: web.Application) -> AsyncIterator[None]:
                events.append(f"start:{config.default_model}")
                yield
                events.append("cleanup")

            return lifecycle

    class Nothing:
        @hookimpl
        def gateway_cleanup_ctx(self, app: web.Application, config: Any) -> None:
            return None

    client = await aiohttp_client(make_app(plugins=[Lifecycle(), Nothing()]))
    assert events == [f"start:{MOCK_MODEL}"]
    assert (await client.get("/health")).status == 200
    await client.close()
    assert events == [f"start:{MOCK_MODEL}", "cleanup"]


# gateway_authenticate --------------------------------------------------------------------------


class Seen:
    """Records the principal later hooks see."""

    def __init__(self) -> None:
        self.process: list[str | None] = []
        self.finished: list[str | None] = []
        self.called = False

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        self.process.append(ctx.principal.name if ctx.principal else None)

    @hookimpl
    def gateway_request_finished(self, ctx: Any, error: Any) -> None:
        self.finished.append(ctx.principal.name if ctx.principal else None)


class Authenticator:
    def __init__(self, name: str | None, *, is_async: bool = False) -> None:
        self.principal = Principal(name=name) if name else None
        self.is_async = is_async
        self.calls = 0

    @hookimpl
    def gateway_authenticate(self, ctx: Any) -> Any:
        self.calls += 1
        if not self.is_async:
            return self.principal

        async def later() -> Any:
            await asyncio.sleep(0)
            return self.principal

        return later()


async def test_principal_is_visible_to_later_hooks(gateway: Any) -> None:
    seen = Seen()
    client = await gateway(None, [seen, Authenticator("alice")])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    for _ in range(100):
        if seen.finished:
            break
        await asyncio.sleep(0.005)
    assert seen.process == ["alice"]
    assert seen.finished == ["alice"]


async def test_no_principal_when_no_plugin_authenticates(gateway: Any) -> None:
    seen = Seen()
    client = await gateway(None, [seen])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    assert seen.process == [None]


async def test_authentication_error_is_401(gateway: Any) -> None:
    class Refuse:
        @hookimpl
        async def gateway_authenticate(self, ctx: Any) -> None:
            raise AuthenticationError("bad key")

    seen = Seen()
    client = await gateway(None, [seen, Refuse()])
    resp = await client.post("/v1/chat/completions", json=chat_body())
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"] == "bad key"
    assert error["type"] == "invalid_request_error"
    assert seen.process == []  # refused before pre-processing

    resp = await client.get("/v1/models")
    assert resp.status == 401


async def test_permission_denied_is_403(gateway: Any) -> None:
    class Deny:
        @hookimpl
        def gateway_authenticate(self, ctx: Any) -> None:
            raise PermissionDeniedError("not you")

    client = await gateway(None, [Deny()])
    resp = await client.post("/v1/chat/completions", json=chat_body())
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "permission_denied"


async def test_first_non_none_principal_wins(gateway: Any) -> None:
    seen = Seen()
    passes, alice, bob = Authenticator(None, is_async=True), Authenticator("alice", is_async=True), Authenticator("bob")
    # called LIFO: passes, then alice; bob is never asked
    client = await gateway(None, [seen, bob, alice, passes])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    assert seen.process == ["alice"]
    assert (passes.calls, alice.calls, bob.calls) == (1, 1, 0)


# gateway_handle_error --------------------------------------------------------------------------


class TeapotError(GatewayError):
    status = 418
    type = "teapot_error"
    code = "im_a_teapot"


class Kettle(Exception):
    pass


class RaisesKettle:
    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        if "kettle" in ctx.body["messages"][-1]["content"]:
            raise Kettle("the kettle boiled over")
        if "other" in ctx.body["messages"][-1]["content"]:
            raise ValueError("something else")


class KettleRenderer:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @hookimpl
    async def gateway_handle_error(self, ctx: Any, error: BaseException) -> GatewayError | None:
        self.errors.append(error)
        if isinstance(error, Kettle):
            return TeapotError(f"short and stout: {error}")
        return None


async def test_handle_error_plugin_wins_over_the_default(gateway: Any) -> None:
    renderer = KettleRenderer()
    client = await gateway(None, [RaisesKettle(), renderer])
    resp = await client.post("/v1/chat/completions", json=chat_body(content="kettle"))
    assert resp.status == 418
    assert await resp.json() == {
        "error": {
            "message": "short and stout: the kettle boiled over",
            "type": "teapot_error",
            "param": None,
            "code": "im_a_teapot",
        }
    }
    assert isinstance(renderer.errors[-1], Kettle)

    # None from the plugin: the trylast default renders a 500 that does not leak the message
    resp = await client.post("/v1/chat/completions", json=chat_body(content="other"), headers={"X-Request-ID": "o-1"})
    assert resp.status == 500
    body = await resp.json()
    assert "something else" not in body["error"]["message"]
    assert "o-1" in body["error"]["message"]
    assert isinstance(renderer.errors[-1], ValueError)

    # and gateway errors still render as they are
    resp = await client.post("/v1/chat/completions", json={**chat_body(), "model": "nope"})
    assert resp.status == 404


async def test_handle_error_without_the_plugin_is_a_500(gateway: Any) -> None:
    client = await gateway(None, [RaisesKettle()])
    resp = await client.post("/v1/chat/completions", json=chat_body(content="kettle"))
    assert resp.status == 500
    assert "kettle" not in (await resp.json())["error"]["message"]


async def test_handle_error_applies_to_a_stream_that_broke_off(gateway: Any) -> None:
    class MapUpstream:
        @hookimpl(tryfirst=True)
        def gateway_handle_error(self, ctx: Any, error: BaseException) -> GatewayError:
            return TeapotError("mapped")

    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}), [MapUpstream()])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    text = await resp.text()
    assert resp.status == 200
    assert text.rstrip().endswith('"code":"im_a_teapot"}}')
    assert "mapped" in text


def test_build_plugin_manager_directly() -> None:
    pm = build_plugin_manager(disabled=["cors"], extra=[CustomRoute()])
    assert not pm.has_plugin("cors") and pm.has_plugin("routing")
    assert CustomRoute in [impl.plugin.__class__ for impl in pm.hook.gateway_setup_app.get_hookimpls()]


def test_backend_config_base_is_strict() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        BackendConfig(name="x", type="y", bogus=1)  # type: ignore[call-arg]


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
