"""The built-in ``mock`` backend: deterministic answers without network, for tests, demos and benchmarks.

Chat: it echoes the last user message (or says a fixed ``reply``), honours ``max_tokens`` /
``max_completion_tokens``, ``stop``, ``n``, ``response_format`` and tools (it calls a tool the last
user message names, or the one ``tool_choice`` forces, with arguments generated from the tool's JSON
schema; the rules are in ``answers``), streams word by word (or in a fixed number of ``chunks``), and
can simulate latency and failures. One streamed piece counts as one token.

Legacy completions: each prompt is echoed the same way (``max_tokens`` defaults to 16, as on OpenAI;
``echo`` puts the prompt before the completion; a token-array prompt reads as its numbers). Choices
are ``prompt_index * n + i``. Embeddings: a unit vector derived from a hash of each input
(``dimensions`` long, else the backend's ``dimensions``), base64 when asked.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig
from gateway.context import RequestContext
from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    RateLimitError,
    UpstreamError,
)
from gateway.formats.chat import (
    chat_completion,
    chunk,
    completion_id,
    estimate_prompt_tokens,
    include_usage,
    message_choice,
    tool_call,
    tool_call_id,
    usage,
    usage_chunk,
)
from gateway.formats.completions import (
    estimate_input_tokens,
    split_inputs,
    text_choice,
    text_completion,
    text_completion_id,
    text_usage_chunk,
)
from gateway.formats.completions import estimate_prompt_tokens as estimate_text_prompt_tokens
from gateway.formats.embeddings import embedding, embedding_list, embedding_usage, encode_base64
from gateway.formats.json_schema import SchemaTooComplexError, example_value
from gateway_plugins.backends.mock.answers import (
    _Answer,
    _cut_at_stop,
    _events,
    _formatted,
    _fragments,
    _model,
    _reply_text,
    _split,
    _stopped,
    _text_events,
    _tool_to_call,
    hash_vector,
)

#: Embedding values computed on the event loop at most (about 0.2 ms); a larger answer is built in a thread.
_ON_LOOP_VALUES = 1024


def _vectors(inputs: list[Any], size: int, encode: Callable[[list[float]], Any] | None) -> list[dict[str, Any]]:
    vectors = (hash_vector(item, size) for item in inputs)
    return [embedding(i, encode(v) if encode else v) for i, v in enumerate(vectors)]


NO_USER_MESSAGE_REPLY = "Hello! I am the mock backend: send a user message and I will echo it."
NO_PROMPT_REPLY = "Hello! I am the mock backend: send a prompt and I will echo it."
COMPLETIONS_MAX_TOKENS = 16  # OpenAI's default `max_tokens` for legacy completions


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


#: A stream to send: its id, its (chunk choice, counts as a token) events, and the prompt's tokens.
_Plan = tuple[str, Iterable[tuple[dict[str, Any], bool]], int]


class MockBackend(Backend):
    """Answers from the request alone; see the module docstring."""

    type_name = "mock"
    owned_by = "mock"
    reports_usage = True  # exact counts of what it sends, also for a stream cut short

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
        dimensions: int = Field(
            8, ge=1, le=3072, description="embedding length when a request sets no `dimensions` (at most 3072)"
        )

    config: Config

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self._models = frozenset(config.models)

    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        """Stream chunks or yield one completion; errors surface on the first iteration."""
        if not ctx.stream:
            return self._complete(ctx)
        return self._emit(ctx, self._chat_events, chunk, usage_chunk)

    async def _complete(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        answer = self._answer(ctx)
        await self._before_output(stream=False)
        n = ctx.body.get("n") or 1
        text = "".join(answer.pieces)
        if answer.tool is None:
            choices = [_stopped(message_choice(i, text, answer.finish_reason), answer) for i in range(n)]
        else:
            choices = [
                message_choice(i, None, answer.finish_reason, [tool_call(tool_call_id(), answer.tool, text)])
                for i in range(n)
            ]
        ctx.usage = usage(estimate_prompt_tokens(ctx.body.get("messages")), n * len(answer.pieces))
        yield chat_completion(completion_id(), int(time.time()), _model(ctx), choices, ctx.usage)

    def _chat_events(self, ctx: RequestContext) -> _Plan:
        answer = self._answer(ctx)
        return (
            completion_id(),
            _events(answer, ctx.body.get("n") or 1),
            estimate_prompt_tokens(ctx.body.get("messages")),
        )

    def completions(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        """Legacy completions: stream chunks or yield one ``text_completion``."""
        if not ctx.stream:
            return self._complete_text(ctx)
        return self._emit(ctx, self._text_events, text_completion, text_usage_chunk)

    async def _complete_text(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        prompts = self._text_answers(ctx)
        await self._before_output(stream=False)
        body = ctx.body
        n, echo = body.get("n") or 1, bool(body.get("echo"))
        choices = [
            text_choice(p * n + i, (prompt if echo else "") + "".join(answer.pieces), answer.finish_reason)
            for p, (prompt, answer) in enumerate(prompts)
            for i in range(n)
        ]
        tokens = n * sum(len(answer.pieces) for _, answer in prompts)
        ctx.usage = usage(estimate_text_prompt_tokens(body["prompt"]), tokens)
        yield text_completion(text_completion_id(), int(time.time()), _model(ctx), choices, ctx.usage)

    def _text_events(self, ctx: RequestContext) -> _Plan:
        prompts, body = self._text_answers(ctx), ctx.body
        events = _text_events(prompts, body.get("n") or 1, bool(body.get("echo")))
        return text_completion_id(), events, estimate_text_prompt_tokens(body["prompt"])

    async def embeddings(self, ctx: RequestContext) -> dict[str, Any]:
        """One hash-derived unit vector per input; see the module docstring."""
        self._check_model(ctx)
        await self._before_output(stream=False)
        body = ctx.body
        inputs = split_inputs(body["input"])
        size = body.get("dimensions") or self.config.dimensions
        encode = encode_base64 if body.get("encoding_format") == "base64" else None
        if len(inputs) * size > _ON_LOOP_VALUES:  # milliseconds of CPU or more: off the event loop
            data = await asyncio.to_thread(_vectors, inputs, size, encode)
        else:
            data = _vectors(inputs, size, encode)
        ctx.usage = embedding_usage(sum(estimate_input_tokens(item) for item in inputs))
        return embedding_list(data, _model(ctx), ctx.usage)

    async def _emit(
        self,
        ctx: RequestContext,
        plan: Callable[[RequestContext], _Plan],
        make_chunk: Callable[..., dict[str, Any]],
        make_usage_chunk: Callable[..., dict[str, Any]],
    ) -> AsyncIterator[dict[str, Any]]:
        """A stream: a chunk per ``(choice, counts as a token)`` event of the ``plan``, with the
        configured delays, midstream failure and usage chunk; ``ctx.usage`` counts the tokens sent,
        also when the stream is cut short."""
        cid, events, prompt_tokens = plan(ctx)
        await self._before_output(stream=True)
        created, model = int(time.time()), _model(ctx)
        extra = {"usage": None} if include_usage(ctx.body) else {}
        failure = self.config.failure
        limit = failure.after_chunks if failure is not None and failure.mode == "midstream" else -1
        delay = self.config.chunk_delay
        sent = tokens = 0
        try:
            for choice, is_token in events:
                if sent == limit:
                    break
                if delay and sent:
                    await asyncio.sleep(delay)
                sent += 1
                tokens += is_token
                yield make_chunk(cid, created, model, [choice], **extra)
            if limit >= 0:
                raise self._broken_off(sent)
            if extra:
                ctx.usage = usage(prompt_tokens, tokens)
                if delay:
                    await asyncio.sleep(delay)
                yield make_usage_chunk(cid, created, model, ctx.usage)
        finally:  # also on errors and cancellation: count what was sent
            ctx.usage = usage(prompt_tokens, tokens)

    def _check_model(self, ctx: RequestContext) -> None:
        deployment = ctx.deployment
        if (deployment.model if deployment else ctx.model) not in self._models:
            raise ModelNotFoundError(str(ctx.model))

    def _text_answers(self, ctx: RequestContext) -> list[tuple[str, _Answer]]:
        """Check the model; per prompt, its text and the answer to it."""
        self._check_model(ctx)
        body = ctx.body
        limit = body.get("max_tokens")
        limit = COMPLETIONS_MAX_TOKENS if limit is None else limit
        answers = []
        for item in split_inputs(body["prompt"]):
            prompt = " ".join(map(str, item)) if isinstance(item, list) else item
            reply = self.config.reply if self.config.reply is not None else (prompt or NO_PROMPT_REPLY)
            answers.append((prompt, self._text_answer(reply, body.get("stop"), limit)))
        return answers

    def _text_answer(self, text: str, stop: str | list[str] | None, limit: int | None) -> _Answer:
        """``text`` cut at the first stop string, in pieces, at most ``limit`` of them."""
        text, finish_reason, sequence = _cut_at_stop(text, stop)
        pieces = _split(text, self.config.chunks)
        if limit is not None and len(pieces) > limit:
            pieces, finish_reason, sequence = pieces[:limit], "length", None
        return _Answer(pieces, finish_reason, stop_sequence=sequence)

    def _answer(self, ctx: RequestContext) -> _Answer:
        """Check the model and decide the reply; raises for a bad request."""
        self._check_model(ctx)
        body = ctx.body
        function = _tool_to_call(body)
        if function is not None:
            try:
                arguments = orjson.dumps(example_value(function.get("parameters") or {"type": "object"})).decode()
            except SchemaTooComplexError as exc:
                raise InvalidRequestError(
                    f"The mock backend cannot fill in this tool's parameters: {exc}.", param="tools"
                ) from None
            # OpenAI's finish_reason is "stop" for a named function, else "tool_calls"
            finish_reason = "stop" if isinstance(body.get("tool_choice"), dict) else "tool_calls"
            return _Answer(_fragments(arguments), finish_reason, function["name"])
        text = self.config.reply
        if text is None:
            text = _reply_text(body.get("messages") or ()) or NO_USER_MESSAGE_REPLY
        text = _formatted(text, body.get("response_format"))
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        return self._text_answer(text, body.get("stop"), limit)

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
