"""Regex replacement over text that may arrive in pieces (a streamed reply), and the stream filter
built on it.

``Patterns`` joins a rule's regexes into one alternation, each with its action: a literal
replacement, or ``None`` to block (cut the text at the match). ``scan`` replaces only the matches
that can no longer change: with at most ``max_match`` characters per match, a match that starts
more than ``max_match`` characters before the end of the text is final (the character after the
longest match has arrived too, so a trailing ``\\b``, ``$`` or one-character lookahead sees what
follows); the rest of the text is held back until more arrives (or the text ends). A few characters
already released are kept as context, so lookbehinds and ``\\b`` see what came before the held text.

``ResponseFilter`` is the ``ChunkFilter`` of one stream: per choice index, it pipes each content
delta (chat) or ``text`` (legacy completions) through every rule's patterns, releases held text
before the choice's finish chunk (or at the final flush), and ends a blocked choice with
``finish_reason: content_filter``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

CONTEXT = 16  # characters already released that a scan still sees, for lookbehinds
CONTENT_FILTER = "content_filter"

_GLOBAL_FLAGS = re.compile(r"^\(\?([aiLmsux]+)\)")


def scoped(pattern: str) -> str:
    """``pattern`` with leading global flags (``(?i)x``) made local (``(?i:x)``), so it can be
    joined with others in one alternation."""
    match = _GLOBAL_FLAGS.match(pattern)
    if match is None:
        return pattern
    return f"(?{match.group(1)}:{pattern[match.end() :]})"


class Patterns:
    """Several regexes as one, each with a replacement (``None``: block); see the module docstring."""

    __slots__ = ("actions", "hold", "regex")

    def __init__(self, entries: Sequence[tuple[str, str | None]], max_match: int = 1) -> None:
        parts, self.actions, group = [], {}, 1
        for pattern, action in entries:
            parts.append(f"({scoped(pattern)})")
            self.actions[group] = action
            group += 1 + re.compile(pattern).groups
        self.regex = re.compile("|".join(parts))
        self.hold = max_match  # the longest match, and one character after it

    def sub(self, text: str) -> str:
        """``text`` with every match replaced (a block pattern cuts the text at its match)."""
        return self.scan(text, 0, final=True)[0]

    def scan(self, text: str, start: int, final: bool) -> tuple[str, int, bool]:
        """Scan ``text[start:]`` (``text[:start]`` is context already released). Returns the text
        released with its matches replaced, the index in ``text`` up to which it was consumed (the
        rest is held back), and whether a block pattern matched (the release ends before it)."""
        limit = len(text) if final else len(text) - self.hold
        if limit <= start:
            return "", start, False
        out, pos = [], start
        for match in self.regex.finditer(text, start):
            begin, end = match.span()
            if begin >= limit:
                break
            if begin == end:  # a pattern that matched nothing: never replaced
                continue
            out.append(text[pos:begin])
            action = self.actions[match.lastindex]  # type: ignore[index]
            if action is None:
                return "".join(out), len(text), True
            out.append(action)
            pos = end
        cut = max(pos, limit)
        out.append(text[pos:cut])
        return "".join(out), cut, False


class _Stage:
    """One ``Patterns``' held text for one choice."""

    __slots__ = ("buffer", "patterns", "start")

    def __init__(self, patterns: Patterns) -> None:
        self.patterns, self.buffer, self.start = patterns, "", 0

    def feed(self, text: str, final: bool) -> tuple[str, bool]:
        buffer = self.buffer + text
        released, cut, blocked = self.patterns.scan(buffer, self.start, final)
        keep = max(cut - CONTEXT, 0)
        self.buffer, self.start = buffer[keep:], cut - keep
        return released, blocked

    @property
    def holding(self) -> bool:
        return len(self.buffer) > self.start


class TextChain:
    """The stages of one choice, in rule order: what one releases, the next scans."""

    __slots__ = ("blocked", "stages")

    def __init__(self, chain: Sequence[Patterns]) -> None:
        self.stages = [_Stage(p) for p in chain]
        self.blocked = False

    def feed(self, text: str, final: bool) -> str:
        """The text released (its matches replaced); nothing once a block pattern matched."""
        if self.blocked:
            return ""
        for stage in self.stages:
            text, blocked = stage.feed(text, final)
            if blocked:
                self.blocked = True
                return text
        return text

    @property
    def holding(self) -> bool:
        return any(stage.holding for stage in self.stages)


def text_slot(choice: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """Where a choice's text is: ``delta.content`` (chat chunk), ``message.content`` (chat
    completion) or ``text`` (legacy completion)."""
    for key in ("delta", "message"):
        holder = choice.get(key)
        if isinstance(holder, dict):
            return holder, "content"
    return choice, "text"


class ResponseFilter:
    """The ``ChunkFilter`` of one stream; see the module docstring."""

    __slots__ = ("chain", "choices", "last")

    def __init__(self, chain: Sequence[Patterns]) -> None:
        self.chain = chain
        self.choices: dict[int, TextChain] = {}
        self.last: dict[str, Any] | None = None  # the latest chunk with choices: the frame of a flush

    def __call__(self, chunk: dict[str, Any] | None) -> Any:
        if chunk is None:
            return self._flush()
        choices = chunk.get("choices")
        if not choices:  # the usage chunk
            return chunk
        self.last = chunk
        before: list[dict[str, Any]] = []  # held text released ahead of a finish chunk
        kept: list[dict[str, Any]] = []
        for choice in choices:
            index = choice.get("index", 0)
            state = self.choices.get(index)
            if state is None:
                state = self.choices[index] = TextChain(self.chain)
            if state.blocked:  # it already finished with content_filter
                continue
            holder, field = text_slot(choice)
            text = holder.get(field)
            finish = choice.get("finish_reason")
            if not isinstance(text, str) or not text:
                if finish is not None and state.holding:
                    released = state.feed("", final=True)
                    if state.blocked:
                        choice["finish_reason"] = CONTENT_FILTER
                    if released:
                        before.append(_with_text(choice, released))
                kept.append(choice)
                continue
            released = state.feed(text, final=finish is not None)
            if state.blocked:
                holder[field] = released
                choice["finish_reason"] = CONTENT_FILTER
            elif released or len(holder) > 1 or finish is not None:
                holder[field] = released
            else:  # nothing to release and nothing else in the delta: drop the choice
                continue
            kept.append(choice)
        if before:
            first = {**chunk, "choices": before}
            if not kept:
                return first
            chunk["choices"] = kept
            return [first, chunk]
        if not kept:
            return None
        chunk["choices"] = kept
        return chunk

    def _flush(self) -> list[dict[str, Any]] | None:
        """The end of the stream: release what is still held (a stream that ended without finish chunks)."""
        if self.last is None:
            return None
        frame = self.last
        out = []
        for index, state in self.choices.items():
            if state.blocked or not state.holding:
                continue
            released = state.feed("", final=True)
            template = next((c for c in frame["choices"] if c.get("index", 0) == index), frame["choices"][0])
            choice = _with_text({**template, "index": index}, released)
            if state.blocked:
                choice["finish_reason"] = CONTENT_FILTER
            out.append({**frame, "choices": [choice]})
        return out or None


def _with_text(choice: dict[str, Any], text: str) -> dict[str, Any]:
    """A copy of a streamed choice that carries only ``text``."""
    if "delta" in choice:
        return {"index": choice.get("index", 0), "delta": {"content": text}, "logprobs": None, "finish_reason": None}
    return {"index": choice.get("index", 0), "text": text, "logprobs": None, "finish_reason": None}
