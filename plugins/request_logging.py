"""The access log: one structured line per request, after its last byte; optionally (``bodies``,
off by default) with the request's raw body and the response's, redacted and truncated."""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable
from typing import Any

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator

from gateway import ChunkFilter, hookimpl
from gateway.config import GatewayConfig
from gateway.context import RequestContext
from gateway.endpoints import CHAT, COMPLETIONS, MESSAGES, RESPONSES
from gateway.errors import GatewayError, InternalError
from gateway.keys import ctx_key
from gateway.log import REDACTED, is_secret_key, json_needs_redaction, masks, redact, write_event
from gateway.streaming import DONE, iter_sse_data

STATE = "request_logging.response"  # ctx.state: the response body (a dict, or a stream's collector)
SECRETS = "request_logging.secrets"  # ctx.generation_state: the config's secrets
STREAMING = (CHAT.name, COMPLETIONS.name, MESSAGES.name, RESPONSES.name)  # access lines that say `stream`


class BodyLoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(False, description="add request_body and response_body to the access line")
    max_chars: int = Field(4096, ge=0, description="each body is cut after this many characters")
    redact: list[str] = Field(
        default_factory=list, description="regexes masked in logged bodies (credentials always are)"
    )
    replacement: str = Field(REDACTED, description="what a `redact` match becomes")

    _patterns: list[re.Pattern[str]] = PrivateAttr(default_factory=list)

    @field_validator("redact")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redact[{i}] is not a valid regular expression: {exc}") from None
        return patterns

    def model_post_init(self, _context: Any) -> None:
        self._patterns = [re.compile(p) for p in self.redact]

    def scrub(self, value: Any, secrets: frozenset[str] = frozenset()) -> Any:
        """``value`` with credentials (``gateway.log.redact``), the config's own ``secrets`` (its keys,
        pasted as text) and the ``redact`` patterns masked."""
        if isinstance(value, str):
            for secret in secrets:  # before redact(), which may mask part of one
                if secret in value:
                    value = value.replace(secret, REDACTED)
            value = redact(value)
            for pattern in self._patterns:
                value = pattern.sub(lambda _: self.replacement, value)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if is_secret_key(str(k)) and masks(v) else self.scrub(v, secrets) for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.scrub(v, secrets) for v in value]
        return value

    def render(self, value: Any, secrets: frozenset[str] = frozenset(), raw: bytes | None = None) -> str:
        """A body as logged: scrubbed, as JSON text, cut after ``max_chars``. One that cannot be
        written as JSON (nested deeper than orjson goes) is logged as its ``raw`` text, cut first,
        then scrubbed (secret-named fields masked by pattern). A body with nothing to scrub (the usual
        case, tested on its text: ``_plain``) is written once, without a walk through its values."""
        try:
            text = self._plain(value, secrets)
            if text is None:
                text = self.scrub(value, secrets)
                if not isinstance(text, str):
                    text = orjson.dumps(text, default=str).decode()
        except (TypeError, ValueError, RecursionError):
            source = raw.decode("utf-8", "replace") if raw is not None else "[a body that cannot be rendered]"
            cut = source[: self.max_chars + 256]  # room for a secret's tail, masked before the cut below
            text = self.scrub(_SECRET_FIELD.sub(_mask_field, cut), secrets) + source[len(cut) :]
        if len(text) > self.max_chars:
            text = f"{text[: self.max_chars]}... [{len(text) - self.max_chars} more characters]"
        return text

    def _plain(self, value: Any, secrets: frozenset[str]) -> str | None:
        """``value`` as JSON text when ``scrub`` would leave it as it is, else None: no ``redact``
        pattern configured, none of the config's ``secrets`` in the text (each one written in JSON as
        it is, unescaped), nothing ``gateway.log.json_needs_redaction`` sees in it."""
        if self.redact:
            return None
        if isinstance(value, str):
            text, plain = value, redact(value) == value
        else:
            text = orjson.dumps(value, default=str).decode()
            plain = not json_needs_redaction(text)
        if not plain or (secrets and (not _json_plain(secrets) or any(secret in text for secret in secrets))):
            return None
        return text


@functools.lru_cache(maxsize=16)
def _json_plain(secrets: frozenset[str]) -> bool:
    """Whether every secret is written in JSON as it is (no character JSON escapes), so that one in
    a body shows in the body's text."""
    return all(orjson.dumps(secret)[1:-1].decode() == secret for secret in secrets)


#: A ``"name": "value"`` pair in JSON text, for masking secret-named fields without parsing.
_SECRET_FIELD = re.compile(r'"((?:[^"\\]|\\.)*)"(\s*:\s*)"(?:[^"\\]|\\.)*"')


def _mask_field(match: re.Match[str]) -> str:
    if not is_secret_key(match.group(1)):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'


class RequestLoggingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    skip_paths: list[str] = Field(
        default_factory=lambda: ["/metrics"], description="paths logged only when they fail (default: /metrics)"
    )
    bodies: BodyLoggingConfig = Field(default_factory=BodyLoggingConfig, description="body logging, for debugging")


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``request_logging`` section."""
    register("request_logging", RequestLoggingConfig)


def _bodies(ctx: RequestContext) -> BodyLoggingConfig:
    return ctx.config.plugin_config("request_logging").bodies


#: Streams whose bytes are OpenAI chunks as they are sent: read from the response's writes (``_tee``).
TEED = frozenset({CHAT.name, COMPLETIONS.name})
tee_key = web.AppKey("request_logging.tee", bool)  # the app reads streams' bytes (``_tee`` installed)


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """With body logging on at start-up: read a chat or completions stream's bytes as they are written
    (``_tee``), so that it stays on the pass-through path (no chunk filter)."""
    if config.plugin_config("request_logging").bodies.enabled:
        app[tee_key] = True
        app.on_response_prepare.append(_tee)


@hookimpl(trylast=True)
def gateway_stream_filter(ctx: RequestContext) -> ChunkFilter | None:
    """With body logging on: collect the streamed reply as the client gets it. A chat or completions
    stream is read from its writes when the app can (``_tee``: no filter, the stream stays on the
    pass-through path); another (or body logging turned on by a reload) through a filter, trylast:
    after every other filter. Off, no filter."""
    bodies = _bodies(ctx)
    if not bodies.enabled:
        return None
    collector = ctx.state[STATE] = StreamCollector(bodies.max_chars)
    if ctx.endpoint in TEED and ctx.request.app.get(tee_key):
        collector.teed = True
        return None
    return collector


async def _tee(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: a stream whose collector reads its writes gets its ``write`` and
    ``write_eof`` wrapped, each block fed to the collector once sent (``StreamCollector.feed``)."""
    ctx = request.get(ctx_key)
    collector = ctx.state.get(STATE) if ctx is not None else None
    if not isinstance(collector, StreamCollector) or not collector.teed:
        return
    send, end = response.write, response.write_eof

    async def write(data: bytes | bytearray | memoryview) -> None:
        await send(data)
        collector.feed(bytes(data))

    async def write_eof(data: bytes = b"") -> None:
        await end(data)
        if data:
            collector.feed(data)

    response.write, response.write_eof = write, write_eof  # type: ignore[method-assign]


@hookimpl(trylast=True)
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """With body logging on: keep the response, logged after the last byte as it was sent (every
    plugin's edits in)."""
    if _bodies(ctx).enabled:
        ctx.state[STATE] = response


@hookimpl
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> Awaitable[None] | None:
    """Write the access line, its fields in this order (the console shows them so): method, path,
    status, duration, endpoint, model, backend (the one that served, its deployment's name when it differs,
    the attempts when there were several), stream, time to first byte, tokens (``usage_estimated``
    when the gateway estimated them), cache, principal, error, with body logging on the bodies, then
    the request id; at the level ``level`` says. Sync (no coroutine per request) unless the bodies
    are logged, which may have to be read."""
    request = ctx.request
    status = ctx.status
    settings: RequestLoggingConfig = ctx.config.plugin_config("request_logging")
    if status < 400 and request.path in settings.skip_paths:
        return None
    fields = {
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round(ctx.duration * 1000, 2),
    }
    endpoint = ctx.endpoint
    if endpoint:
        fields["endpoint"] = endpoint
    if ctx.model is not None:
        fields["model"] = ctx.model
    deployment = ctx.deployment
    if deployment is not None:
        fields["backend"] = name = deployment.backend.name
        if deployment.name != name:
            fields["deployment"] = deployment.name
        if ctx.attempt_count != 1:
            fields["attempts"] = ctx.attempt_count
    if endpoint in STREAMING:
        fields["stream"] = ctx.stream
    if ctx.first_byte is not None:
        fields["ttfb_ms"] = round((ctx.first_byte - ctx.started) * 1000, 2)
    usage = ctx.usage
    if usage:
        fields["prompt_tokens"] = usage.get("prompt_tokens")
        fields["completion_tokens"] = usage.get("completion_tokens")
        if ctx.usage_estimated:
            fields["usage_estimated"] = True
    if ctx.cache:
        fields["cache"] = ctx.cache
    if ctx.principal is not None:
        fields["principal"] = ctx.principal.name
    if error is not None:
        fields["error"] = f"{type(error).__name__}: {error}"
    if settings.bodies.enabled:
        return _write_with_bodies(ctx, settings.bodies, fields, error)
    write_event(ctx.log, level(status, error), "request", fields)
    return None


async def _write_with_bodies(
    ctx: RequestContext, bodies: BodyLoggingConfig, fields: dict[str, Any], error: BaseException | None
) -> None:
    try:
        await _add_bodies(ctx, bodies, fields)
    except Exception as exc:  # the access line is written whatever the bodies hold
        fields["request_body"] = f"[not logged: {type(exc).__name__}]"
    write_event(ctx.log, level(ctx.status, error), "request", fields)


