"""The ``openai_compat`` backend's stream: an upstream's SSE bytes cut into blocks of whole events as
they arrive (``Events``), the usage and error events read where a block holds one (``inspect_block``),
and the model field renamed to the client's name (``Renamer``); everything else passes as bytes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from gateway.context import RequestContext
from gateway.errors import UpstreamError
from gateway.formats import completions as completions_format
from gateway.upstream.errors import error_details, scrub
from gateway.upstream.sse_blocks import EventBlocks

if TYPE_CHECKING:
    from gateway_plugins.backends.openai_compat import OpenAICompatBackend

_USAGE = re.compile(rb'"usage"\s*:\s*\{')
_MODEL = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
#: The ``[DONE]`` event: a line of its own (a JSON payload holds no raw newline, so text such as
#: ``"data: [DONE]"`` inside a chunk's content never matches), with or without the space.
_DONE = re.compile(rb"^data: ?\[DONE\][ \t]*$", re.MULTILINE)
_EVENT_END = b"\n\n"
#: A choice's finish as upstreams write it (a reply's text holds ``\"`` escaped, so never matches).
_FINISHES = (b'"finish_reason":"', b'"finish_reason": "')
#: ``"usage": null`` as upstreams write it on each chunk of a stream that asked for usage.
_NULL_USAGE = (b',"usage":null', b', "usage": null')


def inspect_block(
    name: str, ctx: RequestContext, block: bytes, drop_usage: bool, secrets: tuple[str | None, ...]
) -> tuple[bytes, UpstreamError | None]:
    """Read a block holding a usage or error event: record the usage, drop the usage event when
    the client did not ask for it; the events before an error event, and the error. The events
    before the first that may hold either are kept as they are, unread."""
    usage = _USAGE.search(block)
    notable = min(i for i in (block.find(b'"error"'), usage.start() if usage else -1) if i >= 0)
    cut = block.rfind(_EVENT_END, 0, notable)  # the end of the event before it, if any
    start = cut + 2 if cut >= 0 else 0
    kept = [block[:start]]
    for event in block[start:].split(_EVENT_END):
        if not event:
            continue
        payload = _data(event)
        if b'"error"' in payload and _reports_error(payload):
            message = scrub(error_details(payload).get("message") or "unknown error", secrets)
            return b"".join(kept), UpstreamError(f"Backend {name!r} failed during the stream: {message}")
        if _USAGE.search(payload):
            chunk = orjson.loads(payload)
            ctx.usage = chunk.get("usage") or ctx.usage
            if drop_usage and not chunk.get("choices"):
                continue
        kept.append(event + _EVENT_END)
    return b"".join(kept), None


class Events:
    """Cuts an upstream's SSE bytes into blocks of whole events, one ``feed`` per network read
    (``gateway.upstream.sse_blocks``: only the new bytes scanned, each event checked by its first and
    last bytes, one event's size capped): ``[DONE]`` removed (the gateway sends its own), the usage
    event read (and dropped when only the gateway asked for it), an error event, a malformed or an
    oversized one turned into ``failure``, the choices' finishes counted (until each of ``choices`` has
    finished). A block that needs no rewrite goes out as it came in."""

    __slots__ = (
        "backend",
        "blocks",
        "choices",
        "ctx",
        "drop_usage",
        "failure",
        "finishes",
        "null",
        "renamer",
        "secrets",
    )

    def __init__(
        self,
        backend: OpenAICompatBackend,
        ctx: RequestContext,
        drop_usage: bool,
        renamer: Callable[[bytes], bytes] | None,
        secrets: tuple[str | None, ...],
        choices: int = 1,
    ) -> None:
        self.backend, self.ctx, self.drop_usage, self.renamer, self.secrets = backend, ctx, drop_usage, renamer, secrets
        self.blocks = EventBlocks(backend.config.max_event_size)
        self.choices, self.finishes = choices, 0
        self.failure: UpstreamError | None = None
        self.null: bytes | None = None  # the upstream's spelling of ``"usage": null``, once seen

    @property
    def done(self) -> bool:
        return self.blocks.done

    def feed(self, data: bytes) -> bytes:
        """The whole events ``data`` completes, ready for the client (may be empty)."""
        blocks = self.blocks
        block = blocks.feed(data)
        if blocks.problem is not None:
            self.failure = UpstreamError(f"Backend {self.backend.name!r} {blocks.problem}.")
        if not block:
            return block
        if not blocks.done and self.finishes < self.choices:  # a stream ends on [DONE], or on these
            self.finishes += block.count(_FINISHES[0]) + block.count(_FINISHES[1])
        if self.null is not None:  # ``"usage": null`` on each chunk: only the gateway asked for usage
            block = _without(block, self.null)
        elif self.drop_usage:
            block = self._drop_nulls(block)
        if b'"error"' in block:
            block, failure = inspect_block(self.backend.name, self.ctx, block, self.drop_usage, self.secrets)
            self.failure = failure or self.failure
        elif (at := block.rfind(b'"usage"')) >= 0 and _USAGE.match(block, at) is not None:
            block = self._read_usage(block, at)
        if self.renamer is not None:
            block = self.renamer(block)
        return block

    def _drop_nulls(self, block: bytes) -> bytes:
        """``block`` without its ``"usage": null`` fields, in the spelling the upstream uses (the first
        block that holds one tells which)."""
        null = self.null = next((n for n in _NULL_USAGE if n in block), None)
        return block if null is None else _without(block, null)

    def _read_usage(self, block: bytes, at: int) -> bytes:
        """Record the usage of the block's last ``"usage"`` field, at ``at``, which holds more than
        null (the usage event comes last: nothing before it is read); the event is dropped when only
        the gateway asked for usage and it answers no choice."""
        cut = block.rfind(_EVENT_END, 0, at)
        start, end = cut + 2 if cut >= 0 else 0, block.find(_EVENT_END, at) + 2
        chunk = orjson.loads(_data(block[start:end]))
        self.ctx.usage = chunk.get("usage") or self.ctx.usage
        if self.drop_usage and not chunk.get("choices"):
            return block[:start] + block[end:]
        return block

    def ended(self) -> bool:
        """At the end of the upstream's body: whether the stream was complete: ``[DONE]`` (without
        the blank line after it too), or a clean end after every choice's finish (older llama.cpp
        servers send no ``[DONE]``; the gateway sends its own)."""
        pending = self.blocks.pending()
        if self.done or _DONE.match(pending) is not None:
            return True
        return self.finishes >= self.choices and not pending.strip()


def choices_of(body: Mapping[str, Any], operation: str) -> int:
    """The choices a stream answers: ``n``, for each prompt of a legacy completion."""
    n = body.get("n") or 1
    if operation == "completions":
        return n * max(1, len(completions_format.split_inputs(body.get("prompt"))))
    return n


def _reports_error(payload: bytes) -> bool:
    """Whether an event holding ``"error"`` reports one: OpenAI's ``{"error": {...}}``, or a chunk with
    a top-level error (OpenRouter's mid-stream failures, whose choice finishes with "error")."""
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True  # not JSON either way: nothing a client can read
    return not isinstance(event, dict) or bool(event.get("error"))


def _without(block: bytes, part: bytes) -> bytes:
    """``block.replace(part, b"")`` in one pass over it rather than two (count, then copy)."""
    return b"".join(block.split(part))


def _data(event: bytes) -> bytes:
    """The joined ``data:`` lines of one SSE event."""
    return b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))


class Renamer:
    """Rewrites every ``"model": "..."`` field of a block of events to the client's model name. The
    first block is rewritten by pattern and teaches the upstream's own spelling of the field; a later
    block whose every ``"model"`` is that exact field is rewritten by a plain byte replace (anything
    else, such as another model name or spacing, goes by pattern again)."""

    __slots__ = ("field", "pattern_replacement", "replacement")

    def __init__(self, model: str) -> None:
        self.replacement = b'"model":' + orjson.dumps(model)
        self.pattern_replacement = self.replacement.replace(b"\\", b"\\\\")  # re.sub reads escapes
        self.field: bytes | None = None

    def __call__(self, block: bytes) -> bytes:
        field = self.field
        if field is not None:
            fields = block.count(field)
            if fields == block.count(b'"model"'):  # in valid JSON a string's quotes are escaped: keys only
                return block.replace(field, self.replacement) if fields else block
        found = _MODEL.search(block)
        if found is not None:
            self.field = found.group()
        return _MODEL.sub(self.pattern_replacement, block)
