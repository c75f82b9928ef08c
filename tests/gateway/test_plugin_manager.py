"""Loading plugins (built-ins, YAML module paths, entry points), validating their impls and their
config sections (``gateway.plugin_manager``)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig
from gateway.config import ConfigError
from gateway.loading import load
from gateway.plugin_manager import (
    DEFAULT_PLUGINS,
    ESSENTIAL_PLUGINS,
    build_plugin_manager,
    describe,
)
from gateway.testing import MOCK_MODEL, mock_config

BUILTINS = [p.removeprefix("gateway_plugins.") for p in DEFAULT_PLUGINS]
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


def test_build_plugin_manager_directly() -> None:
    pm = build_plugin_manager(disabled=["cors"], extra=[Greeter()])
    assert not pm.has_plugin("cors") and pm.has_plugin("routing")
    assert Greeter in [impl.plugin.__class__ for impl in pm.hook.gateway_process_request.get_hookimpls()]


def test_backend_config_base_is_strict() -> None:
    with pytest.raises(ValidationError, match="bogus"):
        BackendConfig(name="x", type="y", bogus=1)  # type: ignore[call-arg]
