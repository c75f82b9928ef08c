"""Anthropic's Messages API as a front door: a ``/v1/messages`` request translated into the internal
chat completions form, and the answer, its stream events and its errors translated back.

The mapping tables are shared with the ``anthropic`` backend, which translates the other way.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import DialectError, GatewayError, InvalidRequestError
from gateway.formats.chat import estimate_prompt_tokens

#: Anthropic's ``stop_reason`` -> OpenAI's ``finish_reason`` (anything else: ``stop``).
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
#: OpenAI's ``finish_reason`` -> Anthropic's ``stop_reason``.
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
#: OpenAI's ``tool_choice`` strings -> Anthropic's ``tool_choice.type``.
TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}
_CHOICES_BACK = {v: k for k, v in TOOL_CHOICES.items()}
#: Anthropic's error type for each HTTP status (anything else >= 500: ``api_error``).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def message_id() -> str:
    return "msg_" + os.urandom(12).hex()


def stop_of(choice: Mapping[str, Any]) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat choice. A chat backend that says
    which stop string ended the text does so in the choice's ``stop_reason`` (vLLM's field; the mock
    and the anthropic backend set it too): then ``stop_sequence``. OpenAI's own API only says
    ``finish_reason: stop``, which is ``end_turn`` (the text alone cannot tell: the stop string is cut)."""
    finish = choice.get("finish_reason") or "stop"
    sequence = choice.get("stop_reason")
    if finish == "stop" and isinstance(sequence, str) and sequence:
        return "stop_sequence", sequence
    return STOP_REASONS.get(finish, "end_turn"), None


# Requests ---------------------------------------------------------------------------------------


def _invalid(message: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


def validate(body: Any) -> None:
    """Check a Messages request as Anthropic does: ``model``, ``max_tokens`` and ``messages`` required."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    for key in ("model", "max_tokens", "messages"):
        if key not in body:
            raise _invalid("Field required", key)
    if not isinstance(body["max_tokens"], int) or body["max_tokens"] < 1:
        raise _invalid("Input should be a positive integer", "max_tokens")
    if not isinstance(body["messages"], list):
        raise _invalid("Input should be a valid list", "messages")
    for i, message in enumerate(body["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise _invalid("Input should be 'user' or 'assistant'", f"messages.{i}.role")


def validate_count(body: Any) -> None:
    """``count_tokens`` takes the request without ``max_tokens``."""
    validate({"max_tokens": 1, **body} if isinstance(body, dict) else body)


def to_chat(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat completion request for a Messages request."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if system:
        text = system if isinstance(system, str) else "\n".join(b.get("text", "") for b in system)
        messages.append({"role": "system", "content": text})
    for message in body["messages"]:
        messages.extend(_chat_messages(message))
    out: dict[str, Any] = {"model": body["model"], "messages": messages, "max_tokens": body["max_tokens"]}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences"):
        out["stop"] = list(body["stop_sequences"])
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        out["user"] = user
    if body.get("tools"):
        out["tools"] = [_chat_tool(tool) for tool in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, Mapping):
        kind = choice.get("type")
        if kind == "tool":
            out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
        elif kind in _CHOICES_BACK:
            out["tool_choice"] = _CHOICES_BACK[kind]
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = {"name": tool.get("name"), "parameters": tool.get("input_schema") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _chat_messages(message: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat messages of one Messages turn: a user turn's tool results become ``tool`` messages
    (first), an assistant turn's ``tool_use`` blocks its ``tool_calls``."""
    role, content = message["role"], message.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    parts: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for block in content or ():
        kind = block.get("type")
        if kind == "text":
            parts.append({"type": "text", "text": block.get("text", "")})
        elif kind == "image":
            parts.append({"type": "image_url", "image_url": {"url": _image_url(block.get("source") or {})}})
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            )
        elif kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": _result_text(block)})
    if role == "assistant":
        text = "".join(p["text"] for p in parts if p["type"] == "text")
        reply: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            reply["tool_calls"] = calls
        return [reply]
    if parts:
        out.append({"role": "user", "content": parts})
    return out


def _image_url(source: Mapping[str, Any]) -> str:
    if source.get("type") == "base64":
        return f"data:{source.get('media_type')};base64,{source.get('data')}"
    return str(source.get("url", ""))


def _result_text(block: Mapping[str, Any]) -> str:
    content = block.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or () if b.get("type") == "text")


