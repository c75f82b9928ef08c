"""Loading a config: read or take it, load the plugins it names, validate every section and build
its backends. ``gateway check-config``, ``serve``, reloads and the tests all load through here."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
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
    validation_problems,
)
from gateway.plugin_manager import build_plugin_manager

ConfigSource = str | os.PathLike[str] | Mapping[str, Any]


@dataclass(frozen=True)
class Loaded:
    """A validated config with the plugin manager that validated it and the backends it declares."""

    config: GatewayConfig
    pm: pluggy.PluginManager
    backends: list[Backend]


def load(source: ConfigSource, plugins: Iterable[object] = ()) -> Loaded:
    """Read (a path) or take (a mapping) a config, load the plugins it names plus ``plugins``, and
    validate everything; raise ``ConfigError`` naming the file, the key path and the problem."""
    if isinstance(source, Mapping):
        name, raw = "<config>", interpolate(dict(source), "<config>", environment())
    else:
        name = str(source)
        raw = interpolate(read_config(source), name, environment(Path(source).resolve().parent))
    try:
        plugin_settings = PluginsConfig.model_validate(raw.get("plugins") or {})
    except ValidationError as exc:
        raise ConfigError(name, validation_problems(exc, ("plugins",))) from None
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
        raise ConfigError(name, problems)
    config = validate_config(raw, source=name, sections=sections, backend_types=backend_types)
    backends = [backend_types[b.type](b) for b in config.backends]
    return Loaded(config, pm, backends)
