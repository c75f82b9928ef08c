"""Fake custom chat APIs on 127.0.0.1, for the ``http_template`` backend.

- ``POST /chatting``: seed 003's API. It takes ``{"message": str, "history": [{"role", "content"}]}``
  (else 422, FastAPI style), checks ``Authorization: Bearer <key>`` when ``api.key`` is set (else
  401) and answers ``{"reply": "You said: <message>"}``.
- ``POST /v2/generate``: another API, with a nested answer:
  ``{"output": {"choices": [{"text": ...}]}, "meta": {"stop": "max_tokens", "tokens": {"input": 7, "output": 3}}}``,
  or, for a body with ``"stream": true``, the NDJSON stream below.
- ``POST /stream.ndjson``: one ``{"token": "..."}`` line a word, then
  ``{"done": true, "stop": "end", "usage": {"in": 7, "out": 3}}``.
- ``POST /stream.sse``: ``data: {"delta": {"text": "..."}}`` events, then ``data: [DONE]``.

``api = ChatAPI()``, serve ``api.app`` (pytest-aiohttp's ``aiohttp_server``, or
``gateway.testing.ServerThread``). Each request takes the next ``Reply`` of ``api.replies`` (else
``api.default``) and is recorded in ``api.requests``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.upstreams import Padded, Recorded, record

USAGE = {"in": 7, "out": 3}


@dataclass
class Reply:
    """How the fake API answers one request."""

    text: str | None = None  # the reply; default "You said: <message>" (or "<prompt>")
    status: int = 200
    error: Any = None  # the body of an error status: a dict (JSON) or text
    raw: bytes | None = None  # answer exactly these bytes (status 200), e.g. a body the mapping does not fit
    delay: float = 0.0  # seconds before the response starts
    hang: bool = False  # never answer
    chunk_delay: float = 0.0  # streams: seconds between events
    hang_after: int | None = None  # streams: stop sending (connection open) after this many events
    die_after: int | None = None  # streams: drop the connection after this many events
    done: bool = True  # streams: send the final event
    padding: int = 0  # bytes of padding in front of a JSON answer, sent in pieces (``tests.upstreams.Padded``)
    done_flag: bool = True  # ndjson: the final event says `"done": true` (False: only its stop reason and usage)


class ChatAPI:
    def __init__(self, key: str | None = None) -> None:
        self.key = key
        self.default = Reply()
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.padded = Padded()  # the padded answers' bytes sent
        self.app = web.Application()
        self.app.router.add_post("/chatting", self._handler(self.chatting))
        self.app.router.add_post("/v2/generate", self._handler(self.generate))
        self.app.router.add_post("/stream.ndjson", self._handler(self.ndjson))
        self.app.router.add_post("/stream.sse", self._handler(self.sse))

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self.replies.extend(replies)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def _handler(
        self, answer: Callable[[web.Request, Any, Reply], Awaitable[web.StreamResponse]]
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await record(request, self.requests)
            reply = self.replies.popleft() if self.replies else self.default
            if reply.hang:
                await asyncio.sleep(3600)
            if reply.delay:
                await asyncio.sleep(reply.delay)
            if self.key is not None and request.headers.get("Authorization") != f"Bearer {self.key}":
                return web.json_response({"detail": "Invalid API key"}, status=401)
            if reply.status >= 400:
                if isinstance(reply.error, str):
                    return web.Response(text=reply.error, status=reply.status)
                return web.json_response(reply.error or {"detail": f"failure {reply.status}"}, status=reply.status)
            if reply.raw is not None:
                return web.Response(body=reply.raw, content_type="application/json")
            return await answer(request, body, reply)

        return handle

    async def chatting(self, request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
        problem = _seed_003_problem(body)
        if problem:
            return web.json_response({"detail": [{"loc": ["body"], "msg": problem, "type": "value_error"}]}, status=422)
        answer = {"reply": reply.text or f"You said: {body['message']}"}
        if reply.padding:
            return await self.padded.send(request, answer, reply.padding)
        return web.json_response(answer)

    async def generate(self, request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
        if (body or {}).get("stream") is True:
            return await self.ndjson(request, body, reply)
        text = reply.text or f"You said: {(body or {}).get('prompt')}"
        meta = {"stop": "max_tokens", "tokens": {"input": USAGE["in"], "output": USAGE["out"]}}
        return web.json_response({"output": {"choices": [{"text": text}]}, "meta": meta})

    async def ndjson(self, request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
        lines = [{"token": w} for w in _words(reply.text or f"You said: {(body or {}).get('prompt')}")]
        final = {"done": True, "stop": "end", "usage": USAGE} if reply.done else None
        if final is not None and not reply.done_flag:
            del final["done"]
        frames = [json.dumps(x).encode() + b"\n" for x in [*lines, final] if x is not None]
        return await _stream(request, reply, "application/x-ndjson", frames)

    async def sse(self, request: web.Request, body: Any, reply: Reply) -> web.StreamResponse:
        events = [{"delta": {"text": w}} for w in _words(reply.text or f"You said: {(body or {}).get('prompt')}")]
        frames = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        if reply.done:
            frames.append(b"data: [DONE]\n\n")
        return await _stream(request, reply, "text/event-stream", frames)


def _seed_003_problem(body: Any) -> str | None:
    """What is wrong with a body seed 003's API would refuse, or None."""
    if not isinstance(body, dict) or set(body) != {"message", "history"}:
        return f"expected exactly the fields message and history, got {sorted(body or {})}"
    if not isinstance(body["message"], str):
        return "message must be a string"
    history = body["history"]
    if not isinstance(history, list) or not all(
        isinstance(m, dict) and set(m) == {"role", "content"} and all(isinstance(v, str) for v in m.values())
        for m in history
    ):
        return "history must be a list of {role, content} strings"
    return None


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == len(words) - 1 else w + " " for i, w in enumerate(words)]


async def _stream(request: web.Request, reply: Reply, content_type: str, frames: list[bytes]) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": content_type})
    await response.prepare(request)
    for i, frame in enumerate(frames):
        if i == reply.hang_after:
            await asyncio.sleep(3600)
        if i == reply.die_after:
            assert request.transport is not None
            request.transport.close()
            return response
        if i and reply.chunk_delay:
            await asyncio.sleep(reply.chunk_delay)
        await response.write(frame)
    await response.write_eof()
    return response