def count_tokens(body: Mapping[str, Any]) -> dict[str, int]:
    """``{"input_tokens": N}`` by the estimate the gateway uses for usage."""
    return {"input_tokens": estimate_prompt_tokens(to_chat({**body, "max_tokens": 1})["messages"])}


# Replies ----------------------------------------------------------------------------------------


def from_completion(completion: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``message`` for a ``chat.completion``."""
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if reply.get("content"):
        content.append({"type": "text", "text": reply["content"]})
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        try:
            arguments = orjson.loads(function.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            arguments = {}
        content.append({"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": arguments})
    usage = completion.get("usage") or {}
    stop_reason, stop_sequence = stop_of(choice)
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": {"input_tokens": usage.get("prompt_tokens", 0), "output_tokens": usage.get("completion_tokens", 0)},
    }


def event(kind: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """``chat.completion.chunk`` dicts in, Anthropic's named SSE events out (as bytes): one content
    block per text run and per tool call, tool-call argument fragments as ``input_json_delta``s."""

    __slots__ = ("_block", "_calls", "_index", "_output", "_sequence", "_stop", "input_tokens", "model")

    def __init__(self, model: str, chat_body: Mapping[str, Any]) -> None:
        self.model = model
        self.input_tokens = estimate_prompt_tokens(chat_body.get("messages"))
        self._index = -1  # the open block's index
        self._block: str | None = None  # the open block's type
        self._calls: dict[int, int] = {}  # tool call index -> block index
        self._stop, self._sequence = "end_turn", None
        self._output: int | None = None  # output tokens the backend reported

    def start(self) -> bytes:
        message = {
            "id": message_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return event("message_start", {"type": "message_start", "message": message})

    def _open(self, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._block = block["type"]
        out += event(
            "content_block_start", {"type": "content_block_start", "index": self._index, "content_block": block}
        )
        if self._index == 0:
            out += event("ping", {"type": "ping"})
        return out

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        self._block = None
        return event("content_block_stop", {"type": "content_block_stop", "index": self._index})

    def _delta(self, index: int, delta: dict[str, Any]) -> bytes:
        return event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        usage = chunk.get("usage")
        if usage:
            self.input_tokens = usage.get("prompt_tokens", self.input_tokens)
            self._output = usage.get("completion_tokens")
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self._block != "text":
                    out += self._open({"type": "text", "text": ""})
                out += self._delta(self._index, {"type": "text_delta", "text": text})
            for call in delta.get("tool_calls") or ():
                position = call.get("index", 0)
                function = call.get("function") or {}
                if position not in self._calls:
                    block = {"type": "tool_use", "id": call.get("id"), "name": function.get("name"), "input": {}}
                    out += self._open(block)
                    self._calls[position] = self._index
                if function.get("arguments"):
                    delta_ = {"type": "input_json_delta", "partial_json": function["arguments"]}
                    out += self._delta(self._calls[position], delta_)
            if choice.get("finish_reason"):
                self._stop, self._sequence = stop_of(choice)
        return out

    def end(self, streamed_tokens: int) -> bytes:
        out = self._open({"type": "text", "text": ""}) if self._index < 0 else b""
        out += self._close()
        delta = {"stop_reason": self._stop, "stop_sequence": self._sequence}
        # the backend's counts, once it reported them (message_start could only carry an estimate)
        usage = {"output_tokens": streamed_tokens} if self._output is None else {
            "input_tokens": self.input_tokens, "output_tokens": self._output
        }  # fmt: skip
        out += event("message_delta", {"type": "message_delta", "delta": delta, "usage": usage})
        return out + event("message_stop", {"type": "message_stop"})

    def error(self, error: GatewayError) -> bytes:
        return error_event(error)


def error_event(error: GatewayError) -> bytes:
    """The ``error`` event that ends a stream which failed after it started."""
    return event("error", error_body(error))


# Errors -----------------------------------------------------------------------------------------


def error_body(error: GatewayError) -> dict[str, Any]:
    """Anthropic's error object for a gateway error."""
    kind = ERROR_TYPES.get(error.status, "api_error" if error.status >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": error.message}}


class AnthropicError(DialectError):
    """A gateway error rendered in Anthropic's shape, with the same status."""

    def to_dict(self) -> dict[str, Any]:
        return error_body(self)
