"""Sourcegraph's answers as OpenAI objects, for the ``sourcegraph`` backend: complete answers (one per
choice when ``n`` is emulated) as one ``chat.completion``, the chat API's SSE stream and the legacy
``event: completion | error | done`` stream as ``chat.completion.chunk``s.

Every stream that ends before it is complete raises; the client then gets a final error event.
The answers name the model the client asked for (``ctx.model``), and ``ctx.usage`` is set: the
instance's figures when it reports any, else estimates (``ctx.usage_estimated`` then set).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from gateway.context import RequestContext
from gateway.errors import UpstreamError
from gateway.formats.chat import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    completion_to_chunks,
    content_text,
    estimate_prompt_tokens,
    estimated_usage,
    include_usage,
    message_choice,
    usage,
    usage_chunk,
)
from gateway.upstream.errors import error_details
from gateway_plugins.backends.sourcegraph import protocol as sg

#: Raised for an error the instance reports in a stream: its message -> the exception.
OnError = Callable[[str], Exception]
Events = AsyncIterator[tuple[str, bytes]]  # gateway.streaming.iter_sse's (event, data) pairs


def json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def count(value: Any) -> int:
    """A token count the instance reported (0 when absent; many instances report zeros)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


# Complete answers ------------------------------------------------------------------------------


