"""Helpers for tests that route model ``m`` over two fake OpenAI upstreams, ``primary`` then
``secondary`` (the fixtures of tests/gateway/conftest.py), which fail, rate-limit, hang, die or dawdle
on demand (tests/upstreams/openai.py)."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import openai
from aiohttp.test_utils import TestClient

from tests.upstreams.openai import OpenAIUpstream

KEY = "sk-upstream-key-for-tests"
MESSAGES = [{"role": "user", "content": "Hi"}]
CONTEXT_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def backend(name: str, base_url: str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "openai_compat",
        "base_url": base_url,
        "api_key": KEY,
        "timeout": 2,
        "connect_timeout": 0.5,
        **options,
    }


def both(**route: Any) -> dict[str, Any]:
    """Model ``m``: primary first, secondary when it fails."""
    return {
        "name": "m",
        "deployments": [{"backend": "primary"}, {"backend": "secondary"}],
        "strategy": "failover",
        "retry": {"attempts": 2, "backoff": 0.01},
        **route,
    }


def setup(primary: OpenAIUpstream, secondary: OpenAIUpstream, *models: dict[str, Any], **options: Any) -> Any:
    return {
        "backends": [
            backend("primary", primary.base_url, **options),
            backend("secondary", secondary.base_url, **options),
        ],
        "models": list(models) or [both()],
    }


def sdk(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def post(client: TestClient, stream: bool = False, model: str = "m", **headers: str) -> aiohttp.ClientResponse:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return await client.post("/v1/chat/completions", json=body, headers=headers)


def events(raw: bytes) -> list[Any]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


def served_by(resp: Any) -> tuple[str, str]:
    return resp.headers["x-gateway-backend"], resp.headers["x-gateway-attempts"]


async def until(condition: Any, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
