"""The fake OpenAI API of ``tests/upstreams/openai.py`` with legacy completions and embeddings too:
``POST /v1/completions`` (JSON and SSE ``text_completion`` chunks, with OpenAI's ``include_usage``
chunk) and ``POST /v1/embeddings`` (float or base64 vectors), also at Azure deployment URLs.

Each request takes the next ``Reply`` like a chat request: ``status``/``error``/``headers``,
``content`` (the completion, streamed word by word), ``usage``, ``report_usage``, ``model``, ``hang``, ``done``,
``error_event_after`` and ``json_for_stream`` apply.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from typing import Any

from aiohttp import web

from tests.upstreams.openai import OpenAIUpstream, Reply, _error_body, _usage


def vector(index: int, size: int = 4) -> list[float]:
    """The upstream's embedding of input ``index``: exact float32 values."""
    return [(index + 1) / 8 + i / 16 for i in range(size)]


class OpenAITextUpstream(OpenAIUpstream):
    """``OpenAIUpstream`` plus ``/completions`` and ``/embeddings``; see the module docstring."""

    def __init__(self, models: tuple[str, ...] = ("gpt-3.5-turbo-instruct", "text-embedding-3-small")) -> None:
        super().__init__(models)
        for prefix in ("/v1", "/openai/deployments/{deployment}"):
            self.app.router.add_post(f"{prefix}/completions", self.completions)
            self.app.router.add_post(f"{prefix}/embeddings", self.embeddings)

    async def _begin(self, request: web.Request) -> tuple[Any, Reply, str, dict[str, str], web.Response | None]:
        body = await self._record(request)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.hang:
            await asyncio.sleep(3600)
        headers = {"x-request-id": f"req_{len(self.requests)}", **reply.headers}
        model = reply.model or body.get("model") or request.match_info.get("deployment", "")
        if reply.status < 400:
            return body, reply, model, headers, None
        error = reply.error if reply.error is not None else _error_body(f"failure {reply.status}", "server_error")
        if isinstance(error, dict):
            return body, reply, model, headers, web.json_response(error, status=reply.status, headers=headers)
        return body, reply, model, headers, web.Response(text=str(error), status=reply.status, headers=headers)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body, reply, model, headers, failed = await self._begin(request)
        if failed is not None:
            return failed
        if not body.get("stream") or reply.json_for_stream:
            choice = {"text": reply.content, "index": 0, "logprobs": None, "finish_reason": "stop"}
            usage = {"usage": _usage(reply)} if reply.report_usage else {}
            return web.json_response({**_text(model, [choice]), **usage}, headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8", **headers})
        await response.prepare(request)
        with_usage = reply.report_usage and bool((body.get("stream_options") or {}).get("include_usage"))
        extra = {"usage": None} if with_usage else {}
        words = reply.content.split(" ")
        pieces = [(w if i == len(words) - 1 else w + " ", None) for i, w in enumerate(words)] + [("", "stop")]
        events = [
            {**_text(model, [{"text": t, "index": 0, "logprobs": None, "finish_reason": f}]), **extra}
            for t, f in pieces
        ]
        if with_usage:
            events.append({**_text(model, []), "usage": _usage(reply)})
        for i, event in enumerate(events):
            if i == reply.error_event_after:
                error = _error_body("The server had an error while processing your request.", "server_error")
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
                return response
            await response.write(b"data: " + json.dumps(event, separators=(",", ":")).encode() + b"\n\n")
        if reply.done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def embeddings(self, request: web.Request) -> web.Response:
        body, reply, model, headers, failed = await self._begin(request)
        if failed is not None:
            return failed
        inputs = body["input"] if isinstance(body["input"], list) and not isinstance(body["input"][0], int) else [1]
        data = []
        for i in range(len(inputs)):
            values = vector(i, body.get("dimensions") or 4)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
            else:
                encoded = values
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        tokens = reply.usage[0]
        answer = {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if not reply.report_usage:
            del answer["usage"]
        return web.json_response(answer, headers=headers)


def _text(model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "cmpl-upstream",
        "object": "text_completion",
        "created": 1700000000,
        "model": model,
        "system_fingerprint": "fp_upstream",
        "choices": choices,
    }
