"""Translating Anthropic's stream events into chat completion chunks."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.formats.chat import (
    chunk,
    chunk_choice,
    completion_id,
    usage,
    usage_chunk,
)
from gateway_plugins.backends.anthropic.messages import finish_reason, usage_of, with_stop_sequence


class StreamTranslator:
    """Turns the events of a Messages API stream into ``chat.completion.chunk`` dicts, one event at a
    time: the role first, text deltas as content, each ``tool_use`` block as one tool call (its index
    counts tool calls, not content blocks; id and name in its first delta, then argument fragments),
    the finish reason on ``message_delta``, the usage chunk (if asked for) on ``message_stop``.
    ``ping``, ``content_block_stop`` and blocks other than text and tool use (thinking) give nothing;
    ``error`` events are the caller's to raise. A stream that reports no usage gets an estimate
    (``prompt_tokens``, given, and the characters of text and arguments streamed, see
    ``gateway.formats.chat``) in its usage chunk, and ``estimated`` is set."""

    __slots__ = (
        "_calls",
        "_extra",
        "chars",
        "complete",
        "created",
        "estimated",
        "finished",
        "id",
        "include_usage",
        "model",
        "prompt_tokens",
        "raw_usage",
        "started",
    )

    def __init__(self, model: str, include_usage: bool, prompt_tokens: int = 0) -> None:
        self.id, self.created, self.model = completion_id(), int(time.time()), model
        self.prompt_tokens, self.chars, self.estimated = prompt_tokens, 0, False
        self.include_usage = include_usage
        self._extra: dict[str, Any] = {"usage": None} if include_usage else {}
        self._calls: dict[int, int] = {}  # content block index -> tool call index
        self.raw_usage: dict[str, int] = {}  # Anthropic's usage, cumulative
        self.started = False  # the role is out
        self.finished = False  # the finish reason is out
        self.complete = False  # message_stop arrived

    @property
    def usage(self) -> dict[str, Any] | None:
        return usage_of(self.raw_usage) if self.raw_usage else None

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one event (often none)."""
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                if not delta.get("text"):
                    return []
                self.chars += len(delta["text"])
                return [self._chunk({"content": delta["text"]})]
            if delta.get("type") == "input_json_delta":
                call = self._calls.get(event.get("index", -1))
                fragment = delta.get("partial_json")
                if call is None or not fragment:
                    return []
                self.chars += len(fragment)
                return [self._chunk({"tool_calls": [{"index": call, "function": {"arguments": fragment}}]})]
            return []
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "message_start":
            self._add_usage((event.get("message") or {}).get("usage"))
            return [] if self.started else [self._chunk({"content": ""})]
        if kind == "message_delta":
            self._add_usage(event.get("usage"))
            self.finished = True
            delta = event.get("delta") or {}
            out = self._chunk({}, finish_reason(delta.get("stop_reason")))
            with_stop_sequence(out["choices"][0], delta)
            return [out]
        if kind == "message_stop":
            self.complete = True
            out = [] if self.finished else [self._chunk({}, "stop")]
            if self.include_usage:
                out.append(usage_chunk(self.id, self.created, self.model, self.usage or self.estimate()))
            return out
        return []

    def estimate(self) -> dict[str, int]:
        """The usage of a stream that reports none, estimated; sets ``estimated``."""
        self.estimated = True
        return usage(self.prompt_tokens, (self.chars + 3) // 4)

    def end(self) -> list[dict[str, Any]] | None:
        """At a clean end of the stream without ``message_stop``: the chunks that close it when the
        finish reason is out (the reply is complete), else None (the stream was cut short)."""
        if not self.finished:
            return None
        return self.feed({"type": "message_stop"})

    def _block_start(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        block = event.get("content_block") or {}
        if block.get("type") == "text":
            return [self._chunk({"content": block["text"]})] if block.get("text") else []
        if block.get("type") != "tool_use":
            return []
        call = len(self._calls)
        self._calls[event.get("index", -1)] = call
        arguments = orjson.dumps(block["input"]).decode() if block.get("input") else ""
        function = {"name": block.get("name"), "arguments": arguments}
        return [
            self._chunk(
                {"tool_calls": [{"index": call, "id": block.get("id"), "type": "function", "function": function}]}
            )
        ]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        if not self.started:
            self.started = True
            delta = {"role": "assistant", **delta, "refusal": None}
        return chunk(self.id, self.created, self.model, [chunk_choice(0, delta, finish)], **self._extra)

    def _add_usage(self, raw: Any) -> None:
        if isinstance(raw, Mapping):
            for key, value in raw.items():
                if type(value) is int:
                    self.raw_usage[key] = value
