"""The built-in ``mock`` backend: deterministic answers without network, for tests, demos and benchmarks.

It echoes the last user message (or says a fixed ``reply``), honours ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``n`` and forced tool calls (``tool_choice`` "required" or a named
function; the arguments are generated from the tool's JSON schema), streams word by word (or in a fixed
number of ``chunks``), and can simulate latency and failures. One streamed piece counts as one token.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway.backend import Backend, BackendConfig
from gateway.chat_format import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    content_text,
    estimate_prompt_tokens,
    include_usage,
    message_choice,
    tool_call,
    tool_call_id,
    usage,
    usage_chunk,
)
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    UpstreamError,
)
from gateway.hookspecs import hookimpl
from gateway.json_schema import SchemaTooComplexError, example_value

NO_USER_MESSAGE_REPLY = "Hello! I am the mock backend: send a user message and I will echo it."
ARGUMENT_FRAGMENT_CHARS = 8

_WORD = re.compile(r"\s*\S+\s*")


class FailureConfig(BaseModel):
    """A simulated upstream failure."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["error", "midstream", "hang"] = Field(
        description="error: fail before any output; midstream: break a stream off after `after_chunks` "
        "chunks (fails like `error` when not streaming); hang: never answer"
    )
    status: int = Field(
        500, ge=400, le=599, description="upstream HTTP status of the `error` failure (>= 500: the client gets 502)"
    )
    after_chunks: int = Field(2, ge=0, description="chunks sent before a `midstream` failure")


@dataclass(slots=True)
class _Answer:
    """What every choice says: content pieces, or argument fragments of a call to ``tool``."""

    pieces: list[str]
    finish_reason: str
    tool: str | None = None


