"""The canonical request key: one hash of everything in a request that changes its answer.

The response cache and the record/replay backend both name a stored answer by it. It covers the
endpoint, the resolved model and every body field (messages, prompt, input, temperature, tools,
tool_choice, response_format, seed, max tokens, n, stop, and fields OpenAI adds later), except
those that change only the answer's framing or bookkeeping: ``stream``, ``stream_options`` and
``user``. Headers are never part of it. A ``scope`` (the caller, for a cache scoped by API key)
keeps one caller's answers from another's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import orjson

#: Body fields that do not change the answer's content.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user"})


def canonical_request(endpoint: str, body: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
    """The request as the key sees it: ``endpoint``, ``model`` (default ``body["model"]``) and the
    body without ``IGNORED_FIELDS`` and without null fields (null is the default, as absent)."""
    fields = {k: v for k, v in body.items() if v is not None and k not in IGNORED_FIELDS and k != "model"}
    return {"endpoint": endpoint, "model": model if model is not None else body.get("model"), "body": fields}


def request_key(endpoint: str, body: Mapping[str, Any], model: str | None = None, scope: str = "") -> str:
    """A 32-hex-digit key (128 bits of SHA-256) of ``canonical_request`` and ``scope``: equal for two
    requests that differ only in key order, ignored fields or headers."""
    canonical = canonical_request(endpoint, body, model)
    if scope:
        canonical["scope"] = scope
    raw = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]
