"""Composing the mock's answers: the text it echoes, stops, chunking, tool-call fragments and
the deterministic vectors of its embeddings."""

from __future__ import annotations

import hashlib
import math
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.context import RequestContext
from gateway.errors import (
    InvalidRequestError,
)
from gateway.formats.chat import (
    chunk_choice,
    content_text,
    tool_call_id,
)
from gateway.formats.completions import (
    text_choice,
)
from gateway.formats.embeddings import float32

ARGUMENT_FRAGMENT_CHARS = 8
_WORD = re.compile(r"\s*\S+\s*")


@dataclass(slots=True)
class _Answer:
    """What every choice says: content pieces, or argument fragments of a call to ``tool``."""

    pieces: list[str]
    finish_reason: str
    tool: str | None = None


def _model(ctx: RequestContext) -> str:
    return ctx.model or ctx.deployment.model


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _cut_at_stop(text: str, stop: str | list[str] | None) -> tuple[str, str]:
    """The text before the first occurrence of any stop string; the finish reason is "stop" anyway."""
    if not stop:
        return text, "stop"
    positions = [p for s in ([stop] if isinstance(stop, str) else stop) if s and (p := text.find(s)) >= 0]
    return (text[: min(positions)] if positions else text), "stop"


def _split(text: str, chunks: int | None) -> list[str]:
    """Word pieces (each with its trailing spaces), or exactly ``chunks`` near-equal slices."""
    if chunks is None:
        return _WORD.findall(text) or ([text] if text else [])
    size, longer = divmod(len(text), chunks)
    bounds = [i * size + min(i, longer) for i in range(chunks + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(chunks)]


def _fragments(arguments: str) -> list[str]:
    step = ARGUMENT_FRAGMENT_CHARS
    return [arguments[i : i + step] for i in range(0, len(arguments), step)]


def _events(answer: _Answer, n: int) -> Iterator[tuple[dict[str, Any], bool]]:
    """The chunk choice of every chat chunk, the choices interleaved, and whether it is a token."""
    if answer.tool is None:
        for index in range(n):
            yield chunk_choice(index, {"role": "assistant", "content": "", "refusal": None}), False
        for piece in answer.pieces:
            for index in range(n):
                yield chunk_choice(index, {"content": piece}), True
    else:
        for index in range(n):
            call = {
                "index": 0,
                "id": tool_call_id(),
                "type": "function",
                "function": {"name": answer.tool, "arguments": ""},
            }
            delta = {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}
            yield chunk_choice(index, delta), False
        for piece in answer.pieces:
            for index in range(n):
                yield chunk_choice(index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), True
    for index in range(n):
        yield chunk_choice(index, {}, answer.finish_reason), False


def _text_events(prompts: list[tuple[str, _Answer]], n: int, echo: bool) -> Iterator[tuple[dict[str, Any], bool]]:
    """The choice of every text completion chunk and whether it is a token: the prompts when
    ``echo``, the pieces with the choices interleaved, then each choice's finish."""
    choices = [(p * n + i, prompt, answer) for p, (prompt, answer) in enumerate(prompts) for i in range(n)]
    if echo:
        for index, prompt, _ in choices:
            if prompt:
                yield text_choice(index, prompt), False
    for k in range(max(len(answer.pieces) for _, _, answer in choices)):
        for index, _, answer in choices:
            if k < len(answer.pieces):
                yield text_choice(index, answer.pieces[k]), True
    for index, _, answer in choices:
        yield text_choice(index, "", answer.finish_reason), False


# Embeddings ------------------------------------------------------------------------------------


def hash_vector(item: str | list[int], size: int) -> list[float]:
    """A unit vector of ``size`` float32 values derived from a hash of ``item`` (same input, same vector)."""
    seed = b"t:" + ",".join(map(str, item)).encode() if isinstance(item, list) else b"s:" + item.encode()
    raw = struct.unpack(f"<{size}I", hashlib.shake_256(seed).digest(4 * size))
    values = [x / 2**31 - 1.0 for x in raw]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return float32(v / norm for v in values).tolist()


# Tool calls ------------------------------------------------------------------------------------


def _forced_function(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The function ``tool_choice`` forces ("required": the first tool), or None for a text reply."""
    choice = body.get("tool_choice")
    if choice != "required" and not (isinstance(choice, dict) and choice.get("type") == "function"):
        return None
    functions = [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
    if choice == "required":
        if not functions:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one function in 'tools'.", param="tool_choice"
            )
        return functions[0]
    name = (choice.get("function") or {}).get("name")
    for function in functions:
        if function.get("name") == name:
            return function
    raise InvalidRequestError(f"Invalid 'tool_choice': no function named {name!r} in 'tools'.", param="tool_choice")
