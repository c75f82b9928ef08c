"""Builders for OpenAI embeddings responses (``POST /v1/embeddings``): a ``list`` of ``embedding``
objects and a usage with ``prompt_tokens`` and ``total_tokens`` only.

``encoding_format: base64`` sends each vector as the base64 of its little-endian float32 values, as
OpenAI does (the official SDKs ask for base64 by default and decode it).
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.formats.completions import estimate_input_tokens, split_inputs


def embedding(index: int, vector: Sequence[float] | str) -> dict[str, Any]:
    """One ``embedding`` object: a list of floats, or a base64 string (``encode_base64``)."""
    return {"object": "embedding", "index": index, "embedding": vector}


def embedding_list(data: list[dict[str, Any]], model: str, usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """The response of ``POST /v1/embeddings``; ``data`` are built with ``embedding``."""
    return {"object": "list", "data": data, "model": model, "usage": usage}


def embedding_usage(prompt_tokens: int) -> dict[str, int]:
    """An embeddings usage: input tokens only."""
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}


def float32(vector: Iterable[float]) -> array[float]:
    """``vector`` as float32 values (what a base64 embedding holds)."""
    return array("f", vector)


def encode_base64(vector: Iterable[float]) -> str:
    """The base64 of ``vector``'s little-endian float32 values."""
    values = float32(vector)
    if sys.byteorder == "big":
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def estimated_usage(body: Mapping[str, Any] | None, response: Mapping[str, Any] | None = None) -> dict[str, int]:
    """The usage of an embeddings request, estimated from its ``input`` (see ``completions_format``)."""
    return embedding_usage(sum(estimate_input_tokens(item) for item in split_inputs((body or {}).get("input"))))
