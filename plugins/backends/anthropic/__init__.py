"""The built-in ``anthropic`` backend: Claude models through Anthropic's Messages API
(``POST {base_url}/v1/messages``), for OpenAI clients.

Requests, replies and streams are translated by ``anthropic_messages`` (its docstring says what
becomes of each request field). ``/v1/messages`` requests pass through natively (``native``): the
client's body goes upstream as it was sent, with the deployment's model and the client's
``anthropic-version`` and ``anthropic-beta`` headers (else the configured ones), and Anthropic's
answer or events come back as they are, their usage counted. Upstream errors map like every
backend's (``gateway.upstream.errors``): a 4xx keeps its status, message and Anthropic's error
type; 429 keeps ``Retry-After``; 529 (overloaded) -> 503 ``upstream_overloaded``; other 5xx -> 502.
An ``error`` event in the middle of a stream ends the client's stream with the same error as a
final event. Models are the configured ``models``, else Anthropic's ``GET /v1/models`` (every
page), cached ``models_ttl`` seconds.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Any

import aiohttp
import orjson
from pydantic import Field, field_validator

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig, model_object
from gateway.context import RequestContext
from gateway.errors import GatewayError, UpstreamError
from gateway.formats.chat import completion_to_chunks, estimate_prompt_tokens, estimated_usage, include_usage
from gateway.formats.messages import StreamEncoder
from gateway.upstream.errors import (
    BaseUrl,
    Credential,
    HeaderValue,
    ModelCache,
    client_session,
    forwarded_headers,
    header_secrets,
    http_error,
    json_object,
    listing_timeout,
    raise_for_status,
    transport_errors,
    url_secrets,
)
from gateway.upstream.sse import iter_sse
from gateway_plugins.backends.anthropic.messages import (
    SAMPLING_REMOVED_IN,
    completion,
    messages_request,
    usage_of,
)
from gateway_plugins.backends.anthropic.stream import StreamTranslator

#: Anthropic's error types and the HTTP status each comes with (for ``error`` events in a stream).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
#: Request headers of a ``/v1/messages`` client that go upstream with its request (native pass-through).
CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")
#: Stream events the native pass-through reads (the rest pass unread).
USAGE_EVENTS = frozenset({"message_start", "message_delta", "error"})
#: The last event of a Messages stream, for one that ended cleanly after its message_delta without it.
MESSAGE_STOP = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
#: Anthropic's status for "overloaded, retry later": the client gets a 503.
OVERLOADED = (529,)
#: Anthropic response headers passed on to the client, beside ``gateway.upstream.forwarded_headers``.
ANTHROPIC_HEADER_PREFIXES = ("anthropic-ratelimit-", "request-id")
MODEL_PAGE_SIZE = 1000  # Anthropic's largest page
MAX_MODEL_PAGES = 20


class AnthropicConfig(BackendConfig):
    base_url: BaseUrl = Field("https://api.anthropic.com", description="the API root (without /v1)")
    api_key: Credential = Field(description="sent as the x-api-key header")
    version: str = Field(
        "2023-06-01",
        pattern=r"^\d{4}-\d{2}-\d{2}$",
        description="the anthropic-version header (from 2026-10-21 on, temperature, top_p and top_k are dropped)",
    )
    beta: list[str] = Field(default_factory=list, description="beta features, sent in the anthropic-beta header")
    headers: dict[str, HeaderValue] = Field(default_factory=dict, description="extra headers sent with every request")
    max_tokens: int = Field(
        4096, ge=1, description="max_tokens when a request sets neither max_tokens nor max_completion_tokens"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds allowed to connect")
    models_ttl: float = Field(300.0, ge=0, description="seconds Anthropic's model list is cached")
    max_connections: int = Field(0, ge=0, description="open connections to the upstream at most (0: no limit)")

    @field_validator("base_url")
    @classmethod
    def _without_v1(cls, value: str) -> str:
        return value.removesuffix("/v1")


class AnthropicBackend(Backend):
    """Serves chat completions from Anthropic's Messages API; see the module docstring."""

    type_name = "anthropic"
    Config = AnthropicConfig
    native_endpoints = frozenset({"messages"})
    owned_by = "anthropic"
    config: AnthropicConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.session: aiohttp.ClientSession | None = None
        self._secrets = (
            self.config.api_key.get_secret_value(),
            *header_secrets(self.config.headers),
            *url_secrets(self.config.base_url),
        )
        self._sampling = self.config.version < SAMPLING_REMOVED_IN  # ISO dates sort as strings
        self.upstream_models = ModelCache(self.name, self._fetch_models, self.config.models_ttl)

    async def __aenter__(self) -> AnthropicBackend:
        headers = {
            "x-api-key": self._secrets[0],
            "anthropic-version": self.config.version,
            "content-type": "application/json",
        }
        if self.config.beta:
            headers["anthropic-beta"] = ",".join(self.config.beta)
        self.session = client_session(
            url=self.config.base_url,
            connect_timeout=self.config.connect_timeout,
            headers={**headers, **self.config.headers},
            max_connections=self.config.max_connections,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    # Chat ------------------------------------------------------------------------------------

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        assert ctx.body is not None and ctx.deployment is not None and self.session is not None
        body = messages_request(ctx.body, ctx.deployment.model, self.config.max_tokens, self._sampling)
        model = ctx.model or ctx.deployment.model
        with transport_errors(self.name, self._secrets):
            async with self.session.post(f"{self.config.base_url}/v1/messages", data=orjson.dumps(body)) as response:
                ctx.response_headers.update(_forwarded(response.headers))
                await raise_for_status(response, self.name, self._secrets, OVERLOADED)
                if not ctx.stream or response.content_type != "text/event-stream":
                    message = await json_object(response, self.name, self.config.max_response_size)
                    answer = completion(message, model)
                    if not message.get("usage"):  # none reported: an estimate, said to be one
                        answer["usage"] = estimated_usage(ctx.body, answer)
                        ctx.usage_estimated = True
                    ctx.usage = answer["usage"]
                    if ctx.stream:  # an upstream that answered a stream request in one piece
                        for chunk in completion_to_chunks(answer, include_usage(ctx.body)):
                            yield chunk
                    else:
                        yield answer
                    return
                prompt_tokens = estimate_prompt_tokens(ctx.body.get("messages")) if include_usage(ctx.body) else 0
                translator = StreamTranslator(model, include_usage(ctx.body), prompt_tokens)
                try:
                    async for _, data in iter_sse(response.content):
                        event = self._event(data)
                        if event.get("type") == "error":
                            raise self._stream_error(event)
                        for chunk in translator.feed(event):
                            yield chunk
                        if translator.complete:
                            return
                    for chunk in translator.end() or ():  # ended after the finish, without message_stop
                        yield chunk
                    if translator.complete:
                        return
                finally:  # also when the stream fails or the client leaves: count what is known
                    if translator.usage is not None:
                        ctx.usage = translator.usage
                    elif translator.estimated:  # the usage chunk's estimate (else the pipeline's)
                        ctx.usage, ctx.usage_estimated = translator.estimate(), True
        raise UpstreamError(f"Backend {self.name!r} ended the stream before it was complete.")

    # Messages, natively ------------------------------------------------------------------------

    async def native(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:  # type: ignore[override]
        """``/v1/messages`` as the client sent it (see the module docstring)."""
        assert ctx.client_body is not None and ctx.deployment is not None and self.session is not None
        body = {**ctx.client_body, "model": ctx.deployment.model}
        headers = {name: ctx.request.headers[name] for name in CLIENT_HEADERS if name in ctx.request.headers}
        url = f"{self.config.base_url}/v1/messages"
        with transport_errors(self.name, self._secrets):
            async with self.session.post(url, data=orjson.dumps(body), headers=headers) as response:
                ctx.response_headers.update(_forwarded(response.headers))
                await raise_for_status(response, self.name, self._secrets, OVERLOADED)
                if response.content_type != "text/event-stream":
                    message = await json_object(response, self.name, self.config.max_response_size)
                    ctx.usage = usage_of(message.get("usage") or {})
                    yield _events_of(message) if ctx.stream else message
                    return
                raw_usage: dict[str, Any] = {}
                finished = False  # message_delta (the stop reason) is out
                try:
                    async for kind, data in iter_sse(response.content):
                        if kind in USAGE_EVENTS:  # the only events read: for usage and errors
                            event = self._event(data)
                            if kind == "error":
                                raise self._stream_error(event)
                            found = event.get("usage") or (event.get("message") or {}).get("usage")
                            if isinstance(found, Mapping):
                                raw_usage.update((k, v) for k, v in found.items() if type(v) is int)
                            finished = finished or kind == "message_delta"
                        yield b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"
                        if kind == "message_stop":
                            return
                    if finished:  # a clean end after the stop reason is complete: closed as Anthropic would
                        yield MESSAGE_STOP
                        return
                finally:  # also when the stream fails or the client leaves: count what is known
                    if raw_usage:
                        ctx.usage = usage_of(raw_usage)
        raise UpstreamError(f"Backend {self.name!r} ended the stream before it was complete.")

    def _event(self, data: bytes) -> dict[str, Any]:
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            event = None
        if not isinstance(event, dict):
            raise UpstreamError(f"Backend {self.name!r} sent a stream event that is not a JSON object.")
        return event

    def _stream_error(self, event: Mapping[str, Any]) -> GatewayError:
        """The error for an ``error`` event: what the same error would be as an HTTP answer."""
        error = event.get("error")
        kind = error.get("type") if isinstance(error, Mapping) else None
        status = ERROR_STATUS.get(kind or "", 500)
        return http_error(self.name, status, orjson.dumps(event), secrets=self._secrets, overloaded=OVERLOADED)

    # Models ----------------------------------------------------------------------------------

    async def _fetch_models(self) -> list[dict[str, Any]]:
        """Every page of ``GET /v1/models``, following ``has_more`` / ``last_id``."""
        assert self.session is not None
        models: list[dict[str, Any]] = []
        params = {"limit": str(MODEL_PAGE_SIZE)}
        for _ in range(MAX_MODEL_PAGES):
            with transport_errors(self.name, self._secrets):
                async with self.session.get(
                    f"{self.config.base_url}/v1/models",
                    params=params,
                    timeout=listing_timeout(self.config.timeout, self.config.connect_timeout),
                ) as response:
                    await raise_for_status(response, self.name, self._secrets)
                    page = await json_object(response, self.name, self.config.max_response_size)
            for entry in page.get("data") or ():
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    models.append(model_object(entry["id"], self.owned_by, _timestamp(entry.get("created_at"))))
            if not page.get("has_more") or not isinstance(page.get("last_id"), str):
                break
            params = {**params, "after_id": page["last_id"]}
        return models


def _events_of(message: dict[str, Any]) -> bytes:
    """The stream events of a whole message (an upstream that answered a stream request in one piece)."""
    answer = completion(message, str(message.get("model", "")))
    encoder = StreamEncoder(answer["model"], {})
    out = encoder.start() + b"".join(encoder.feed(chunk) for chunk in completion_to_chunks(answer, True))
    return out + encoder.end(0)


def _forwarded(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream response headers the client gets: rate limits and request ids."""
    found = forwarded_headers(headers)
    found.update({k: v for k, v in headers.items() if k.lower().startswith(ANTHROPIC_HEADER_PREFIXES)})
    return found


def _timestamp(value: Any) -> int:
    """Seconds since the epoch of an RFC 3339 time (0 when there is none)."""
    try:
        return int(datetime.fromisoformat(value).timestamp())
    except (TypeError, ValueError):
        return 0


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    """Register the ``anthropic`` backend type."""
    register("anthropic", AnthropicBackend)
