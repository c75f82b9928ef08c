"""A fake OpenAI API on 127.0.0.1: chat completions (JSON and SSE, byte-compatible with OpenAI's
framing), model listing, Azure-style deployment URLs, and every way an upstream misbehaves.

``upstream = OpenAIUpstream()``, serve ``upstream.app`` (pytest-aiohttp's ``aiohttp_server``, or
``gateway.testing.ServerThread`` for synchronous clients), point a backend at ``.../v1``.
Each request takes the next ``Reply`` of ``upstream.replies`` (else ``upstream.default``) and is
recorded in ``upstream.requests``; ``upstream.fail(n)`` queues ``n`` failures. A request held open
(``hang``, ``hang_after``) waits until the gateway drops it, which ``upstream.disconnects`` counts;
``upstream.active`` is the number of chat requests being answered.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Self

from aiohttp import web

from tests.upstreams import Padded, Recorded, record


@dataclass
class Reply:
    """How the fake upstream answers one request."""

    content: str = "Hello from upstream"
    status: int = 200
    error: Any = None  # the body of an error status: a dict (JSON) or text; default OpenAI's shape
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] = (11, 4)
    report_usage: bool = True  # False: no usage at all (JSON without it; a stream ignores include_usage)
    model: str | None = None  # the model the answer names (default: the one asked for)
    delay: float = 0.0  # seconds before the response starts
    hang: bool = False  # never answer (until the client goes away)
    reset: bool = False  # drop the connection without answering
    chunk_delay: float = 0.0  # seconds between streamed chunks
    hang_after: int | None = None  # stream: stop sending (connection open) after this many chunks
    die_after: int | None = None  # stream: drop the connection after this many chunks
    error_event_after: int | None = None  # stream: an error event after this many chunks, then close
    gate: asyncio.Event | None = None  # stream: after the first chunk, wait until this is set
    done: bool = True  # stream: end with data: [DONE] (False: end cleanly after the finish chunk, as older llama.cpp)
    end_after: int | None = None  # stream: end cleanly (no finish, no [DONE]) after this many chunks
    crlf: bool = False  # stream: lines end with \r\n
    one_write: bool = False  # stream: every event in a single write
    json_for_stream: bool = False  # answer a stream request with a JSON completion
    padding: int = 0  # bytes of padding in front of a JSON answer, sent in pieces (``tests.upstreams.Padded``)
    tool_calls: list[tuple[str, str]] = field(default_factory=list)  # (name, arguments): finish "tool_calls"
    finish_reason: str = ""  # the answer's finish_reason (default: "tool_calls" with tool calls, else "stop")
    stop_reason: str | None = None  # the choice's stop_reason (vLLM's field: the stop string that ended it)

    @property
    def finish(self) -> str:
        return self.finish_reason or ("tool_calls" if self.tool_calls else "stop")


class OpenAIUpstream:
    def __init__(self, models: tuple[str, ...] = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")) -> None:
        self.models = list(models)
        self.models_status = 200
        self.default = Reply()
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.finished = 0  # chat requests answered to the end
        self.disconnects = 0  # requests held open that the client dropped
        self.padded = Padded()  # the padded answers' bytes sent
        self.active = 0  # chat requests being answered now
        self.base_url = ""  # set by ``serve``: the ``/v1`` URL a backend's ``base_url`` takes
        self.server: Any = None
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)

    async def serve(self, aiohttp_server: Any) -> Self:
        """Serve on 127.0.0.1 with pytest-aiohttp's ``aiohttp_server``; ``base_url`` is then set."""
        self.server = await aiohttp_server(self.app)
        self.base_url = str(self.server.make_url("/v1"))
        return self

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self.replies.extend(replies)

    def fail(self, times: int, status: int = 500, **options: Any) -> None:
        """Answer the next ``times`` requests with an error ``status`` (``options``: other ``Reply`` fields)."""
        self.replies.extend(Reply(status=status, **options) for _ in range(times))

    async def _hold(self, request: web.Request) -> None:
        """Send nothing until the client goes away (then count it)."""
        try:
            while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110 (no event for it)
                await asyncio.sleep(0.01)
        finally:
            self.disconnects += 1

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    async def _record(self, request: web.Request) -> Any:
        return await record(request, self.requests)

    async def list_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if self.models_status != 200:
            return web.json_response(_error_body("listing failed", "server_error"), status=self.models_status)
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "openai"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        self.active += 1
        try:
            return await self._chat(request)
        finally:
            self.active -= 1

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.reset:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        if reply.hang:
            await self._hold(request)
            return web.Response()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = {"x-request-id": f"req_{len(self.requests)}", **reply.headers}
        if reply.status >= 400:
            error = reply.error if reply.error is not None else _error_body(f"failure {reply.status}", "server_error")
            if isinstance(error, dict):
                return web.json_response(error, status=reply.status, headers=headers)
            return web.Response(text=str(error), status=reply.status, headers=headers)
        model = reply.model or body.get("model") or request.match_info.get("deployment", "")
        if body.get("stream") and not reply.json_for_stream:
            return await self._stream(request, body, reply, model, headers)
        self.finished += 1
        if reply.padding:
            return await self.padded.send(request, _completion(reply, model), reply.padding)
        return web.json_response(_completion(reply, model), headers=headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, model: str, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", **headers})
        await response.prepare(request)
        with_usage = reply.report_usage and bool((body.get("stream_options") or {}).get("include_usage"))
        events = [json.dumps(c, separators=(",", ":")) for c in _chunks(reply, model, with_usage)]
        if reply.done:
            events.append("[DONE]")
        newline = "\r\n" if reply.crlf else "\n"
        frames = [f"data: {e}{newline}{newline}".encode() for e in events]
        if reply.one_write:
            await response.write(b"".join(frames))
            frames = []
        for i, frame in enumerate(frames):
            if i == reply.hang_after:
                await self._hold(request)
                return response
            if i == reply.die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == reply.end_after:
                await response.write_eof()
                return response
            if i == reply.error_event_after:
                error = _error_body("The server had an error while processing your request.", "server_error")
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                return response
            if i == 1 and reply.gate is not None:
                await reply.gate.wait()
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await response.write(frame)
        self.finished += 1
        await response.write_eof()
        return response


def _error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _usage(reply: Reply) -> dict[str, int]:
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion(reply: Reply, model: str) -> dict[str, Any]:
    completion = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content or None, "refusal": None, **_calls(reply)},
                "logprobs": None,
                "finish_reason": reply.finish,
                **_stop_reason(reply),
            }
        ],
        "usage": _usage(reply),
        "system_fingerprint": "fp_upstream",
    }
    if not reply.report_usage:
        del completion["usage"]
    return completion


