"""gateway.upstream.ModelCache: the model list every listing backend keeps (openai_compat, anthropic,
sourcegraph), here on its own; the backends' tests drive it through real upstreams."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.errors import UpstreamError
from gateway.upstream import errors as upstream
from gateway.upstream.errors import ModelCache


class Upstream:
    """A fetch function that counts its calls; ``fail`` makes it raise, ``gate`` holds it."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail = False
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> list[dict[str, Any]]:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise UpstreamError("Backend 'up' failed with HTTP 503")
        return [{"id": f"model-{self.calls}"}]


async def test_concurrent_callers_share_one_fetch() -> None:
    fetch = Upstream()
    fetch.gate = asyncio.Event()
    cache = ModelCache("up", fetch, ttl=60)
    waiting = [asyncio.ensure_future(cache.get()) for _ in range(5)]
    await asyncio.sleep(0)
    fetch.gate.set()
    assert await asyncio.gather(*waiting) == [[{"id": "model-1"}]] * 5
    assert fetch.calls == 1


async def test_a_stale_list_is_refetched_and_served_while_the_upstream_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fetch = Upstream()
    cache = ModelCache("up", fetch, ttl=0)
    assert await cache.get() == [{"id": "model-1"}]
    assert await cache.get() == [{"id": "model-2"}]  # ttl 0: always stale
    fetch.fail = True
    assert await cache.get() == [{"id": "model-2"}]  # the last list, not an error
    assert await cache.get() == [{"id": "model-2"}] and fetch.calls == 3  # the failure is remembered
    monkeypatch.setattr(upstream, "MODELS_RETRY", 0.0)
    fetch.fail = False
    assert await cache.get() == [{"id": "model-4"}]


async def test_a_failure_without_a_list_raises_and_is_remembered(monkeypatch: pytest.MonkeyPatch) -> None:
    fetch = Upstream()
    fetch.fail = True
    cache = ModelCache("up", fetch, ttl=60)
    for _ in range(3):
        with pytest.raises(UpstreamError, match="503"):
            await cache.get()
    assert fetch.calls == 1
    monkeypatch.setattr(upstream, "MODELS_RETRY", 0.0)
    fetch.fail = False
    assert await cache.get() == [{"id": "model-2"}]


async def test_refresh_refetches_a_fresh_list_once_per_models_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    fetch = Upstream()
    cache = ModelCache("up", fetch, ttl=60)
    await cache.get()
    assert await cache.get(refresh=True) == [{"id": "model-1"}]  # fetched just now
    monkeypatch.setattr(upstream, "MODELS_RETRY", 0.0)
    assert await cache.get(refresh=True) == [{"id": "model-2"}]
    assert await cache.get() == [{"id": "model-2"}] and fetch.calls == 2