def level(status: int, error: BaseException | None) -> str:
    """The access line's level: ``info`` below 500 (a 4xx is the client's mistake, logged as any
    answer); ``warning`` for a 5xx an upstream caused (502, 503, 504); ``error`` when the gateway
    itself failed (a 500: ``InternalError``, or an exception that is no ``GatewayError``)."""
    if status < 500:
        return "info"
    own = (
        status == 500 or isinstance(error, InternalError) or (error is not None and not isinstance(error, GatewayError))
    )
    return "error" if own else "warning"


async def _add_bodies(ctx: RequestContext, bodies: BodyLoggingConfig, fields: dict[str, Any]) -> None:
    """``request_body``: the raw body the client sent (when the gateway read it whole);
    ``response_body``: the response, or the stream as assembled from its chunks."""
    request, secrets = ctx.request, _secrets(ctx)
    if request.body_exists and not request.can_read_body and ctx.status not in (408, 413):
        raw = await request.read()  # the bytes the pipeline read, kept by aiohttp
        try:
            fields["request_body"] = bodies.render(orjson.loads(raw), secrets, raw)
        except orjson.JSONDecodeError:
            fields["request_body"] = bodies.render(raw.decode("utf-8", "replace"), secrets)
    response = ctx.state.get(STATE)
    if isinstance(response, StreamCollector):
        response = response.assembled(ctx)
    if response is not None:
        fields["response_body"] = bodies.render(response, secrets)


def _as_array(block: bytes) -> bytes:
    """The usual block, ``data: <json>\\n\\n`` events one line each (and perhaps ``data: [DONE]``), as
    one JSON array of its payloads, in a few passes over the bytes; anything else gives text that is
    not JSON (the caller then reads the events one by one)."""
    if block.endswith(DONE):
        block = block[: -len(DONE)]
    if not block:
        return b"[]"
    if not (block.startswith(b"data: ") and block.endswith(b"\n\n")) or block.count(b"\n") != 2 * block.count(b"\n\n"):
        return b""
    return b"[" + block[6:-2].replace(b"\n\ndata: ", b",") + b"]"


def _secrets(ctx: RequestContext) -> frozenset[str]:
    """``ctx.config.secrets``, kept in the generation's state (the config's property costs microseconds)."""
    kept = ctx.generation_state.get(SECRETS)
    if kept is None:
        kept = ctx.generation_state[SECRETS] = ctx.config.secrets
    return kept


class StreamCollector:
    """A ``ChunkFilter`` that passes every chunk on and keeps, per choice, the text (and tool call
    arguments) it carried, up to ``limit`` characters each, and its finish reason. ``teed``: it reads
    the stream's written blocks instead (``feed``)."""

    __slots__ = ("choices", "frame", "limit", "teed")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.choices: dict[int, dict[str, Any]] = {}
        self.frame: dict[str, Any] = {}
        self.teed = False

    def feed(self, block: bytes) -> None:
        """A block of SSE events as sent: its chunks parsed in one ``orjson.loads`` (an error event,
        the gateway's own, is no chunk; a block that is not JSON events is skipped)."""
        try:
            chunks = orjson.loads(_as_array(block))
        except orjson.JSONDecodeError:
            payloads = [data for data in iter_sse_data(block) if data and data != b"[DONE]"]
            try:
                chunks = orjson.loads(b"[" + b",".join(payloads) + b"]")
            except orjson.JSONDecodeError:
                return
        for chunk in chunks:
            if isinstance(chunk, dict) and "error" not in chunk:
                self(chunk)

    def __call__(self, chunk: dict[str, Any] | None) -> dict[str, Any] | None:
        if chunk is None:
            return None
        if not self.frame:
            self.frame = {"id": chunk.get("id"), "object": chunk.get("object"), "model": chunk.get("model")}
        kept_choices, limit = self.choices, self.limit
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            kept = kept_choices.get(index)
            if kept is None:
                kept = kept_choices[index] = {"index": index, "text": [], "size": 0, "finish_reason": None}
            delta = choice.get("delta")
            if type(delta) is dict:
                text = delta.get("content")
                calls = delta.get("tool_calls")
            else:
                text, calls = choice.get("text"), None
            if text and kept["size"] <= limit:
                kept["text"].append(text)
                kept["size"] += len(text)
            if calls:
                self._tool_calls(kept, calls)
            reason = choice.get("finish_reason")
            if reason is not None:
                kept["finish_reason"] = reason
        return chunk

    def _tool_calls(self, kept: dict[str, Any], calls: list[dict[str, Any]]) -> None:
        for call in calls:
            function = call.get("function") or {}
            if kept["size"] <= self.limit:
                piece = (function.get("name") or "") + (function.get("arguments") or "")
                kept.setdefault("tool_calls", []).append(piece)
                kept["size"] += len(piece)

    def assembled(self, ctx: RequestContext) -> dict[str, Any]:
        """The stream as one response: each choice's text, tool call text and finish reason."""
        choices = []
        for kept in self.choices.values():
            choice: dict[str, Any] = {"index": kept["index"], "content": "".join(kept["text"])}
            if "tool_calls" in kept:
                choice["tool_calls"] = "".join(kept["tool_calls"])
            choice["finish_reason"] = kept["finish_reason"]
            choices.append(choice)
        return {**self.frame, "choices": choices, "usage": ctx.usage}
