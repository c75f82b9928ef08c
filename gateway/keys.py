"""Every typed key stored on the application or on a request (types named as forward references)."""

from __future__ import annotations

from aiohttp import web

config_key = web.AppKey("config", "GatewayConfig")
plugin_manager_key = web.AppKey("plugin_manager", "pluggy.PluginManager")
hooks_key = web.AppKey("hooks", "Hooks")
backends_key = web.AppKey("backends", "BackendRegistry")
lifecycle_key = web.AppKey("lifecycle", "Lifecycle")
ctx_key = web.RequestKey("ctx", "RequestContext")
