"""``GET /v1/models`` over backends that list their models: one that hangs is bounded and skipped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from structlog.testing import capture_logs

from gateway import hookimpl, routes
from gateway.backend import Backend
from gateway.context import RequestContext
from tests.conftest import GatewayClient


class HangingBackend(Backend):
    """A third-party backend whose model listing never answers (until it is cancelled)."""

    type_name = "hanging"
    cancelled = 0

    async def list_models(self) -> list[dict[str, Any]]:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            HangingBackend.cancelled += 1
            raise
        return []

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        raise AssertionError("not called")
        yield {}


class HangingPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Callable[[str, type[Backend]], None]) -> None:
        register("hanging", HangingBackend)


CONFIG = {
    "backends": [
        {"name": "stuck", "type": "hanging"},
        {"name": "mock", "type": "mock", "models": ["mock-a", "mock-b"]},
    ],
    "models": [
        {"name": "stuck/*", "backend": "stuck"},
        {"name": "mock-*", "backend": "mock"},
        {"name": "exact", "backend": "stuck"},
    ],
}


async def test_a_hanging_listing_is_skipped(gateway: GatewayClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routes, "LISTING_TIMEOUT", 0.2)
    HangingBackend.cancelled = 0
    client = await gateway(CONFIG, plugins=[HangingPlugin()])
    with capture_logs() as logs:
        resp = await asyncio.wait_for(client.get("/v1/models"), 5)
        assert resp.status == 200
        ids = [m["id"] for m in (await resp.json())["data"]]
    assert sorted(ids) == ["exact", "mock-a", "mock-b"]  # the others' models, and the exact name
    assert HangingBackend.cancelled == 1  # the hung listing was abandoned, not left running
    failed = [e for e in logs if e["event"] == "listing models failed"]
    assert [(e["backend"], e["error"]) for e in failed] == [("stuck", "no answer within 0.2 seconds")]
    retrieved = await client.get("/v1/models/mock-b")
    assert retrieved.status == 200 and (await retrieved.json())["id"] == "mock-b"
