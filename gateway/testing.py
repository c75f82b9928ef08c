"""Helpers for testing the gateway and plugins written for it.

``make_app(config, plugins=...)`` builds an app for pytest-aiohttp's ``aiohttp_client``;
``mock_config(**options)`` is a config serving ``mock-gpt-model`` from the mock backend with the
given options; ``ServerThread(app)`` serves an app on 127.0.0.1 from a background thread, for
synchronous clients (the openai SDK's ``OpenAI``, ``requests``, a subprocess).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from aiohttp import web

from gateway.app import RUNNER_OPTIONS, ConfigSource, create_app

MOCK_MODEL = "mock-gpt-model"


def mock_config(models: Iterable[str] = (MOCK_MODEL,), **options: Any) -> dict[str, Any]:
    """A config with one mock backend (``options`` are its settings) serving ``models``."""
    models = list(models)
    return {
        "backends": [{"name": "mock", "type": "mock", "models": models, **options}],
        "models": [{"name": m, "backend": "mock"} for m in models],
        "default_model": models[0],
    }


def make_app(config: ConfigSource | None = None, *, plugins: Iterable[object] = ()) -> web.Application:
    """A gateway app for tests; ``config`` defaults to ``mock_config()``."""
    return create_app(mock_config() if config is None else config, plugins=plugins)


class ServerThread:
    """Serve an app on 127.0.0.1 (a free port) from a thread with its own event loop.

    ``with ServerThread(make_app()) as server: requests.get(server.url + "/health")``
    """

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="gateway-test-server", daemon=True)
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(self.app, **RUNNER_OPTIONS)
        try:
            loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:  # reported to the caller of __enter__
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.close()


def run_in_thread(config: Mapping[str, Any] | None = None, *, plugins: Iterable[object] = ()) -> ServerThread:
    """``ServerThread(make_app(config, plugins=plugins))``."""
    return ServerThread(make_app(config, plugins=plugins))