def _stop_reason(reply: Reply) -> dict[str, Any]:
    return {} if reply.stop_reason is None else {"stop_reason": reply.stop_reason}


def _calls(reply: Reply) -> dict[str, Any]:
    """A message's ``tool_calls`` (none: no key)."""
    if not reply.tool_calls:
        return {}
    calls = [
        {"id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": arguments}}
        for i, (name, arguments) in enumerate(reply.tool_calls)
    ]
    return {"tool_calls": calls}


def _chunks(reply: Reply, model: str, with_usage: bool) -> list[dict[str, Any]]:
    extra = {"usage": None} if with_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "chatcmpl-upstream",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "system_fingerprint": "fp_upstream",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                | (_stop_reason(reply) if finish else {})
            ],
            **extra,
        }

    words = reply.content.split(" ") if reply.content else []
    pieces = [{"role": "assistant", "content": "", "refusal": None}]
    pieces += [{"content": w if i == len(words) - 1 else w + " "} for i, w in enumerate(words)]
    for i, (name, arguments) in enumerate(reply.tool_calls):  # OpenAI's way: id and name, then the arguments
        head = {"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name, "arguments": ""}}
        pieces.append({"tool_calls": [head]})
        half = len(arguments) // 2
        for part in (arguments[:half], arguments[half:]):
            pieces.append({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
    chunks = [chunk(delta) for delta in pieces] + [chunk({}, reply.finish)]
    if with_usage:
        chunks.append({**chunk({}), "choices": [], "usage": _usage(reply)})
    return chunks
