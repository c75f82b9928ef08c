"""An example gateway plugin: masks banned words in what users send, and signs every reply.

Load it from YAML (``plugins: {enabled: [example_plugin]}``, with this folder on ``PYTHONPATH``); see
``example_plugin.yaml`` beside it. It shows the four hooks most plugins need: its own config section,
a request rewrite, a stream filter and a non-stream response edit.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from gateway import ChunkFilter, RequestContext, hookimpl

SECTION = "example_plugin"


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    banned_words: list[str] = []
    signature: str = ""


@hookimpl
def gateway_register_config(register: Any) -> None:
    """Declare ``plugins.example_plugin`` in the YAML."""
    register(SECTION, Settings)


def _settings(ctx: RequestContext) -> Settings:
    return ctx.config.plugin_config(SECTION)


@hookimpl
def gateway_process_request(ctx: RequestContext) -> None:
    """Replace banned words in user messages with asterisks before any backend sees them."""
    words = _settings(ctx).banned_words
    if ctx.endpoint != "chat.completions" or not words:
        return
    pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
    for message in ctx.body["messages"]:
        if message["role"] == "user" and isinstance(message.get("content"), str):
            message["content"] = pattern.sub(lambda m: "*" * len(m.group()), message["content"])


@hookimpl
def gateway_stream_filter(ctx: RequestContext) -> ChunkFilter | None:
    """Streams: send the signature as one more content chunk just before each choice finishes."""
    signature = _settings(ctx).signature
    if ctx.endpoint != "chat.completions" or not signature:  # chat chunks only (not text_completion)
        return None

    def sign(chunk: dict[str, Any] | None) -> Any:
        if chunk is None:  # end of stream: nothing held back
            return None
        for choice in chunk["choices"]:
            if choice["finish_reason"] is not None:
                extra = {**chunk, "choices": [{**choice, "delta": {"content": signature}, "finish_reason": None}]}
                return [extra, chunk]
        return chunk

    return sign


@hookimpl
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Non-streamed replies: append the signature to each choice's content."""
    signature = _settings(ctx).signature
    if ctx.endpoint == "chat.completions" and signature:
        for choice in response["choices"]:
            if choice["message"].get("content") is not None:
                choice["message"]["content"] += signature
