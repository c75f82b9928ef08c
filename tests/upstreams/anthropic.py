"""A fake Anthropic API on 127.0.0.1: ``POST /v1/messages`` (JSON and SSE, framed as Anthropic frames
its events), ``GET /v1/models`` with its pagination, Anthropic's error bodies, and every way an
upstream misbehaves.

It checks requests the way Anthropic does, so a translation bug fails loudly: the key (``x-api-key``,
or a bearer token as recent SDKs send it) and ``anthropic-version`` headers, no unknown top-level
fields, ``max_tokens`` present, turns that alternate, non-empty text blocks, tool results that answer
the previous turn's tool uses and come first in their turn, ``temperature`` within 0..1.

``upstream = AnthropicUpstream()``, serve ``upstream.app`` (pytest-aiohttp's ``aiohttp_server``, or
``gateway.testing.ServerThread``), point a backend's ``base_url`` at it. Each request takes the next
``Reply`` of ``upstream.replies`` (else ``upstream.default``) and is recorded in ``upstream.requests``.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.upstreams import Recorded, record

API_KEY = "sk-ant-test-0123456789"
MESSAGE_FIELDS = frozenset(
    {
        "model", "messages", "max_tokens", "system", "stop_sequences", "stream", "temperature", "top_p",
        "top_k", "tools", "tool_choice", "metadata", "thinking", "service_tier",
    }
)  # fmt: skip
#: Anthropic's error types by HTTP status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ARGUMENT_FRAGMENT = 7  # characters of tool input JSON per input_json_delta


def text(value: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": value}


def tool_use(id: str, name: str, input: dict[str, Any]) -> dict[str, Any]:
    """A tool_use content block."""
    return {"type": "tool_use", "id": id, "name": name, "input": input}


@dataclass
class Reply:
    """How the fake upstream answers one request."""

    blocks: list[dict[str, Any]] = field(default_factory=lambda: [text("Hello from Claude")])
    stop_reason: str = "end_turn"
    stop_sequence: str | None = None
    usage: dict[str, int] = field(default_factory=lambda: {"input_tokens": 12, "output_tokens": 5})
    report_usage: bool = True  # False: no usage anywhere (as some Anthropic-compatible proxies answer)
    status: int = 200
    error_type: str | None = None  # default: Anthropic's type for the status
    error_message: str = "Something went wrong"
    raw_error: str | None = None  # an error body sent as it is (e.g. a proxy's HTML)
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the response starts
    hang: bool = False  # never answer
    chunk_delay: float = 0.0  # seconds between stream events
    hang_after: int | None = None  # stream: stop sending (connection open) after this many events
    die_after: int | None = None  # stream: drop the connection after this many events
    error_event_after: int | None = None  # stream: an error event after this many events, then the end
    error_event_type: str = "overloaded_error"
    message_stop: bool = True  # stream: end with message_stop
    end_after: int | None = None  # stream: end cleanly (no message_delta, no message_stop) after this many events
    json_for_stream: bool = False  # answer a stream request with a JSON message


class AnthropicUpstream:
    def __init__(
        self, models: tuple[str, ...] = ("claude-sonnet-test", "claude-haiku-test", "claude-opus-test")
    ) -> None:
        self.models = list(models)
        self.models_status = 200
        self.default = Reply()
        self.replies: deque[Reply] = deque()
        self.requests: list[Recorded] = []
        self.finished = 0  # message requests answered to the end
        self.base_url = ""  # set by whoever serves the app, for configs
        self.app = web.Application()
        self.app.router.add_get("/v1/models", self.list_models)
        self.app.router.add_post("/v1/messages", self.messages)

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        self.replies.extend(replies)

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    @property
    def message_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path == "/v1/messages"]

    async def _record(self, request: web.Request) -> Any:
        return await record(request, self.requests)

    # Models ------------------------------------------------------------------------------------

    async def list_models(self, request: web.Request) -> web.Response:
        await self._record(request)
        if (denied := _check_headers(request)) is not None:
            return denied
        if self.models_status != 200:
            return error_response(self.models_status, "listing failed")
        limit = int(request.query.get("limit", "20"))
        start = 0
        if "after_id" in request.query:
            start = self.models.index(request.query["after_id"]) + 1
        page = self.models[start : start + limit]
        data = [
            {
                "type": "model",
                "id": m,
                "display_name": m.replace("-", " ").title(),
                "created_at": "2025-09-29T00:00:00Z",
            }
            for m in page
        ]
        return web.json_response(
            {
                "data": data,
                "has_more": start + limit < len(self.models),
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    # Messages ----------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if (denied := _check_headers(request)) is not None:
            return denied
        problem = check_message_request(body)
        if problem is not None:
            return error_response(400, problem)
        reply = self.replies.popleft() if self.replies else self.default
        if reply.hang:
            await asyncio.sleep(3600)
        if reply.delay:
            await asyncio.sleep(reply.delay)
        headers = {"request-id": f"req_{len(self.requests):04d}", **reply.headers}
        if reply.status >= 400:
            if reply.raw_error is not None:
                return web.Response(text=reply.raw_error, status=reply.status, headers=headers)
            return error_response(reply.status, reply.error_message, reply.error_type, headers)
        if body.get("stream") and not reply.json_for_stream:
            return await self._stream(request, body, reply, headers)
        self.finished += 1
        return web.json_response(message(reply, body["model"]), headers=headers)

    async def _stream(
        self, request: web.Request, body: dict[str, Any], reply: Reply, headers: dict[str, str]
    ) -> web.StreamResponse:
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache", **headers}
        )
        await response.prepare(request)
        for i, event in enumerate(stream_events(reply, body["model"])):
            if i == reply.hang_after:
                await asyncio.sleep(3600)
            if i == reply.die_after:
                assert request.transport is not None
                request.transport.close()
                return response
            if i == reply.end_after:
                await response.write_eof()
                return response
            if i == reply.error_event_after:
                error = {"type": "error", "error": {"type": reply.error_event_type, "message": reply.error_message}}
                await response.write(frame(error))
                await response.write_eof()
                return response
            if i and reply.chunk_delay:
                await asyncio.sleep(reply.chunk_delay)
            await response.write(frame(event))
        self.finished += 1
        await response.write_eof()
        return response


# The protocol ------------------------------------------------------------------------------------


def frame(event: dict[str, Any]) -> bytes:
    """One SSE event as Anthropic sends it: ``event: <type>``, ``data: <json>``, a blank line."""
    return f"event: {event['type']}\ndata: {json.dumps(event, separators=(',', ':'))}\n\n".encode()


def error_body(message: str, type_: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_error"}


def error_response(
    status: int, message: str, type_: str | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        error_body(message, type_ or ERROR_TYPES.get(status, "api_error")), status=status, headers=headers
    )


def _check_headers(request: web.Request) -> web.Response | None:
    key = request.headers.get("x-api-key") or request.headers.get("Authorization", "").removeprefix("Bearer ")
    if key != API_KEY:  # recent SDKs send the key as a bearer token; both are accepted
        return error_response(401, "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return error_response(400, "anthropic-version: header is required")
    return None


def message(reply: Reply, model: str) -> dict[str, Any]:
    """A complete Messages API reply."""
    return {
        "id": "msg_01FakeUpstream",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": reply.blocks,
        "stop_reason": reply.stop_reason,
        "stop_sequence": reply.stop_sequence,
        **({"usage": reply.usage} if reply.report_usage else {}),
    }


def stream_events(reply: Reply, model: str) -> list[dict[str, Any]]:
    """The events of a stream, in Anthropic's order: message_start, a ping, each block's start, deltas
    (text by word, tool input JSON in fragments after an empty one) and stop, message_delta,
    message_stop."""
    start_usage = {k: v for k, v in reply.usage.items() if k != "output_tokens"} | {"output_tokens": 1}
    start = {**message(reply, model), "content": [], "stop_reason": None, "stop_sequence": None, "usage": start_usage}
    if not reply.report_usage:
        del start["usage"]
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}]
    for index, block in enumerate(reply.blocks):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": index, "content_block": text("")})
            deltas = [{"type": "text_delta", "text": w} for w in _words(block["text"])]
        else:
            opening = {**block, "input": {}}
            events.append({"type": "content_block_start", "index": index, "content_block": opening})
            arguments = json.dumps(block["input"])
            fragments = [""] + [
                arguments[i : i + ARGUMENT_FRAGMENT] for i in range(0, len(arguments), ARGUMENT_FRAGMENT)
            ]
            deltas = [{"type": "input_json_delta", "partial_json": f} for f in fragments]
        if index == 0:
            events.append({"type": "ping"})
        events += [{"type": "content_block_delta", "index": index, "delta": d} for d in deltas]
        events.append({"type": "content_block_stop", "index": index})
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": reply.stop_reason, "stop_sequence": reply.stop_sequence},
    }
    if reply.report_usage:
        delta["usage"] = {"output_tokens": reply.usage["output_tokens"]}
    events.append(delta)
    if reply.message_stop:
        events.append({"type": "message_stop"})
    return events


def _words(value: str) -> list[str]:
    pieces = value.split(" ")
    return [p + " " for p in pieces[:-1]] + [pieces[-1]] if value else []


def check_message_request(body: Any) -> str | None:
    """What Anthropic would refuse in a Messages request (its 400 message), or None."""
    if not isinstance(body, dict):
        return "body: Input should be an object"
    for key in body:
        if key not in MESSAGE_FIELDS:
            return f"{key}: Extra inputs are not permitted"
    if not isinstance(body.get("max_tokens"), int) or body["max_tokens"] < 1:
        return "max_tokens: Field required"
    if not isinstance(body.get("model"), str):
        return "model: Field required"
    temperature = body.get("temperature")
    if temperature is not None and not 0 <= temperature <= 1:
        return "temperature: range: 0..1"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    system = body.get("system")
    if system is not None and not (isinstance(system, str) or all(b.get("type") == "text" for b in system)):
        return "system: must be a string or text blocks"
    tool_uses: set[str] = set()
    for i, turn in enumerate(messages):
        if turn.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if i and turn["role"] == messages[i - 1]["role"]:
            return f"messages.{i}: roles must alternate between 'user' and 'assistant'"
        problem = _check_content(turn, i, tool_uses)
        if problem:
            return problem
        tool_uses = (
            {b["id"] for b in turn["content"] if b["type"] == "tool_use"}
            if isinstance(turn["content"], list)
            else set()
        )
    for i, tool in enumerate(body.get("tools") or ()):
        if set(tool) - {"name", "description", "input_schema"} or not isinstance(tool.get("input_schema"), dict):
            return f"tools.{i}: a tool is {{name, description, input_schema}}"
    choice = body.get("tool_choice")
    if choice is not None and (
        choice.get("type") not in ("auto", "any", "tool", "none") or (choice["type"] == "tool") != ("name" in choice)
    ):
        return "tool_choice: invalid"
    return None


def _check_content(turn: dict[str, Any], i: int, tool_uses: set[str]) -> str | None:
    content = turn.get("content")
    if isinstance(content, str):
        return None if content else f"messages.{i}.content: must not be empty"
    if not isinstance(content, list) or not content:
        return f"messages.{i}.content: must be a string or a non-empty list of blocks"
    answered = [b.get("tool_use_id") for b in content if b.get("type") == "tool_result"]
    if tool_uses and set(answered) != tool_uses:
        return f"messages.{i}: tool_use ids were found without tool_result blocks immediately after"
    seen_other = False
    for j, block in enumerate(content):
        kind = block.get("type")
        if kind == "text" and not block.get("text"):
            return f"messages.{i}.content.{j}.text: text content blocks must be non-empty"
        if kind == "tool_result":
            if seen_other:
                return f"messages.{i}.content.{j}: tool_result blocks must come first"
            if block["tool_use_id"] not in tool_uses:
                return f"messages.{i}.content.{j}: unexpected tool_use_id in tool_result blocks"
        else:
            seen_other = True
        if kind == "tool_use" and turn["role"] != "assistant":
            return f"messages.{i}.content.{j}: tool_use blocks belong to assistant turns"
        if kind not in ("text", "image", "tool_use", "tool_result"):
            return f"messages.{i}.content.{j}.type: unknown block type {kind!r}"
    return None
