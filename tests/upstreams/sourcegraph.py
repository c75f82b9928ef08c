"""A fake Sourcegraph instance on 127.0.0.1 speaking its LLM API as the real one does.

- ``GET /.api/llm/models``: ``{"object": "list", "data": [{"id": "provider::apiVersion::model", ...}]}``.
- ``GET /.api/modelconfig/supported-models.json`` (Sourcegraph 5.6 and later): the instance's model
  configuration, ``{"schemaVersion", "revision", "providers", "models": [{"modelRef", "displayName",
  "modelName", "capabilities", "category", "status", "tier", "contextWindow"}], "defaultModels":
  {"chat", "fastChat", "codeCompletion"}}``; ``modelconfig_status`` 404 for an older instance.
- ``POST /.api/llm/chat/completions``: OpenAI-shaped JSON answers (``object: "object"``, ``created``
  in milliseconds, ``finish_reason: "end_turn"``, usage of zeros unless set), or an OpenAI-style SSE
  stream when ``stream`` is supported. Like the first versions of the API, it can refuse
  ``stream``, the ``system`` role and ``n`` != 1 with plain-text 400s, and answers an unknown model
  with a 500 wrapping the inner 400.
- ``POST /.api/completions/stream`` (legacy): ``{"messages": [{"speaker", "text"}], ...}`` answered
  with ``event: completion`` (the whole text so far; ``deltaText`` with ``api-version`` >= 2),
  ``event: error`` and ``event: done``.
- Every endpoint wants ``Authorization: token <token>`` (else a plain-text 401).

Each chat request takes the next ``Reply`` of ``replies`` (else ``default``) and is recorded in
``requests``. ``hang``, ``die_after`` (drop the connection mid-stream), ``error_event_after``,
``done`` (end the stream properly) shape how it misbehaves.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstreams import Recorded, record

TOKEN = "sgp_0123456789abcdef_0123456789abcdef0123456789abcdef01234567"
MODELS = (
    "anthropic::2023-06-01::claude-3.5-sonnet",
    "anthropic::2023-06-01::claude-3-haiku",
    "openai::2024-02-01::gpt-4o",
)
_MODELREF = re.compile(r".+::.+::.+")
#: The autocomplete model the model configuration lists beside the chat models (not a chat model).
AUTOCOMPLETE = "fireworks::v1::deepseek-coder-v2-lite-base"


@dataclass
class Reply:
    """How the fake instance answers one chat request."""

    content: str = "Hello from Sourcegraph"
    status: int = 200
    error: str | bytes | dict[str, Any] | None = None  # the body of an error status (text, or JSON)
    headers: dict[str, str] = field(default_factory=dict)
    usage: tuple[int, int] | None = None  # None: zeros, as many instances report
    finish_reason: str = "end_turn"
    hang: bool = False  # never answer
    die_after: int | None = None  # stream: drop the connection after this many events
    hang_after: int | None = None  # stream: go silent (connection open) after this many events
    error_event_after: int | None = None  # stream: an error event after this many events
    error_message: str = "upstream LLM provider failed: overloaded"
    done: bool = True  # stream: end properly ([DONE] or event: done)
    json_for_stream: bool = False  # answer a stream request with one JSON completion


class SourcegraphUpstream:
    def __init__(self, models: tuple[str, ...] = MODELS, token: str = TOKEN) -> None:
        self.models = list(models)
        self.token = token
        self.models_status = 200  # 404: an instance without /.api/llm
        self.modelconfig_status = 200  # 404: an instance older than the model configuration (5.6)
        self.default_chat = self.models[0]  # defaultModels.chat of the model configuration
        self.modelconfig_requests = 0
        self.stream = True  # the chat API accepts "stream": true
        self.system = True  # ... the system role
        self.n = True  # ... n > 1
        self.default = Reply()
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.app = web.Application()
        self.app.router.add_get("/.api/llm/models", self._models)
        self.app.router.add_get("/.api/modelconfig/supported-models.json", self._modelconfig)
        self.app.router.add_post("/.api/llm/chat/completions", self._chat)
        self.app.router.add_post("/.api/completions/stream", self._legacy)

    def chat_requests(self, path: str = "/.api/llm/chat/completions") -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    def _next(self) -> Reply:
        return self.replies.popleft() if self.replies else self.default

    async def _record(self, request: web.Request) -> Any:
        return await record(request, self.requests)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == f"token {self.token}"

    async def _models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid access token.\n")
        if self.models_status != 200:
            return web.Response(status=self.models_status, text="404 page not found\n")
        data = [{"id": m, "object": "model", "created": 0, "owned_by": m.split("::")[0]} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _modelconfig(self, request: web.Request) -> web.Response:
        self.modelconfig_requests += 1
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid access token.\n")
        if self.modelconfig_status != 200:
            return web.Response(status=self.modelconfig_status, text="404 page not found\n")
        models = [_modelconfig_model(m, ["chat", "tools"]) for m in self.models]
        models.append(_modelconfig_model(AUTOCOMPLETE, ["autocomplete"]))
        providers = sorted({m.split("::")[0] for m in [*self.models, AUTOCOMPLETE]})
        return web.json_response(
            {
                "schemaVersion": "1.0",
                "revision": "0.0.0+dev",
                "providers": [{"id": p, "displayName": p.title()} for p in providers],
                "models": models,
                "defaultModels": {
                    "chat": self.default_chat,
                    "fastChat": self.models[-1],
                    "codeCompletion": AUTOCOMPLETE,
                },
            }
        )

    async def _refusal(self, request: web.Request, reply: Reply) -> web.StreamResponse | None:
        """The error answers shared by both chat endpoints, or None to answer normally."""
        if not self._authorized(request):
            return web.Response(status=401, text="Invalid access token.\n")
        if reply.hang:
            await asyncio.Event().wait()
        if reply.status >= 400:
            error = reply.error if reply.error is not None else f"upstream error {reply.status}"
            if isinstance(error, dict):
                return web.json_response(error, status=reply.status, headers=reply.headers)
            return web.Response(status=reply.status, body=error, headers=reply.headers, content_type="text/plain")
        return None

    # /.api/llm/chat/completions ------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self._next()
        refused = await self._refusal(request, reply)
        if refused is not None:
            return refused
        problem = self._validate(body)
        if problem:
            return web.Response(status=400, text=problem + "\n")
        model = body["model"]
        if model not in self.models:
            inner = f'the requested chat model is not available ("{model}", onProTier=true)'
            return web.Response(
                status=500,
                text="failed to forward request to apiHandler: handler returned unexpected status code: "
                f"got 400 want 200, response body: {inner}\n",
            )
        n = body.get("n") or 1
        if body.get("stream") and not reply.json_for_stream:
            return await self._chat_stream(request, reply, model, n)
        prompt, completion = reply.usage or (0, 0)
        return web.json_response(
            {
                "id": "chat-6b1c1d4e-0000-4000-8000-000000000000",
                "object": "object",
                "created": 1727692163829,
                "model": model,
                "choices": [
                    {
                        "index": i,
                        "finish_reason": reply.finish_reason,
                        "message": {"role": "assistant", "content": reply.content},
                    }
                    for i in range(n)
                ],
                "usage": _usage(prompt, completion),
                "system_fingerprint": "",
            },
            headers=reply.headers,
        )

    def _validate(self, body: Any) -> str:
        """What the first versions of the API refuse, with their words."""
        if not isinstance(body, dict):
            return "decoder.Decode: invalid request body"
        if not self.n and (body.get("n") or 1) != 1:
            return "n must be nil or 1"
        if not self.stream and body.get("stream"):
            return "stream is not supported"
        if "stream_options" in body:
            return "stream_options is not supported"
        if body.get("response_format") is not None:
            return "response_format is not supported"
        if not self.system and any(m.get("role") == "system" for m in body.get("messages") or ()):
            return "system role is not supported"
        if not _MODELREF.match(str(body.get("model"))):
            expected = "${ProviderID}::${APIVersionID}::${ModelID}"
            return f"model {body.get('model')} is not in the correct format. Expected format: {expected}"
        return ""

    async def _chat_stream(self, request: web.Request, reply: Reply, model: str, n: int) -> web.StreamResponse:
        words = reply.content.split(" ")
        events = []
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            for index in range(n):
                delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
                events.append(
                    _sse({"object": "chat.completion.chunk", "model": model, "choices": [_choice(index, delta)]})
                )
        for index in range(n):
            events.append(_sse({"model": model, "choices": [_choice(index, {}, reply.finish_reason)]}))
        if reply.usage:
            prompt, completion = reply.usage
            events.append(_sse({"model": model, "choices": [], "usage": _usage(prompt, completion)}))
        return await self._send_stream(request, reply, events, b"data: [DONE]\n\n")

    async def _send_stream(
        self, request: web.Request, reply: Reply, events: list[bytes], done: bytes
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", **reply.headers})
        await response.prepare(request)
        for i, event in enumerate(events):
            if i == reply.die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == reply.hang_after:
                await asyncio.Event().wait()
            if i == reply.error_event_after:
                await response.write(self._error_event(request, reply))
                await response.write_eof()
                return response
            await response.write(event)
        if reply.done:
            await response.write(done)
        await response.write_eof()
        return response

    def _error_event(self, request: web.Request, reply: Reply) -> bytes:
        if request.path == "/.api/completions/stream":
            return b"event: error\ndata: " + json.dumps({"error": reply.error_message}).encode() + b"\n\n"
        return _sse({"error": {"message": reply.error_message, "type": "upstream_error"}})

    # /.api/completions/stream (legacy) -----------------------------------------------------

    async def _legacy(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        reply = self._next()
        refused = await self._refusal(request, reply)
        if refused is not None:
            return refused
        if not isinstance(body, dict):
            return web.Response(status=400, text="could not decode request body\n")
        model = body.get("model")
        if model is not None and model not in self.models:
            return web.Response(status=400, text=f'the requested chat model is not available ("{model}")\n')
        messages = body.get("messages") or []
        for previous, message in itertools.pairwise(messages):
            if previous.get("speaker") == message.get("speaker"):
                error = {"error": f"found consecutive messages with the same speaker '{message['speaker']}'"}
                return await self._send_stream(
                    request, Reply(), [b"event: error\ndata: " + json.dumps(error).encode() + b"\n\n"], _LEGACY_DONE
                )
        incremental = int(request.query.get("api-version", "0")) >= 2
        words, text, events = reply.content.split(" "), "", []
        for i, word in enumerate(words):
            piece = word if i == len(words) - 1 else word + " "
            text += piece
            payload: dict[str, Any] = {"deltaText": piece} if incremental else {"completion": text}
            payload["stopReason"] = reply.finish_reason if i == len(words) - 1 else ""
            events.append(b"event: completion\ndata: " + json.dumps(payload).encode() + b"\n\n")
        return await self._send_stream(request, reply, events, _LEGACY_DONE)


_LEGACY_DONE = b"event: done\ndata: {}\n\n"


def _modelconfig_model(ref: str, capabilities: list[str]) -> dict[str, Any]:
    """One model of the model configuration, as Sourcegraph describes it."""
    name = ref.split("::")[-1]
    return {
        "modelRef": ref,
        "displayName": name.replace("-", " ").title(),
        "modelName": name,
        "capabilities": capabilities,
        "category": "balanced",
        "status": "stable",
        "tier": "enterprise",
        "contextWindow": {"maxInputTokens": 45000, "maxOutputTokens": 4000},
    }


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
