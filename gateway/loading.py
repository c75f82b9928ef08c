"""Loading a config: read or take it, load the plugins it names, validate every section and build
its backends. ``gateway check-config``, ``serve``, reloads and the tests all load through here."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from gateway.backend import Backend
from gateway.config import (
    ConfigError,
    GatewayConfig,
    PluginsConfig,
    environment,
    interpolate,
    read_config,
    validate_config,
)
from gateway.config_problems import validation_problems
from gateway.plugin_manager import DEFAULT_PLUGINS, build_plugin_manager, builtin_name, describe

ConfigSource = str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True)
class Loaded:
    """A validated config with the plugin manager that validated it and the backends it declares."""

    config: GatewayConfig
    pm: pluggy.PluginManager
    backends: list[Backend]


def plugin_overview(source: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Each plugin the config loads, the hooks it implements and the config sections it owns, then
    each it disables (``enabled: False``), without validating the rest: ``gateway plugins`` works
    with ``${VAR}``s unset."""
    name = str(source)
    raw = interpolate(read_config(source), name, environment(Path(source).resolve().parent), unset=[])
    try:
        settings = PluginsConfig.model_validate(raw.get("plugins") or {})
    except ValidationError as exc:
        raise ConfigError(name, validation_problems(exc, ("plugins",))) from None
    pm = build_plugin_manager(settings.enabled, settings.disabled, (), source=name)
    owned: dict[str, list[str]] = {}
    for impl in pm.hook.gateway_register_config.get_hookimpls():
        owned[impl.plugin_name] = _sections(impl.function)
    enabled = set(settings.enabled)
    loaded = [
        {
            **plugin,
            "enabled": True,
            "sections": owned.get(str(plugin["name"]), []),
            "enabled_by_config": plugin["name"] in enabled,
        }
        for plugin in describe(pm)
    ]
    builtins = {builtin_name(path): path for path in DEFAULT_PLUGINS}
    disabled = [
        {"name": plugin, "hooks": [], "enabled": False, "sections": _builtin_sections(builtins.get(plugin))}
        for plugin in settings.disabled
    ]
    return loaded + disabled


def _sections(register_config: Callable[..., Any]) -> list[str]:
    """The config sections a ``gateway_register_config`` implementation declares."""
    sections: list[str] = []
    register_config(register=lambda section, _model: sections.append(section))
    return sections


def _builtin_sections(path: str | None) -> list[str]:
    """The sections a built-in plugin would own, were it loaded."""
    hook = getattr(importlib.import_module(path), "gateway_register_config", None) if path else None
    return _sections(hook) if hook is not None else []


def load(source: ConfigSource, plugins: Iterable[object] = ()) -> Loaded:
    """Read (a path) or take (a mapping) a config, load the plugins it names plus ``plugins``, and
    validate everything; raise ``ConfigError`` naming the file, the line, the key path and the problem."""
    lines: dict[str, int] = {}
    if isinstance(source, Mapping):
        name, tree, env = "<config>", dict(source), environment()
    else:
        name = str(source)
        tree, env = read_config(source, lines), environment(Path(source).resolve().parent)
    try:
        return _load(name, tree, env, plugins)
    except ConfigError as exc:
        if exc.lines is None and exc.source == name and lines:
            raise ConfigError(name, exc.problems, lines) from None
        raise


def _load(name: str, tree: dict[str, Any], env: Mapping[str, str], plugins: Iterable[object]) -> Loaded:
    unset: list[tuple[str, str]] = []  # every unset variable, reported with the other problems
    raw = interpolate(tree, name, env, unset=unset)
    try:
        plugin_settings = PluginsConfig.model_validate(raw.get("plugins") or {})
    except ValidationError as exc:
        raise ConfigError(name, unset + validation_problems(exc, ("plugins",))) from None
    pm = build_plugin_manager(plugin_settings.enabled, plugin_settings.disabled, plugins, source=name)

    sections: dict[str, type[BaseModel]] = {}
    backend_types: dict[str, type[Backend]] = {}
    problems: list[tuple[str, str]] = []

    def register_section(section: str, model: type[BaseModel]) -> None:
        if section in sections or section in PluginsConfig.model_fields:
            problems.append(("plugins", f"config section {section!r} is declared twice"))
        sections[section] = model

    def register_backend(type_name: str, cls: type[Backend]) -> None:
        if type_name in backend_types:
            problems.append(("backends", f"backend type {type_name!r} is registered twice"))
        backend_types[type_name] = cls

    pm.hook.gateway_register_config(register=register_section)
    pm.hook.gateway_register_backends(register=register_backend)
    if problems:
        raise ConfigError(name, unset + problems)
    try:
        config = validate_config(raw, source=name, sections=sections, backend_types=backend_types)
    except ConfigError as exc:
        unset_paths = {path for path, _ in unset}  # an unset value's own follow-on errors say nothing new
        raise ConfigError(name, unset + [p for p in exc.problems if p[0] not in unset_paths]) from None
    if unset:
        raise ConfigError(name, unset)
    backends = [backend_types[b.type](b) for b in config.backends]
    return Loaded(config, pm, backends)


#: The config files that ship with the gateway (``gateway.yaml``, the default, and ``examples/*.yaml``):
#: the repository's ``config/`` is their one source, copied into the package as ``gateway/data/`` at
#: build (``setup.py``); a checkout (an editable install, the tests) reads ``config/`` itself.
INSTALLED = Path(__file__).resolve().with_name("data")
CHECKOUT = Path(__file__).resolve().parent.parent / "config"


def shipped_dir() -> Path:
    """Where the shipped config files are: the package's ``data/``, else the checkout's ``config/``."""
    return INSTALLED if (INSTALLED / "gateway.yaml").is_file() else CHECKOUT


def resolve_config(path: str) -> str:
    """The config file to read for ``path``: ``path`` itself when it exists; else, when it names a
    shipped file (``config/gateway.yaml``, ``config/examples/NAME.yaml`` or ``examples/NAME.yaml``),
    that shipped file; else ``path`` (which then fails to read, naming it)."""
    if Path(path).exists():
        return path
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if parts == ("config", "gateway.yaml"):
        found = shipped_dir() / "gateway.yaml"
    elif parts[:-2] in ((), ("config",)) and parts[-2:-1] == ("examples",) and parts[-1].endswith(".yaml"):
        found = shipped_dir() / "examples" / parts[-1]
    else:
        return path
    return str(found) if found.is_file() else path