class MockBackend(Backend):
    """Answers from the request alone; see the module docstring."""

    type_name = "mock"
    owned_by = "mock"

    class Config(BackendConfig):
        models: list[str] = Field(
            default_factory=lambda: ["mock-gpt-model"], description="model ids this backend serves"
        )
        reply: str | None = Field(None, description="a fixed reply; default: echo the last user message")
        first_chunk_delay: float = Field(0, ge=0, description="seconds before the first output")
        chunk_delay: float = Field(0, ge=0, description="seconds before each streamed chunk after the first")
        chunks: int | None = Field(
            None, ge=1, description="split the reply into exactly this many content chunks (default: by word)"
        )
        failure: FailureConfig | None = Field(None, description="simulate an upstream failure")

    config: Config

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._models = frozenset(config.models)

    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        """Stream chunks or yield one completion; errors surface on the first iteration."""
        return self._stream(ctx) if ctx.stream else self._complete(ctx)

    async def _complete(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        answer = self._answer(ctx)
        await self._before_output(stream=False)
        n = ctx.body.get("n") or 1
        text = "".join(answer.pieces)
        if answer.tool is None:
            choices = [message_choice(i, text, answer.finish_reason) for i in range(n)]
        else:
            choices = [
                message_choice(i, None, answer.finish_reason, [tool_call(tool_call_id(), answer.tool, text)])
                for i in range(n)
            ]
        ctx.usage = usage(estimate_prompt_tokens(ctx.body.get("messages")), n * len(answer.pieces))
        yield chat_completion(completion_id(), int(time.time()), _model(ctx), choices, ctx.usage)

    async def _stream(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        answer = self._answer(ctx)
        await self._before_output(stream=True)
        body = ctx.body
        n = body.get("n") or 1
        cid, created, model = completion_id(), int(time.time()), _model(ctx)
        extra = {"usage": None} if include_usage(body) else {}
        failure = self.config.failure
        limit = failure.after_chunks if failure is not None and failure.mode == "midstream" else -1
        delay = self.config.chunk_delay
        prompt_tokens = estimate_prompt_tokens(body.get("messages"))
        sent = 0
        try:
            for index, delta, finish_reason in _events(answer, n):
                if sent == limit:
                    break
                if delay and sent:
                    await asyncio.sleep(delay)
                sent += 1
                yield chunk(cid, created, model, [chunk_choice(index, delta, finish_reason)], **extra)
            if limit >= 0:
                raise self._broken_off(sent)
            if extra:
                ctx.usage = usage(prompt_tokens, n * len(answer.pieces))
                if delay:
                    await asyncio.sleep(delay)
                yield usage_chunk(cid, created, model, ctx.usage)
        finally:  # also on errors and cancellation: count what was sent
            ctx.usage = usage(prompt_tokens, min(max(sent - n, 0), n * len(answer.pieces)))

    def _answer(self, ctx: RequestContext) -> _Answer:
        """Check the model and decide the reply; raises for a bad request."""
        deployment = ctx.deployment
        if (deployment.model if deployment else ctx.model) not in self._models:
            raise ModelNotFoundError(str(ctx.model))
        body = ctx.body
        function = _forced_function(body)
        if function is not None:
            try:
                arguments = orjson.dumps(example_value(function.get("parameters") or {"type": "object"})).decode()
            except SchemaTooComplexError as exc:
                raise InvalidRequestError(
                    f"The mock backend cannot fill in this tool's parameters: {exc}.", param="tools"
                ) from None
            # OpenAI's finish_reason is "tool_calls" for `required`, but "stop" for a named function
            finish_reason = "tool_calls" if body.get("tool_choice") == "required" else "stop"
            return _Answer(_fragments(arguments), finish_reason, function["name"])
        text = self.config.reply
        if text is None:
            text = _last_user_text(body.get("messages") or ()) or NO_USER_MESSAGE_REPLY
        text, finish_reason = _cut_at_stop(text, body.get("stop"))
        pieces = _split(text, self.config.chunks)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        if limit is not None and len(pieces) > limit:
            pieces, finish_reason = pieces[:limit], "length"
        return _Answer(pieces, finish_reason)

    async def _before_output(self, stream: bool) -> None:
        """The first-output delay and the failures that strike before any output."""
        if self.config.first_chunk_delay:
            await asyncio.sleep(self.config.first_chunk_delay)
        failure = self.config.failure
        if failure is None:
            return
        if failure.mode == "hang":
            await asyncio.Event().wait()
        if failure.mode == "error" or not stream:
            raise self._failed(failure.status)

    def _failed(self, status: int) -> GatewayError:
        message = f"Backend '{self.name}' failed: simulated upstream error (HTTP {status})"
        if status >= 500:
            return UpstreamError(message)  # the client sees 502, as for any failing upstream
        if status == 429:
            return RateLimitError(message)
        return InvalidRequestError(message, status=status)

    def _broken_off(self, sent: int) -> UpstreamError:
        return UpstreamError(f"Backend '{self.name}' failed: simulated stream broke off after {sent} chunks")


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    register("mock", MockBackend)


# The reply -------------------------------------------------------------------------------------


def _model(ctx: RequestContext) -> str:
    return ctx.model or ctx.deployment.model


def _last_user_text(messages: Any) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def _cut_at_stop(text: str, stop: str | list[str] | None) -> tuple[str, str]:
    """The text before the first occurrence of any stop string; the finish reason is "stop" anyway."""
    if not stop:
        return text, "stop"
    positions = [p for s in ([stop] if isinstance(stop, str) else stop) if s and (p := text.find(s)) >= 0]
    return (text[: min(positions)] if positions else text), "stop"


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


def _events(answer: _Answer, n: int) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    """(choice index, delta, finish reason) of every chunk, the choices interleaved."""
    if answer.tool is None:
        for index in range(n):
            yield index, {"role": "assistant", "content": "", "refusal": None}, None
        for piece in answer.pieces:
            for index in range(n):
                yield index, {"content": piece}, None
    else:
        for index in range(n):
            call = {
                "index": 0,
                "id": tool_call_id(),
                "type": "function",
                "function": {"name": answer.tool, "arguments": ""},
            }
            yield index, {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}, None
        for piece in answer.pieces:
            for index in range(n):
                yield index, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}, None
    for index in range(n):
        yield index, {}, answer.finish_reason


# Tool calls ------------------------------------------------------------------------------------


def _forced_function(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The function ``tool_choice`` forces ("required": the first tool), or None for a text reply."""
    choice = body.get("tool_choice")
    if choice != "required" and not (isinstance(choice, dict) and choice.get("type") == "function"):
        return None
    functions = [t["function"] for t in body.get("tools") or () if t.get("type") == "function"]
    if choice == "required":
        if not functions:
            raise InvalidRequestError(
                "tool_choice 'required' needs at least one function in 'tools'.", param="tool_choice"
            )
        return functions[0]
    name = (choice.get("function") or {}).get("name")
    for function in functions:
        if function.get("name") == name:
            return function
    raise InvalidRequestError(f"Invalid 'tool_choice': no function named {name!r} in 'tools'.", param="tool_choice")
