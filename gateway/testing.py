"""Helpers for testing the gateway and plugins written for it.

``make_app(config, plugins=...)`` builds an app for pytest-aiohttp's ``aiohttp_client``;
``mock_config(**options)`` is a config serving ``mock-gpt-model`` from the mock backend with the
given options; ``ServerThread(app)`` serves an app on 127.0.0.1 from a background thread, for
synchronous clients (the openai SDK's ``OpenAI``, ``requests``, a subprocess).

``RecordingBackend`` (config ``recording_config()``, registered by ``RecordingPlugin()``) answers a
fixed reply and records every call it gets, so a test sees what reached the backend after the
plugins ran, and whether the call completed or was cancelled: ``recorded(app)``.

Two observer plugins: ``Finished()`` counts finished requests (``await finished.wait(n)``: the access
line is written and limits are released by then); ``SeenFilters()`` records the chunk filters the
plugins returned for each stream (``[]``: the stream passed through untouched).
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp import web
from aiohttp.test_utils import TestServer
from pydantic import Field

from gateway.app import RUNNER_OPTIONS, create_app
from gateway.backend import Backend, BackendConfig
from gateway.context import Principal, RequestContext
from gateway.formats.chat import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    estimate_prompt_tokens,
    include_usage,
    message_choice,
    usage,
    usage_chunk,
)
from gateway.hookspecs import hookimpl
from gateway.keys import backends_key
from gateway.loading import ConfigSource
from gateway.serving.server import GatewayRunner

MOCK_MODEL = "mock-gpt-model"


def mock_config(models: Iterable[str] = (MOCK_MODEL,), **options: Any) -> dict[str, Any]:
    """A config with one mock backend (``options`` are its settings) serving ``models``."""
    models = list(models)
    return {
        "backends": [{"name": "mock", "type": "mock", "models": models, **options}],
        "models": [{"name": m, "backend": "mock"} for m in models],
        "default_model": models[0],
    }


class GatewayTestServer(TestServer):
    """pytest-aiohttp's ``TestServer`` serving over ``GatewayRunner`` (``gateway serve``'s connection:
    header and body deadlines, parser errors as OpenAI errors): ``await aiohttp_client(GatewayTestServer(app))``."""

    async def _make_runner(self, **kwargs: Any) -> web.AppRunner:
        return GatewayRunner(self.app, **{**kwargs, **RUNNER_OPTIONS})


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
        runner = GatewayRunner(self.app, **RUNNER_OPTIONS)
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


# Observers ---------------------------------------------------------------------------------------


class Finished:
    """Counts finished requests (``trylast``: after every other ``gateway_request_finished``)."""

    def __init__(self) -> None:
        self.count = 0

    @hookimpl(trylast=True)
    def gateway_request_finished(self, ctx: RequestContext) -> None:
        self.count += 1

    async def wait(self, count: int, within: float = 5.0) -> None:
        """Until ``count`` requests have finished (a client may see its response before that)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.count < count:
            assert loop.time() < deadline, f"{self.count} of {count} requests finished"
            await asyncio.sleep(0.002)


class SeenFilters:
    """Records the chunk filters every plugin returned for each stream (a sync wrapper sees them all)."""

    def __init__(self) -> None:
        self.seen: list[list[Any]] = []

    @hookimpl(wrapper=True)
    def gateway_stream_filter(self, ctx: RequestContext) -> Any:
        filters = yield
        self.seen.append(list(filters))
        return filters


# A recording backend ---------------------------------------------------------------------------


@dataclass
class Call:
    """One call a ``RecordingBackend`` received."""

    body: dict[str, Any]  # a copy of the request as the backend got it (after every plugin)
    model: str  # the model the backend was asked for (after routing)
    stream: bool
    principal: Principal | None
    outcome: Literal["running", "completed", "cancelled"] = "running"  # cancelled: client gone, timeout


class RecordingBackend(Backend):
    """Answers ``reply`` (streamed word by word, ``chunk_delay`` seconds apart) and records each call."""

    type_name = "recording"
    owned_by = "tests"
    reports_usage = True  # ctx.usage is set before the first output

    class Config(BackendConfig):
        models: list[str] = Field(default_factory=lambda: ["recorded-model"])
        reply: str = "recorded reply"
        chunk_delay: float = Field(0, ge=0, description="seconds before each streamed chunk after the first")

    config: Config

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.calls: list[Call] = []

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        assert ctx.body is not None and ctx.deployment is not None
        call = Call(copy.deepcopy(ctx.body), ctx.deployment.model, ctx.stream, ctx.principal)
        self.calls.append(call)
        cid, created, model = completion_id(), int(time.time()), ctx.model or call.model
        words = self.config.reply.split(" ")
        ctx.usage = usage(estimate_prompt_tokens(ctx.body.get("messages")), len(words))
        try:
            if not ctx.stream:  # the gateway closes the generator after its one item: done once handed over
                call.outcome = "completed"
                yield chat_completion(cid, created, model, [message_choice(0, self.config.reply, "stop")], ctx.usage)
                return
            else:
                extra = {"usage": None} if include_usage(ctx.body) else {}
                pieces = [{"role": "assistant", "content": "", "refusal": None}]
                pieces += [{"content": w if i == len(words) - 1 else w + " "} for i, w in enumerate(words)]
                for i, delta in enumerate([*pieces, {}]):
                    if i and self.config.chunk_delay:
                        await asyncio.sleep(self.config.chunk_delay)
                    finish = "stop" if i == len(pieces) else None
                    yield chunk(cid, created, model, [chunk_choice(0, delta, finish)], **extra)
                if extra:
                    yield usage_chunk(cid, created, model, ctx.usage)
            call.outcome = "completed"
        except (asyncio.CancelledError, GeneratorExit):
            if call.outcome == "running":
                call.outcome = "cancelled"
            raise


class RecordingPlugin:
    """Registers the ``recording`` backend type: ``make_app(recording_config(), plugins=[RecordingPlugin()])``."""

    @hookimpl
    def gateway_register_backends(self, register: Callable[[str, type[Backend]], None]) -> None:
        register("recording", RecordingBackend)


def recording_config(name: str = "recording", **options: Any) -> dict[str, Any]:
    """A config with one recording backend (``options`` are its settings); it serves its ``models``."""
    return {"backends": [{"name": name, "type": "recording", **options}]}


def recorded(app: web.Application, name: str = "recording") -> list[Call]:
    """The calls the recording backend ``name`` of ``app`` received."""
    backend = app[backends_key][name]
    assert isinstance(backend, RecordingBackend), f"backend {name!r} is not a recording backend"
    return backend.calls