def completion(ctx: RequestContext, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One ``chat.completion`` from the instance's answers, their choices numbered in order."""
    choices, prompt_tokens, completion_tokens = [], 0, 0
    for answer in answers:
        for choice in answer["choices"]:
            message = choice.get("message") or {}
            content = message.get("content")
            text = content if isinstance(content, str) or content is None else content_text(content)
            reason = sg.finish_reason(choice.get("finish_reason"))
            choices.append(message_choice(len(choices), text, reason, message.get("tool_calls")))
        reported = answer.get("usage") or {}
        prompt_tokens = max(prompt_tokens, count(reported.get("prompt_tokens")))
        completion_tokens += count(reported.get("completion_tokens"))
    created = sg.seconds(answers[0].get("created")) or int(time.time())
    out = chat_completion(completion_id(), created, str(ctx.model), choices, None)
    if completion_tokens:
        out["usage"] = usage(
            prompt_tokens or estimate_prompt_tokens((ctx.body or {}).get("messages")), completion_tokens
        )
    else:
        out["usage"] = estimated_usage(ctx.body, out)
    ctx.usage = out["usage"]
    if not (completion_tokens and prompt_tokens):  # counted by the gateway, in part at least
        ctx.usage_estimated = True
    return out


def reply(ctx: RequestContext, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """What ``chat`` yields for a complete answer: it, or the chunks streaming it word by word."""
    if not ctx.stream:
        return [answer]
    return completion_to_chunks(answer, include_usage(ctx.body or {}), word_by_word=True)


# The chat API's stream -------------------------------------------------------------------------


async def chat_chunks(ctx: RequestContext, events: Events, backend: str, on_error: OnError) -> AsyncIterator[Any]:
    """The chat API's OpenAI-style stream as our chunks: a role in each choice's first delta,
    OpenAI finish reasons, the usage last (when asked for). Complete on ``[DONE]`` or a finish."""
    cid, created, model = completion_id(), int(time.time()), str(ctx.model)
    extra: dict[str, Any] = {"usage": None} if include_usage(ctx.body or {}) else {}
    started: set[int] = set()
    reported: Mapping[str, Any] = {}
    chars, complete = 0, False
    async for _event, data in events:
        if data == b"[DONE]":
            complete = True
            break
        event = json_object(data)
        if event is None or ("error" in event and not event.get("choices")):
            raise on_error(error_details(data).get("message") or "an invalid event")
        reported = event.get("usage") or reported
        choices = []
        for choice in event.get("choices") or ():
            index = choice.get("index") or 0
            delta = dict(choice.get("delta") or {})
            if index not in started:
                started.add(index)
                delta.setdefault("role", "assistant")
            if isinstance(delta.get("content"), str):
                chars += len(delta["content"])
            reason = choice.get("finish_reason")
            complete = complete or bool(reason)
            choices.append(chunk_choice(index, delta, sg.finish_reason(reason) if reason else None))
        if choices:
            yield chunk(cid, created, model, choices, **extra)
    if not complete:
        raise UpstreamError(f"Backend {backend!r} ended the stream before it was complete.")
    prompt_tokens, completion_tokens = count(reported.get("prompt_tokens")), count(reported.get("completion_tokens"))
    ctx.usage_estimated = not (prompt_tokens and completion_tokens)  # counted by the gateway, in part at least
    prompt_tokens = prompt_tokens or estimate_prompt_tokens((ctx.body or {}).get("messages"))
    ctx.usage = usage(prompt_tokens, completion_tokens or (chars + 3) // 4)
    if extra:
        yield usage_chunk(cid, created, model, ctx.usage)


# The legacy stream -----------------------------------------------------------------------------


async def legacy_deltas(events: Events, backend: str, on_error: OnError) -> AsyncIterator[tuple[str, str | None]]:
    """(new text, stop reason) of each ``completion`` event, whose ``completion`` is the whole text so
    far (``deltaText``, the new text, from api-version 2 on); an ``error`` event raises, and so does
    a stream that ends without ``done`` before any stop reason. Other events (``attribution-error``...)
    are skipped."""
    text, stopped = "", False
    async for event, data in events:
        if event == "completion":
            payload = json_object(data) or {}
            if isinstance(payload.get("deltaText"), str):
                delta = payload["deltaText"]
                text += delta
            else:
                whole = str(payload.get("completion") or "")
                delta = whole[len(text) :] if whole.startswith(text) else ""
                text = whole
            reason = payload.get("stopReason") or None
            stopped = stopped or reason is not None
            if delta or reason:
                yield delta, reason
        elif event == "error":
            raise on_error(error_details(data).get("message") or "unknown error")
        elif event == "done":
            return
    if not stopped:  # a clean end after the stop reason is complete
        raise UpstreamError(f"Backend {backend!r} ended the stream before it was complete.")


async def legacy_chunks(ctx: RequestContext, deltas: AsyncIterator[tuple[str, str | None]]) -> AsyncIterator[Any]:
    """A legacy stream's text as our chunks, one per completion event."""
    cid, created, model = completion_id(), int(time.time()), str(ctx.model)
    extra: dict[str, Any] = {"usage": None} if include_usage(ctx.body or {}) else {}
    stop, chars, first = None, 0, True
    async for delta, reason in deltas:
        stop = reason or stop
        if delta or first:
            chars += len(delta)
            yield chunk(cid, created, model, [chunk_choice(0, _delta(delta, first))], **extra)
            first = False
    if first:
        yield chunk(cid, created, model, [chunk_choice(0, _delta("", True))], **extra)
    yield chunk(cid, created, model, [chunk_choice(0, {}, sg.finish_reason(stop))], **extra)
    ctx.usage = usage(estimate_prompt_tokens((ctx.body or {}).get("messages")), (chars + 3) // 4)
    ctx.usage_estimated = True  # the legacy API reports no usage
    if extra:
        yield usage_chunk(cid, created, model, ctx.usage)


def _delta(text: str, first: bool) -> dict[str, Any]:
    return {"role": "assistant", "content": text} if first else {"content": text}


async def legacy_answer(deltas: AsyncGenerator[tuple[str, str | None]]) -> dict[str, Any]:
    """A whole legacy answer, shaped as the chat API's (for ``completion``)."""
    pieces, stop = [], None
    async with contextlib.aclosing(deltas):
        async for delta, reason in deltas:
            pieces.append(delta)
            stop = reason or stop
    return {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(pieces)}, "finish_reason": stop}]
    }
