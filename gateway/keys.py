"""Every typed key stored on the application or on a request (types named as forward references)."""

from __future__ import annotations

from aiohttp import web

#: The start-up config, plugin manager and hooks; per request use ``ctx.config`` and ``ctx.generation``
#: (a reload replaces them). ``backends_key`` always holds the current generation's backends.
config_key = web.AppKey("config", "GatewayConfig")
plugin_manager_key = web.AppKey("plugin_manager", "pluggy.PluginManager")
hooks_key = web.AppKey("hooks", "Hooks")
backends_key = web.AppKey("backends", "BackendRegistry")
lifecycle_key = web.AppKey("lifecycle", "Lifecycle")
generations_key = web.AppKey("generations", "Generations")
ctx_key = web.RequestKey("ctx", "RequestContext")
