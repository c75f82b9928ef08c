"""Every typed key stored on the application or on a request (types named as forward references)."""

from __future__ import annotations

from aiohttp import web

#: The config, plugin manager and hooks are the current generation's (``app[generations_key].current``;
#: a reload replaces them); per request use ``ctx.config`` and ``ctx.generation``.
#: ``backends_key`` always holds the current generation's backends.
backends_key = web.AppKey("backends", "LiveBackends")
lifecycle_key = web.AppKey("lifecycle", "Lifecycle")
generations_key = web.AppKey("generations", "Generations")
#: The shared state store (``gateway.state``): plugins use ``ctx.state_store`` or ``gateway.state.store_of(app)``.
state_store_key = web.AppKey("state_store", "Store")
ctx_key = web.RequestKey("ctx", "RequestContext")
