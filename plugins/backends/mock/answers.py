"""Composing the mock's answers: the text it echoes, stops, chunking, the tool it calls and its
argument fragments, JSON answers for ``response_format``, and the deterministic vectors of its embeddings.

The rules (README "The mock backend"):

- Tools (``tools`` given, ``tool_choice`` not "none"): the mock calls a tool when the last user message
  names it (the tool's name as a whole word, any case): the first named tool, in the order the message
  names them, that has not been called since that message. ``required`` calls the first tool not yet
  called since the last user message when none is named (the last tool once all were); a named
  ``tool_choice`` calls that tool. Otherwise (no tool named, or every named tool answered) it replies
  in text: the contents of the tool results since the last user message, else the echo.
- ``response_format``: ``json_object`` -> ``{"text": <the reply>}``; ``json_schema`` -> a value built
  from the schema (``gateway.formats.json_schema.example_value``: every property, first enum value,
  first ``anyOf`` option, local ``$ref``s), the same for the same schema.
- A ``stop`` string that cut the reply is reported as the choice's ``stop_reason`` (vLLM's field),
  which ``/v1/messages`` turns into ``stop_reason: stop_sequence``.
"""

from __future__ import annotations

import hashlib
import json
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
from gateway.formats.json_schema import SchemaTooComplexError, example_value

ARGUMENT_FRAGMENT_CHARS = 8
_WORD = re.compile(r"\s*\S+\s*")


@dataclass(slots=True)
class _Answer:
    """What every choice says: content pieces, or argument fragments of a call to ``tool``."""

    pieces: list[str]
    finish_reason: str
    tool: str | None = None
    stop_sequence: str | None = None  # the stop string that cut the text


def _model(ctx: RequestContext) -> str:
    return ctx.model or ctx.deployment.model


def _last_user(messages: Any) -> int:
    """The index of the last user message (-1: none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i].get("role") == "user":
            return i
    return -1


def _reply_text(messages: Any) -> str:
    """The tool results since the last user message (one a line), else the last user message."""
    i = _last_user(messages)
    results = [content_text(m.get("content")) for m in messages[i + 1 :] if m.get("role") == "tool"]
    if results:
        return "\n".join(results)
    return content_text(messages[i].get("content")) if i >= 0 else ""


def _cut_at_stop(text: str, stop: str | list[str] | None) -> tuple[str, str, str | None]:
    """The text before the first occurrence of any stop string, the finish reason ("stop" anyway)
    and the stop string found (None: none)."""
    if not stop:
        return text, "stop", None
    found = [(p, s) for s in ([stop] if isinstance(stop, str) else stop) if s and (p := text.find(s)) >= 0]
    if not found:
        return text, "stop", None
    position, sequence = min(found, key=lambda f: f[0])
    return text[:position], "stop", sequence


def _formatted(text: str, response_format: Any) -> str:
    """The reply as ``response_format`` asks (see the module docstring); ``text`` unless JSON is asked for."""
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "json_object":
        return json.dumps({"text": text}, ensure_ascii=False)
    if kind != "json_schema":
        return text
    spec = response_format.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, Mapping) else None
    try:
        value = example_value(schema if isinstance(schema, Mapping) else {"type": "object"})
    except SchemaTooComplexError as exc:
        raise InvalidRequestError(
            f"The mock backend cannot build an answer for this schema: {exc}.", param="response_format"
        ) from None
    return json.dumps(value, ensure_ascii=False)


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
        yield _stopped(chunk_choice(index, {}, answer.finish_reason), answer), False


def _stopped(choice: dict[str, Any], answer: _Answer) -> dict[str, Any]:
    """``choice`` with the stop string that cut the answer as ``stop_reason`` (vLLM's field), if one did."""
    if answer.stop_sequence is not None:
        choice["stop_reason"] = answer.stop_sequence
    return choice


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


def _tool_to_call(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The function the mock calls (see the module docstring), or None for a text reply."""
    choice = body.get("tool_choice")
    functions = [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        for function in functions:
            if function.get("name") == name:
                return function
        raise InvalidRequestError(f"Invalid 'tool_choice': no function named {name!r} in 'tools'.", param="tool_choice")
    if choice == "required" and not functions:
        raise InvalidRequestError("tool_choice 'required' needs at least one function in 'tools'.", param="tool_choice")
    if choice not in (None, "auto", "required") or not functions:
        return None
    messages = body.get("messages") or ()
    last = _last_user(messages)
    called = {
        (call.get("function") or {}).get("name")
        for message in messages[last + 1 :]
        if message.get("role") == "assistant"
        for call in message.get("tool_calls") or ()
    }
    text = content_text(messages[last].get("content")) if last >= 0 else ""
    named = sorted(
        (match.start(), i)
        for i, function in enumerate(functions)
        if function.get("name") not in called
        and (match := re.search(rf"(?<![\w-]){re.escape(str(function.get('name')))}(?![\w-])", text, re.IGNORECASE))
    )
    if named:
        return functions[named[0][1]]
    if choice == "required":
        return next((f for f in functions if f.get("name") not in called), functions[-1])
    return None
