"""Fixtures of the core's tests: two fake OpenAI upstreams for the failover, hedging and timeout tests."""

from __future__ import annotations

from typing import Any

import pytest

from tests.upstreams.openai import OpenAIUpstream


@pytest.fixture
async def primary(aiohttp_server: Any) -> OpenAIUpstream:
    """The first deployment of model ``m`` (tests/gateway/two_deployments.py)."""
    return await OpenAIUpstream().serve(aiohttp_server)


@pytest.fixture
async def secondary(aiohttp_server: Any) -> OpenAIUpstream:
    """The second deployment of model ``m``."""
    return await OpenAIUpstream().serve(aiohttp_server)
