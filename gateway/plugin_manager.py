"""Building the plugin manager: the built-ins, the ``gateway`` entry points and modules named in YAML."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable
from importlib.metadata import entry_points

import pluggy

from gateway import hookspecs
from gateway.config import ConfigError

#: Built-in plugins by dotted path; each is registered under the path without ``gateway_plugins.``.
DEFAULT_PLUGINS = (
    "gateway_plugins.error_renderer",
    "gateway_plugins.routing",
    "gateway_plugins.request_logging",
    "gateway_plugins.metrics",
    "gateway_plugins.docs",
    "gateway_plugins.cors",
    "gateway_plugins.transforms",
    "gateway_plugins.backends.mock",
    "gateway_plugins.backends.openai_compat",
    "gateway_plugins.backends.http_template",
    "gateway_plugins.backends.sourcegraph",
    "gateway_plugins.backends.anthropic",
    "gateway_plugins.backends.replay",
    "gateway_plugins.auth_api_keys",
    "gateway_plugins.rate_limit",
    "gateway_plugins.cache",
)
#: Built-ins that cannot be disabled.
ESSENTIAL_PLUGINS = frozenset({"error_renderer"})


def builtin_name(path: str) -> str:
    return path.removeprefix("gateway_plugins.")


def build_plugin_manager(
    enabled: Iterable[str] = (),
    disabled: Iterable[str] = (),
    extra: Iterable[object] = (),
    *,
    source: str = "<config>",
) -> pluggy.PluginManager:
    """A new plugin manager with the built-ins (less ``disabled``), the ``gateway`` entry points, the
    modules in ``enabled`` and the ``extra`` plugin objects, validated against the specs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    disabled = list(disabled)
    known = {builtin_name(p) for p in DEFAULT_PLUGINS} | {ep.name for ep in entry_points(group=hookspecs.PROJECT)}
    known |= set(enabled)
    for i, name in enumerate(disabled):
        if name in ESSENTIAL_PLUGINS:
            raise ConfigError(source, [(f"plugins.disabled[{i}]", f"the {name} plugin cannot be disabled")])
        if name not in known:
            raise ConfigError(
                source, [(f"plugins.disabled[{i}]", f"no plugin named {name!r} (known: {', '.join(sorted(known))})")]
            )
        pm.set_blocked(name)

    try:
        _register_all(pm, enabled, extra, source)
        pm.check_pending()  # every impl names a hook that exists
    except pluggy.PluginValidationError as exc:
        raise ConfigError(source, [("plugins", str(exc).replace("\n", " "))]) from None
    check_async_rules(pm, source)
    return pm


def _register_all(pm: pluggy.PluginManager, enabled: Iterable[str], extra: Iterable[object], source: str) -> None:
    """Register the built-ins (unless blocked), the entry points, the YAML modules, then ``extra``."""
    for path in DEFAULT_PLUGINS:
        name = builtin_name(path)
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(path), name)
    try:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    except Exception as exc:  # an installed plugin that fails to import
        raise ConfigError(
            source, [("plugins", f"loading a `gateway` entry point failed: {type(exc).__name__}: {exc}")]
        ) from None
    for i, path in enumerate(enabled):
        if pm.is_blocked(path) or pm.has_plugin(path):
            continue
        try:
            module = importlib.import_module(path)
        except Exception as exc:
            problem = f"cannot import plugin module {path!r}: {type(exc).__name__}: {exc}"
            raise ConfigError(source, [(f"plugins.enabled[{i}]", problem)]) from None
        if not pm.is_registered(module):
            pm.register(module, path)
    for plugin in extra:
        pm.register(plugin)


def check_async_rules(pm: pluggy.PluginManager, source: str = "<config>") -> None:
    """Sync hooks have no ``async def`` impls; hooks that may be async have no wrappers."""
    for name in hookspecs_names():
        for impl in getattr(pm.hook, name).get_hookimpls():
            where = f"plugin {impl.plugin_name!r}, hook {name}"
            if name in hookspecs.ASYNC_HOOKS and (impl.wrapper or impl.hookwrapper):
                raise ConfigError(
                    source, [("plugins", f"{where}: wrappers are not allowed on hooks that may be async")]
                )
            if name not in hookspecs.ASYNC_HOOKS and inspect.iscoroutinefunction(impl.function):
                raise ConfigError(source, [("plugins", f"{where}: this hook is synchronous and cannot be `async def`")])


def hookspecs_names() -> list[str]:
    """The names of every hook, in the order hookspecs.py declares them."""
    return [name for name, _ in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("gateway_")]


def describe(pm: pluggy.PluginManager) -> list[dict[str, object]]:
    """Each loaded plugin and the hooks it implements."""
    return [
        {"name": name, "hooks": sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())}
        for name, plugin in pm.list_name_plugin()
        if plugin is not None
    ]
