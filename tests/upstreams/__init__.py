"""Fake upstream servers speaking real provider protocols, for tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from gateway import hookimpl


@dataclass
class Recorded:
    """One request a fake upstream received."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # the parsed JSON body; the raw bytes when it is not JSON; None when empty


async def record(request: web.Request, requests: list[Recorded]) -> Any:
    """Append ``request`` to ``requests``; its body."""
    raw = await request.read()
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw
    requests.append(Recorded(request.method, request.path, dict(request.query), dict(request.headers), body))
    return body


class Padded:
    """A JSON answer with a ``padding`` field of ``size`` bytes in front, sent in pieces without a
    Content-Length (never whole in memory); ``sent`` counts the bytes the client took."""

    PIECE = 64 * 1024

    def __init__(self) -> None:
        self.sent = 0

    async def send(self, request: web.Request, answer: dict[str, Any], size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        piece = b"x" * self.PIECE
        try:
            await response.write(b'{"padding":"')
            for _ in range(size // self.PIECE):
                await response.write(piece)
                self.sent += len(piece)
            await response.write(b'",' + json.dumps(answer).encode()[1:])
            await response.write_eof()
        except ConnectionError:  # the client stopped reading and closed the connection
            pass
        return response


class UsageRecorder:
    """A plugin recording ``(ctx.usage, ctx.usage_estimated)`` of every finished request."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, bool]] = []

    @hookimpl
    def gateway_request_finished(self, ctx: Any) -> None:
        self.seen.append((ctx.usage, ctx.usage_estimated))
