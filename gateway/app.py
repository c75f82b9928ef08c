"""The application factory: a loaded config in, a ready ``web.Application`` out (core routes and
middleware, then every plugin's app hooks)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

from aiohttp import web

from gateway.generation import Generations, watching
from gateway.keys import backends_key, generations_key, lifecycle_key, state_store_key
from gateway.lifecycle import Lifecycle
from gateway.loading import ConfigSource, Loaded, load
from gateway.middleware import add_response_headers, context_middleware
from gateway.routes import setup_routes
from gateway.state import open_store, store_ctx

#: How every server of the app runs (``gateway serve`` and the test servers): a client that
#: disconnects cancels its handler (and so the backend call); aiohttp's access log is replaced by
#: the ``request_logging`` plugin.
RUNNER_OPTIONS: dict[str, object] = {"handler_cancellation": True, "access_log": None}


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
    app[state_store_key] = store = open_store(config.state)
    app.cleanup_ctx.append(lambda app: store_ctx(app, store))
    if config.server.watch_config and not isinstance(generations.source, Mapping):
        app.cleanup_ctx.append(watching(generations, str(generations.source), config.server.watch_config))
    pm.hook.gateway_setup_app(app=app, config=config)
    for cleanup in pm.hook.gateway_cleanup_ctx(app=app, config=config):
        app.cleanup_ctx.append(cleanup)
    return app
