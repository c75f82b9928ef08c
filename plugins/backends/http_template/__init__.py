"""The built-in ``http_template`` backend: your own chat API, declared in YAML, no code (seed 003).

The request is ``method url`` with ``headers`` (a header whose value is empty, such as an unset
``${VAR:-}``, is not sent), an optional ``api_key`` (sent as ``Authorization: Bearer <key>`` unless
configured otherwise; none when empty) and a JSON ``body`` template (``json_template``) over these
variables:

- ``messages``: every message as ``{role, content}``, the content as text;
- ``history``: the messages before the last user message; ``last_user_message``: its text;
- ``system``: the system and developer messages' text, joined by blank lines (null when none);
- ``model``: the upstream model name; ``parameters``: the request's other fields (``temperature``,
  ``max_tokens`` (also from ``max_completion_tokens``), ``top_p``, ``stop``, ...);
- ``stream``: whether this call asks the upstream to stream; ``request``: the whole request body.

The answer is read with JMESPath: ``response`` maps a JSON answer to the reply ``text`` and, when the
upstream reports them, ``finish_reason``, ``prompt_tokens``, ``completion_tokens`` and an ``error``.
An upstream that streams NDJSON or SSE is described by ``stream``: the same mapping applied to each
event, plus when the stream is over (``done``, ``done_data``). With both, a call streams when the
client asked for a stream; with only ``stream``, every call streams (non-streaming clients get the
collected reply); with only ``response``, none does and a streaming client gets the complete reply
word by word. A reply that does not fit the mapping is a 502 naming the path that found nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import aiohttp
import orjson
from pydantic import Field, SecretStr, field_validator, model_validator

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig
from gateway.context import RequestContext
from gateway.errors import InvalidRequestError, UpstreamError
from gateway.formats.chat import (
    chat_completion,
    chunk,
    chunk_choice,
    completion_id,
    completion_to_chunks,
    content_text,
    estimate_prompt_tokens,
    estimate_tokens,
    finish_reason,
    include_usage,
    message_choice,
    usage,
    usage_chunk,
)
from gateway.upstream.errors import (
    MAX_ERROR_MESSAGE,
    Credential,
    HeaderValue,
    Url,
    client_session,
    forwarded_headers,
    header_secrets,
    raise_for_status,
    read_body,
    scrub,
    transport_errors,
    url_secrets,
)
from gateway.upstream.sse import iter_sse
from gateway_plugins.backends.http_template.answer_mapping import (
    AnswerMapping,
    Mapping,
    Mismatch,
    Reading,
    Reported,
    StreamMapping,
)
from gateway_plugins.backends.http_template.json_template import Template, text_of

#: The variables a body template can use (see the module docstring).
VARIABLES = ("messages", "history", "last_user_message", "system", "model", "parameters", "stream", "request")
#: Request fields that are not ``parameters``.
NOT_PARAMETERS = frozenset({"messages", "model", "stream", "stream_options"})
SYSTEM_ROLES = ("system", "developer")
#: How much of an upstream answer that does not fit the mapping an error message quotes.
QUOTED_ANSWER = 200
#: What ``_events`` yields for SSE's ``done_data``.
_DONE: Any = object()


class HttpTemplateConfig(BackendConfig):
    url: Url = Field(description="the chat API's URL")
    method: Literal["POST", "PUT", "PATCH", "GET"] = "POST"
    headers: dict[str, HeaderValue] = Field(
        default_factory=dict, description="headers sent; an empty value is not sent"
    )
    api_key: Credential | None = Field(None, description="sent in api_key_header after api_key_prefix; empty: none")
    api_key_header: str = "Authorization"
    api_key_prefix: str = "Bearer "
    body: Any = Field(None, description="the JSON body template (null: no body)")
    response: AnswerMapping | None = Field(None, description="how to read a JSON answer")
    stream: StreamMapping | None = Field(None, description="how to read a streamed answer")
    finish_reasons: dict[str, Literal["stop", "length", "content_filter"]] = Field(
        default_factory=dict,
        description="the upstream's finish reasons -> OpenAI's (others: end_turn, stop_sequence -> stop, "
        "max_tokens -> length, anything unknown -> stop)",
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds allowed to connect")
    max_connections: int = Field(0, ge=0, description="open connections to the upstream at most (0: no limit)")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value is not None and value.get_secret_value() else None

    @field_validator("body")
    @classmethod
    def _valid_template(cls, value: Any) -> Any:
        Template(value, VARIABLES)
        return value

    @model_validator(mode="after")
    def _some_mapping(self) -> HttpTemplateConfig:
        if self.response is None and self.stream is None:
            raise ValueError("`response` (a JSON answer) or `stream` (a streamed one) must say how to read replies")
        return self


class HttpTemplateBackend(Backend):
    """Calls a chat API described in YAML; see the module docstring."""

    type_name = "http_template"
    Config = HttpTemplateConfig
    owned_by = "http_template"
    config: HttpTemplateConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        cfg = self.config
        self.session: aiohttp.ClientSession | None = None
        self._body = Template(cfg.body, VARIABLES)
        self._headers = {k: v for k, v in cfg.headers.items() if v}
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        if key:
            self._headers[cfg.api_key_header] = cfg.api_key_prefix + key
        self._secrets = [key, *header_secrets(self._headers), *url_secrets(cfg.url)]
        has_type = any(k.lower() == "content-type" for k in self._headers)
        self._json_type = None if has_type else {"Content-Type": "application/json"}
        self._response = Mapping(cfg.response, "response") if cfg.response else None
        self._stream = Mapping(cfg.stream, "stream") if cfg.stream else None

    async def __aenter__(self) -> HttpTemplateBackend:
        self.session = client_session(
            url=self.config.url,
            connect_timeout=self.config.connect_timeout,
            headers=self._headers,
            max_connections=self.config.max_connections,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:
        assert ctx.body is not None
        if (ctx.body.get("n") or 1) > 1:
            raise InvalidRequestError(f"Backend {self.name!r} answers one choice at a time: n must be 1.", param="n")
        streamed = self._stream is not None and (ctx.stream or self._response is None)
        return self._call(ctx, streamed)

    # The call ------------------------------------------------------------------------------

    async def _call(self, ctx: RequestContext, streamed: bool) -> AsyncIterator[dict[str, Any]]:
        assert self.session is not None and ctx.body is not None
        body = self._body.render(variables(ctx, streamed))
        data = None if body is None else orjson.dumps(body)
        with transport_errors(self.name, self._secrets):
            async with self.session.request(
                self.config.method, self.config.url, data=data, headers=self._json_type if data else None
            ) as response:
                ctx.response_headers.update(forwarded_headers(response.headers))
                await raise_for_status(response, self.name, self._secrets)
                if streamed:
                    if ctx.stream:
                        async with contextlib.aclosing(self._relay(ctx, response)) as chunks:
                            async for item in chunks:
                                yield item
                    else:
                        yield await self._collect(ctx, response)
                    return
                raw = await read_body(response, self.name, self.config.max_response_size)
        assert self._response is not None
        reading = Reading()
        self._read(self._response, self._parse(raw, "answered with something that is not JSON"), reading)
        if not reading.found_text:
            raise self._no_text(self._response, f"; it answered: {self._quote(raw)}")
        completion = self._completion(ctx, reading)
        if not ctx.stream:
            yield completion
            return
        for item in completion_to_chunks(completion, include_usage(ctx.body), word_by_word=True):
            yield item

    async def _events(self, response: aiohttp.ClientResponse, spec: StreamMapping) -> AsyncIterator[Any]:
        """The stream's events as parsed JSON (``_DONE`` for SSE's ``done_data``)."""
        if spec.format == "ndjson":
            async with contextlib.aclosing(_lines(response)) as lines:
                async for line in lines:
                    if line.strip():
                        yield self._parse(line, "sent a stream line that is not JSON")
            return
        async with contextlib.aclosing(iter_sse(_lines(response))) as events:
            async for _event, data in events:
                if spec.done_data is not None and data.decode("utf-8", "replace").strip() == spec.done_data:
                    yield _DONE
                    return
                yield self._parse(data, "sent a stream event that is not JSON")

    async def _texts(self, response: aiohttp.ClientResponse, reading: Reading) -> AsyncIterator[str]:
        """The reply's pieces as the stream's events carry them; an error when it ends early."""
        assert self._stream is not None
        spec = self._stream.spec
        assert isinstance(spec, StreamMapping)
        async with contextlib.aclosing(self._events(response, spec)) as events:
            async for event in events:
                if event is _DONE:
                    reading.done = True
                    break
                before = len(reading.pieces)
                self._read(self._stream, event, reading)
                if len(reading.pieces) > before and reading.pieces[-1]:
                    yield reading.pieces[-1]
                if reading.done:
                    break
        if not reading.done and spec.has_end and reading.finish_reason is None:  # a clean end after a finish: complete
            raise UpstreamError(f"Backend {self.name!r} ended its stream before the end (no `done` event).")
        if not reading.found_text:
            raise self._no_text(self._stream, " in any event of its stream")

    async def _relay(self, ctx: RequestContext, response: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
        """Chunks for the client as the upstream's events arrive."""
        assert ctx.body is not None
        cid, created, model = completion_id(), int(time.time()), self._model(ctx)
        extra: dict[str, Any] = {"usage": None} if include_usage(ctx.body) else {}
        reading, sent = Reading(), False
        try:
            async with contextlib.aclosing(self._texts(response, reading)) as texts:
                async for text in texts:
                    delta = {"content": text} if sent else {"role": "assistant", "content": text, "refusal": None}
                    sent = True
                    yield chunk(cid, created, model, [chunk_choice(0, delta)], **extra)
            if not sent:
                delta = {"role": "assistant", "content": "", "refusal": None}
                yield chunk(cid, created, model, [chunk_choice(0, delta)], **extra)
            yield chunk(cid, created, model, [chunk_choice(0, {}, self._finish_reason(reading))], **extra)
        finally:  # also on errors and cancellation: count what was received
            ctx.usage = self._usage(ctx, reading)
        if extra:
            yield usage_chunk(cid, created, model, ctx.usage)

    async def _collect(self, ctx: RequestContext, response: aiohttp.ClientResponse) -> dict[str, Any]:
        reading = Reading()
        async with contextlib.aclosing(self._texts(response, reading)) as texts:
            async for _ in texts:
                pass
        return self._completion(ctx, reading)

    # Building the answer -------------------------------------------------------------------

    def _completion(self, ctx: RequestContext, reading: Reading) -> dict[str, Any]:
        ctx.usage = self._usage(ctx, reading)
        choice = message_choice(0, "".join(reading.pieces), self._finish_reason(reading))
        return chat_completion(completion_id(), int(time.time()), self._model(ctx), [choice], ctx.usage)

    def _usage(self, ctx: RequestContext, reading: Reading) -> dict[str, int]:
        assert ctx.body is not None
        prompt = reading.prompt_tokens
        if prompt is None:
            prompt = estimate_prompt_tokens(ctx.body.get("messages"))
        completion = reading.completion_tokens
        if completion is None:
            completion = sum(estimate_tokens(p) for p in reading.pieces)
        if reading.prompt_tokens is None or reading.completion_tokens is None:  # counted here, in part at least
            ctx.usage_estimated = True
        return usage(prompt, completion)

    def _finish_reason(self, reading: Reading) -> str:
        """OpenAI's finish reason: the configured mapping's, else ``chat_format.finish_reason``'s
        (``stop`` for ``tool_calls``: this backend's replies are text)."""
        reason = reading.finish_reason or "stop"
        found = self.config.finish_reasons.get(reason) or finish_reason(reason)
        return "stop" if found == "tool_calls" else found

    @staticmethod
    def _model(ctx: RequestContext) -> str:
        assert ctx.deployment is not None
        return ctx.model or ctx.deployment.model

    # Failures ------------------------------------------------------------------------------

    def _parse(self, raw: bytes, problem: str) -> Any:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Backend {self.name!r} {problem}: {self._quote(raw)}") from None

    def _no_text(self, mapping: Mapping, where: str) -> UpstreamError:
        return UpstreamError(
            f"Backend {self.name!r} answered without the reply text at `{mapping.spec.text}` "
            f"(`{mapping.section}.text` in its config){where}."
        )

    def _quote(self, raw: bytes) -> str:
        text = raw[:QUOTED_ANSWER].decode("utf-8", "replace").strip()
        return scrub(text + ("..." if len(raw) > QUOTED_ANSWER else ""), self._secrets) or "(nothing)"

    def _read(self, mapping: Mapping, answer: Any, reading: Reading) -> None:
        """``mapping.read``, its complaints turned into the errors the client sees."""
        try:
            mapping.read(answer, reading)
        except Reported as exc:
            message = scrub(text_of(exc.value), self._secrets)[:MAX_ERROR_MESSAGE]
            raise UpstreamError(f"Backend {self.name!r} reported an error: {message}") from None
        except Mismatch as exc:
            raise UpstreamError(
                f"Backend {self.name!r} answered {self._quote(orjson.dumps(exc.value))} at `{exc.path}` "
                f"(`{mapping.section}.{exc.name}` in its config), which is not {exc.expected}."
            ) from None


