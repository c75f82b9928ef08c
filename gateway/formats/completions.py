"""Builders for OpenAI legacy text completion objects (``POST /v1/completions``).

Plain dicts, no validation, as in ``chat_format``. The shapes follow OpenAI's OpenAPI spec
(``CreateCompletionResponse``; a streamed chunk is the same ``text_completion`` object with a piece of
``text`` per choice). With ``n`` > 1 and several prompts, choice ``index`` is ``prompt_index * n + i``.

Token estimates follow ``chat_format``'s rule (``ceil(len(text) / 4)``); a token-array prompt counts
exactly its tokens.
"""

from __future__ import annotations

import base64
import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.formats.chat import estimate_tokens, stream_object, usage


def text_completion_id() -> str:
    """A new ``cmpl-...`` id."""
    return "cmpl-" + base64.urlsafe_b64encode(os.urandom(24)).decode("ascii")


def text_choice(index: int, text: str, finish_reason: str | None = None) -> dict[str, Any]:
    """One choice of a ``text_completion`` (or of a streamed chunk, with a piece of the text)."""
    return {"text": text, "index": index, "logprobs": None, "finish_reason": finish_reason}


#: A ``text_completion`` object: ``text_completion(id, created, model, choices, usage=..., system_fingerprint=None)``
#: with ``choices`` built by ``text_choice``. A streamed chunk is the same object: leave ``usage`` out,
#: or, when the request asked for ``stream_options.include_usage``, pass ``None`` on every chunk and
#: the usage on one last chunk with ``choices=[]`` (``text_usage_chunk``), as OpenAI does.
text_completion = functools.partial(stream_object, "text_completion")


def text_usage_chunk(
    id: str, created: int, model: str, usage: Mapping[str, Any], system_fingerprint: str | None = None
) -> dict[str, Any]:
    """The last chunk of a stream with ``include_usage``: no choices, the usage of the whole reply."""
    return text_completion(id, created, model, [], usage, system_fingerprint)


def split_inputs(value: Any) -> list[str | list[int]]:
    """The inputs of a ``prompt`` (or an embeddings ``input``): a string, an array of strings, an
    array of tokens, or an array of token arrays -> one item per text or token array."""
    if isinstance(value, str):
        return [value]
    if not value:
        return []
    if isinstance(value[0], int):
        return [value]
    return list(value)


def estimate_input_tokens(item: str | list[int]) -> int:
    """Tokens in one input: a token array counts its tokens, a text ``estimate_tokens``."""
    return len(item) if isinstance(item, list) else estimate_tokens(item)


def estimate_prompt_tokens(prompt: Any) -> int:
    """Tokens in a ``prompt`` (every input counted)."""
    return sum(estimate_input_tokens(item) for item in split_inputs(prompt))


def estimated_usage(body: Mapping[str, Any] | None, completion: Mapping[str, Any]) -> dict[str, int]:
    """The usage of a ``text_completion`` that reports none, estimated (see the module docstring)."""
    completion_tokens = sum(estimate_tokens(c.get("text")) for c in completion.get("choices") or ())
    return usage(estimate_prompt_tokens((body or {}).get("prompt")), completion_tokens)


def completion_to_chunks(completion: Mapping[str, Any], include_usage: bool = False) -> list[dict[str, Any]]:
    """The chunks that stream a complete ``text_completion``: one per choice with its text and finish
    reason, then the usage chunk if asked for."""
    id, created, model = completion["id"], completion["created"], completion["model"]
    fingerprint = completion.get("system_fingerprint")
    extra: dict[str, Any] = {"usage": None} if include_usage else {}
    chunks = [
        text_completion(
            id,
            created,
            model,
            [text_choice(c["index"], c.get("text") or "", c.get("finish_reason"))],
            system_fingerprint=fingerprint,
            **extra,
        )
        for c in completion["choices"]
    ]
    if include_usage and completion.get("usage"):
        chunks.append(text_usage_chunk(id, created, model, completion["usage"], fingerprint))
    return chunks


def chunks_to_completion(chunks: Iterable[Mapping[str, Any]], usage: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``text_completion`` a complete stream of chunks makes (the inverse of
    ``completion_to_chunks``): each choice's text joined, its last finish reason; ``usage`` or the
    usage chunk's."""
    frame: dict[str, Any] = {}
    texts: dict[int, list[str]] = {}
    reasons: dict[int, str | None] = {}
    for chunk in chunks:
        frame = frame or dict(chunk)
        usage = usage or chunk.get("usage")
        for c in chunk.get("choices") or ():
            texts.setdefault(c.get("index", 0), []).append(c.get("text") or "")
            reasons[c.get("index", 0)] = c.get("finish_reason") or reasons.get(c.get("index", 0))
    choices = [text_choice(i, "".join(texts[i]), reasons[i]) for i in sorted(texts)]
    return text_completion(
        frame.get("id", text_completion_id()),
        frame.get("created", 0),
        frame.get("model", ""),
        choices,
        dict(usage) if usage else None,
        frame.get("system_fingerprint"),
    )
