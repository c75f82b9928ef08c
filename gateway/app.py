"""The application factory: config and plugins in, a ready ``web.Application`` out."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pluggy
from aiohttp import web
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
from gateway.generation import Generations, watching
from gateway.keys import backends_key, config_key, generations_key, hooks_key, lifecycle_key, plugin_manager_key
from gateway.lifecycle import Lifecycle
from gateway.middleware import add_response_headers, context_middleware
from gateway.plugin_manager import build_plugin_manager
from gateway.routes import setup_routes

ConfigSource = str | os.PathLike[str] | Mapping[str, Any]

#: How every server of the app runs (``gateway serve`` and the test servers): a client that
#: disconnects cancels its handler (and so the backend call); aiohttp's access log is replaced by
#: the ``request_logging`` plugin.
RUNNER_OPTIONS: dict[str, Any] = {"handler_cancellation": True, "access_log": None}


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


def create_app(source: ConfigSource | Loaded, *, plugins: Iterable[object] = ()) -> web.Application:
    """Build the gateway: core routes and middleware, then every plugin's ``gateway_setup_app`` and
    ``gateway_cleanup_ctx``; the backends open with the app and close with it. The config can be
    reloaded while the app serves (``app[generations_key].reload()``, see ``gateway.generation``)."""
    loaded = source if isinstance(source, Loaded) else load(source, plugins)
    config, pm = loaded.config, loaded.pm
    app = web.Application(middlewares=[context_middleware], client_max_size=config.server.max_body_size)
    app[generations_key] = generations = Generations(
        loaded, config.source if isinstance(source, Loaded) else source, plugins
    )
    app[config_key] = config
    app[plugin_manager_key] = pm
    app[hooks_key] = generations.current.hooks
    app[backends_key] = generations.live
    app[lifecycle_key] = lifecycle = Lifecycle(config.server.shutdown_timeout)
    setup_routes(app)
    app.on_response_prepare.append(add_response_headers)
    app.on_shutdown.append(lifecycle.on_shutdown)

    async def backends_ctx(app: web.Application) -> AsyncIterator[None]:
        await generations.open()
        try:
            yield
        finally:
            await generations.close()

    app.cleanup_ctx.append(backends_ctx)
    if config.server.watch_config and not isinstance(generations.source, Mapping):
        app.cleanup_ctx.append(watching(generations, str(generations.source), config.server.watch_config))
    pm.hook.gateway_setup_app(app=app, config=config)
    for cleanup in pm.hook.gateway_cleanup_ctx(app=app, config=config):
        app.cleanup_ctx.append(cleanup)
    return app