async def _lines(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The response body's lines (without their end), however the network cuts it."""
    pending = bytearray()
    async for data in response.content.iter_any():
        pending += data
        if b"\n" in data:
            *lines, rest = pending.split(b"\n")
            pending = rest
            for line in lines:
                yield bytes(line.rstrip(b"\r"))
    if pending:
        yield bytes(pending.rstrip(b"\r"))


def variables(ctx: RequestContext, streamed: bool) -> dict[str, Any]:
    """The values a body template sees (see the module docstring)."""
    assert ctx.body is not None and ctx.deployment is not None
    body = ctx.body
    messages = [{"role": m.get("role"), "content": content_text(m.get("content"))} for m in body["messages"]]
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i]["role"] == "user"), None)
    system = "\n\n".join(m["content"] for m in messages if m["role"] in SYSTEM_ROLES and m["content"])
    parameters = {k: v for k, v in body.items() if k not in NOT_PARAMETERS}
    if parameters.get("max_tokens") is None and parameters.get("max_completion_tokens") is not None:
        parameters["max_tokens"] = parameters["max_completion_tokens"]
    return {
        "messages": messages,
        "history": messages if last is None else messages[:last],
        "last_user_message": None if last is None else messages[last]["content"],
        "system": system or None,
        "model": ctx.deployment.model,
        "parameters": parameters,
        "stream": streamed,
        "request": body,
    }


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    register("http_template", HttpTemplateBackend)
