"""An example gateway plugin, packaged: it rewrites requests, adds a response header and filters
streams (and signs non-streamed replies the same way).

- ``gateway_register_config``: its own YAML section, ``plugins.example_plugin``, validated at start-up.
- ``gateway_process_request``: masks banned words in what users send, before any backend sees it,
  and says how many it masked in the ``X-Masked-Words`` response header.
- ``gateway_stream_filter``: a stateful filter per stream that sends the signature as one more
  content chunk just before each choice finishes.
- ``gateway_process_response``: appends the signature to each choice of a non-streamed reply.

Installed (``pip install .`` here), the ``gateway`` entry point in setup.cfg loads it by itself; not
installed, list it in the YAML (``plugins: {enabled: [gateway_example_plugin]}``) with this folder
on ``PYTHONPATH``. See README.md beside it.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway import ChunkFilter, RequestContext, hookimpl
from gateway.endpoints import CHAT

SECTION = "example_plugin"
HEADER = "X-Masked-Words"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banned_words: list[str] = Field(default_factory=list, description="masked with asterisks in user messages")
    signature: str = Field("", description="appended to every reply; empty: none")


@hookimpl
def gateway_register_config(register: Any) -> None:
    """Declare ``plugins.example_plugin`` in the YAML."""
    register(SECTION, Settings)


def _settings(ctx: RequestContext) -> Settings:
    return ctx.config.plugin_config(SECTION)


@hookimpl
def gateway_process_request(ctx: RequestContext) -> None:
    """Mask banned words in user messages; count them in a response header."""
    words = _settings(ctx).banned_words
    if ctx.endpoint != CHAT.name or not words:
        return
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    masked = 0
    for message in ctx.body["messages"]:
        if message["role"] == "user" and isinstance(message.get("content"), str):
            message["content"], count = pattern.subn(lambda m: "*" * len(m.group()), message["content"])
            masked += count
    ctx.response_headers[HEADER] = str(masked)  # set before the first byte: streams carry it too


class Signer:
    """A ``ChunkFilter`` for one stream: remembers which choices it signed (state lives per stream)."""

    def __init__(self, signature: str) -> None:
        self.signature = signature
        self.signed: set[int] = set()

    def __call__(self, chunk: dict[str, Any] | None) -> Any:
        if chunk is None:  # end of stream: nothing was held back
            return None
        signatures = []  # one chunk may finish several choices, and carry their last text
        for choice in chunk["choices"]:
            if choice["finish_reason"] is not None and choice["index"] not in self.signed:
                self.signed.add(choice["index"])
                text = (choice["delta"].pop("content", None) or "") + self.signature
                signatures.append({**choice, "delta": {"content": text}, "finish_reason": None})
        return [{**chunk, "choices": signatures}, chunk] if signatures else chunk


@hookimpl
def gateway_stream_filter(ctx: RequestContext) -> ChunkFilter | None:
    """A signer for each stream (None when no signature is configured: the stream passes untouched)."""
    signature = _settings(ctx).signature
    return Signer(signature) if signature and ctx.endpoint == CHAT.name else None


@hookimpl
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Non-streamed replies: append the signature to each choice's content."""
    signature = _settings(ctx).signature
    if ctx.endpoint == CHAT.name and signature:
        for choice in response["choices"]:
            if choice["message"].get("content") is not None:
                choice["message"]["content"] += signature
