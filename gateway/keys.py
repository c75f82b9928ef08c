"""Every typed key stored on the application or on a request."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    pass

config_key = web.AppKey("config", "GatewayConfig")
plugin_manager_key = web.AppKey("plugin_manager", "pluggy.PluginManager")
hooks_key = web.AppKey("hooks", "Hooks")
backends_key = web.AppKey("backends", "BackendRegistry")
ctx_key = web.RequestKey("ctx", "RequestContext")
