"""Shared fixtures: a fresh gateway per test, over real sockets."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import pytest
import structlog
from aiohttp.test_utils import TestClient

from gateway.testing import GatewayTestServer, make_app
from tests.upstreams.openai import OpenAIUpstream
from tests.upstreams.openai_text import OpenAITextUpstream

GatewayClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture(autouse=True)
def _quiet_structlog() -> Iterable[None]:
    """Tests start from structlog's defaults (a test that sets up logging must not leak it)."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()


#: Proxy settings a test machine may have: the suite talks to 127.0.0.1 only, its clients (the SDKs'
#: httpx, requests) must not send that through a proxy.
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts without proxy settings (tests/gateway/test_proxy.py sets its own)."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test runs in its own directory, so a developer's ./.env cannot change what it sees."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def gateway(aiohttp_client: Any) -> GatewayClient:
    """``client = await gateway(config=None, plugins=())``: a TestClient on a new gateway app
    (default config: the mock backend serving ``mock-gpt-model``), served as ``gateway serve`` serves it."""

    async def start(config: Any = None, plugins: Iterable[object] = ()) -> TestClient:
        return await aiohttp_client(GatewayTestServer(make_app(config, plugins=plugins)))

    return start


@pytest.fixture
async def upstream(aiohttp_server: Any) -> OpenAIUpstream:
    """A fake OpenAI-compatible upstream (chat, models) on 127.0.0.1; point a backend at its ``base_url``."""
    return await OpenAIUpstream().serve(aiohttp_server)


@pytest.fixture
async def text_upstream(aiohttp_server: Any) -> OpenAITextUpstream:
    """``upstream`` plus ``/completions`` and ``/embeddings``."""
    return await OpenAITextUpstream().serve(aiohttp_server)


@pytest.fixture(scope="session")
def redis_session() -> Iterable[Any]:
    """One real redis-server for the test session (tests that stop it use ``RedisServer`` of their own)."""
    from tests.upstreams.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_session: Any) -> str:
    """The session's Redis, emptied for this test."""
    redis_session.flush()
    return redis_session.url
