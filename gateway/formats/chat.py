"""Builders for OpenAI chat completion objects, shared by every backend.

Plain dicts, no validation: these run on the hot path, once per streamed chunk. The shapes follow
OpenAI's OpenAPI spec (``CreateChatCompletionResponse``, ``CreateChatCompletionStreamResponse``,
``ChatCompletionResponseMessage``, ``ChatCompletionStreamResponseDelta``, ``CompletionUsage``).

Token estimates (``estimate_tokens``, ``estimate_prompt_tokens``) need no tokenizer: a text counts
``ceil(len(text) / 4)`` tokens (OpenAI's rule of thumb of about four characters per token for
English), at least 1 when it is not empty. A prompt adds 3 tokens per message and 1 per ``name``, plus
3 for priming the reply, as OpenAI's cookbook counts for its chat models. Text parts, tool-call names
and arguments count as text; an image part counts 85 tokens (the cost of a low-detail image); other
parts count nothing. Good enough for accounting and limits when an upstream reports no usage.

Usage accounting: when a backend finishes a response and ``ctx.usage`` is still None (the upstream
reported no usage), the pipeline estimates it and sets ``ctx.usage_estimated`` (the access line shows
``usage_estimated: true``; metrics and token limits count the estimate). Prompt tokens come from the
request (``estimated_usage`` of the endpoint's format); completion tokens from the response, or for a
stream from what passed while it streamed: chunk dicts by the text they carry (``streamed_chars``: delta
content, tool-call names and arguments, a text completion's ``text``; ``ceil(chars / 4)`` over the
whole reply), pass-through SSE bytes, which are never parsed, by their ``data:`` events (one
``bytes.count`` per block), each event counting one token: OpenAI-compatible servers stream about a
token per event (the role and finish events make it a few tokens high). A backend whose
``reports_usage`` is set is not counted.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

#: Tokens added for each message of a prompt, and for priming the assistant's reply.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3
IMAGE_PART_TOKENS = 85

_MISSING: Any = object()


def _random_suffix() -> str:
    """32 random url-safe characters (24 random bytes)."""
    return base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")


def completion_id() -> str:
    """A new ``chatcmpl-...`` id."""
    return "chatcmpl-" + _random_suffix()


def tool_call_id() -> str:
    """A new ``call_...`` id for a tool call."""
    return "call_" + _random_suffix()


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """A ``CompletionUsage`` object."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    """A complete function tool call, as in a non-streamed message's ``tool_calls``."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def message_choice(
    index: int,
    content: str | None,
    finish_reason: str | None,
    tool_calls: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One choice of a ``chat.completion``; ``tool_calls`` appears only when given."""
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def chat_completion(
    id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: Mapping[str, Any] | None,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    """A ``chat.completion`` object; ``choices`` are built with ``message_choice``. ``usage`` and
    ``system_fingerprint`` are left out when None (OpenAI's spec types both as optional, not nullable)."""
    out: dict[str, Any] = {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    if system_fingerprint is not None:
        out["system_fingerprint"] = system_fingerprint
    return out


def chunk_choice(index: int, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a ``chat.completion.chunk``."""
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def stream_object(
    object_type: str,
    id: str,
    created: int,
    model: str,
    choices: list[dict[str, Any]],
    usage: Mapping[str, Any] | None = _MISSING,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    """A chunk of any endpoint's stream (``chat.completion.chunk``, ``text_completion``), with ``usage``
    only when given (see ``chunk``) and ``system_fingerprint`` only when there is one (the spec types it
    as an optional string, not nullable)."""
    out: dict[str, Any] = {"id": id, "object": object_type, "created": created, "model": model}
    if system_fingerprint is not None:
        out["system_fingerprint"] = system_fingerprint
    out["choices"] = choices
    if usage is not _MISSING:
        out["usage"] = usage
    return out


#: A ``chat.completion.chunk`` object: ``chunk(id, created, model, choices, usage=..., system_fingerprint=None)``
#: with ``choices`` built by ``chunk_choice``. ``usage`` is left out unless given: when the request
#: asked for ``stream_options.include_usage``, pass ``None`` on every chunk and the usage on one last
#: chunk with ``choices=[]`` (``usage_chunk``), as OpenAI does.
chunk = functools.partial(stream_object, "chat.completion.chunk")


def usage_chunk(
    id: str, created: int, model: str, usage: Mapping[str, Any], system_fingerprint: str | None = None
) -> dict[str, Any]:
    """The last chunk of a stream with ``include_usage``: no choices, the usage of the whole reply."""
    return chunk(id, created, model, [], usage, system_fingerprint)


#: Finish reasons as upstreams name them -> OpenAI's (``stop``, ``length``, ``tool_calls``, ``content_filter``).
FINISH_REASONS = {
    "stop": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "max_tokens": "length",
    "tool_calls": "tool_calls",
    "tool_use": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def finish_reason(reason: Any) -> str:
    """OpenAI's finish reason for an upstream's (see ``FINISH_REASONS``; unknown or empty: ``stop``)."""
    return FINISH_REASONS.get(reason.lower(), "stop") if isinstance(reason, str) else "stop"


def include_usage(body: Mapping[str, Any]) -> bool:
    """Whether a streaming request asked for ``stream_options.include_usage``."""
    options = body.get("stream_options")
    return bool(options and options.get("include_usage"))


def estimate_tokens(text: str | None) -> int:
    """Tokens in ``text``: ``ceil(len / 4)``, at least 1 for a non-empty text, 0 for none."""
    return (len(text) + 3) // 4 if text else 0


def content_text(content: Any) -> str:
    """The text of a message ``content``: a string, None, or a list of parts (text parts joined by \\n)."""
    if isinstance(content, str):
        return content
    if not content:
        return ""
    return "\n".join(p["text"] for p in content if isinstance(p, dict) and p.get("type") == "text")


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return estimate_tokens(content)
    if not content:
        return 0
    total = 0
    for part in content:
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            total += estimate_tokens(part.get("text"))
        elif kind in ("image_url", "input_image"):
            total += IMAGE_PART_TOKENS
    return total


def estimate_prompt_tokens(messages: Iterable[Mapping[str, Any]] | None) -> int:
    """Tokens in a prompt's ``messages`` (see the module docstring for the method)."""
    total = REPLY_PRIMING_TOKENS
    for message in messages or ():
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        if message.get("name"):
            total += TOKENS_PER_NAME + estimate_tokens(message["name"])
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            total += estimate_tokens(function.get("name")) + estimate_tokens(function.get("arguments"))
    return total


def estimated_usage(body: Mapping[str, Any] | None, completion: Mapping[str, Any]) -> dict[str, int]:
    """The usage of a ``chat.completion`` that reports none, estimated (see the module docstring)."""
    prompt = estimate_prompt_tokens((body or {}).get("messages"))
    completion_tokens = 0
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        completion_tokens += estimate_tokens(message.get("content"))
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            completion_tokens += estimate_tokens(function.get("name")) + estimate_tokens(function.get("arguments"))
    return usage(prompt, completion_tokens)


def streamed_chars(chunk: Mapping[str, Any]) -> int:
    """Characters of reply text in a streamed chunk (chat or text completion): delta content, tool-call
    names and arguments, or a choice's ``text``; for an estimate of a stream's usage."""
    total = 0
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta")
        if delta is None:  # a text_completion chunk
            text = choice.get("text")
            if text:
                total += len(text)
            continue
        text = delta.get("content")
        if text:
            total += len(text)
        for call in delta.get("tool_calls") or ():
            function = call.get("function")
            if function:
                total += len(function.get("name") or "") + len(function.get("arguments") or "")
    return total


def completion_to_chunks(
    completion: Mapping[str, Any], include_usage: bool = False, word_by_word: bool = False
) -> list[dict[str, Any]]:
    """The chunks that stream a complete ``chat.completion``: per choice a role delta with its content
    (or, ``word_by_word``, with the first word and then a chunk per word, for simulated streaming),
    its tool calls with their index, and a finish chunk; then the usage chunk if asked for."""
    id, created, model = completion["id"], completion["created"], completion["model"]
    fingerprint = completion.get("system_fingerprint")
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    if fingerprint is not None:
        extra["system_fingerprint"] = fingerprint
    chunks = []
    for choice in completion["choices"]:
        message, index = choice["message"], choice["index"]
        content = message.get("content")
        pieces = words(content) if word_by_word and content else [content]
        delta: dict[str, Any] = {"role": "assistant", "content": pieces[0], "refusal": None}
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(message["tool_calls"])]
        chunks.append(chunk(id, created, model, [chunk_choice(index, delta)], **extra))
        chunks += [chunk(id, created, model, [chunk_choice(index, {"content": p})], **extra) for p in pieces[1:]]
        chunks.append(chunk(id, created, model, [chunk_choice(index, {}, choice["finish_reason"])], **extra))
    if include_usage and completion.get("usage"):
        chunks.append(usage_chunk(id, created, model, completion["usage"], fingerprint))
    return chunks


_WORD = re.compile(r"\s*\S+\s*|\s+")


def words(text: str) -> list[str]:
    """``text`` cut into word pieces that keep their whitespace (joined, they are ``text`` again)."""
    return _WORD.findall(text) or [text]


def chunks_to_completion(chunks: Iterable[Mapping[str, Any]], usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``chat.completion`` a complete stream of chunks makes (the inverse of
    ``completion_to_chunks``): each choice's role, content, refusal and tool calls (arguments joined
    by call index) and finish reason; ``usage`` or the usage chunk's."""
    frame: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for item in chunks:
        if not frame:
            frame = {"id": item.get("id"), "created": item.get("created"), "model": item.get("model")}
            if item.get("system_fingerprint") is not None:
                frame["system_fingerprint"] = item["system_fingerprint"]
        if usage is None and item.get("usage"):
            usage = item["usage"]
        for choice in item.get("choices") or ():
            kept = choices.setdefault(choice.get("index", 0), {"content": [], "calls": {}, "finish_reason": None})
            delta = choice.get("delta") or {}
            if delta.get("role"):
                kept["role"] = delta["role"]
            if delta.get("content"):
                kept["content"].append(delta["content"])
            if delta.get("refusal"):
                kept["refusal"] = kept.get("refusal", "") + delta["refusal"]
            for call in delta.get("tool_calls") or ():
                got = kept["calls"].setdefault(call.get("index", 0), {"type": "function", "name": "", "arguments": ""})
                got["id"] = call.get("id") or got.get("id")
                function = call.get("function") or {}
                got["name"] += function.get("name") or ""
                got["arguments"] += function.get("arguments") or ""
            if choice.get("finish_reason") is not None:
                kept["finish_reason"] = choice["finish_reason"]
    out = []
    for index, kept in sorted(choices.items()):
        message: dict[str, Any] = {"role": kept.get("role", "assistant"), "content": "".join(kept["content"]) or None}
        message["refusal"] = kept.get("refusal")
        if kept["calls"]:
            message["tool_calls"] = [
                tool_call(c.get("id") or tool_call_id(), c["name"], c["arguments"])
                for _, c in sorted(kept["calls"].items())
            ]
        out.append({"index": index, "message": message, "logprobs": None, "finish_reason": kept["finish_reason"]})
    completion = {"object": "chat.completion", **frame, "choices": out}
    if usage:
        completion["usage"] = dict(usage)
    return completion
