"""The built-in ``openai_compat`` backend: any OpenAI-compatible upstream (OpenAI, Azure OpenAI, vLLM,
Ollama, llama.cpp's server, Groq, Together, OpenRouter...).

Chat completions, legacy completions and embeddings take the same path: the request body goes
upstream untouched, unknown fields included, but for the model name (embeddings' ``encoding_format``
too: base64 vectors pass through as the upstream encoded them). A
stream passes through as the upstream's bytes, cut at event boundaries; the only work per read is
a few byte searches (the ``[DONE]`` marker, a usage event, an error event). When the upstream model
is not the one the client asked for, the ``model`` field of every answer is rewritten to the
client's name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import quote, urlencode

import orjson
import structlog
import yarl
from pydantic import Field

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig
from gateway.context import RequestContext
from gateway.errors import ModelNotFoundError, UpstreamError
from gateway.formats import completions as completions_format
from gateway.formats.chat import completion_to_chunks, include_usage
from gateway.streaming import DONE
from gateway.upstream.errors import (
    BaseUrl,
    Credential,
    HeaderValue,
    ModelCache,
    UpstreamClientError,
    forwarded_headers,
    header_secrets,
    json_object,
    listing_seconds,
    raise_for_status,
    transport_errors,
    url_secrets,
)
from gateway.upstream.http_client import HttpClient, Response
from gateway.upstream.sse_blocks import DEFAULT_MAX_EVENT
from gateway_plugins.backends.openai_compat.stream import Events, Renamer, choices_of

log = structlog.get_logger("gateway")


class OpenAICompatConfig(BackendConfig):
    base_url: BaseUrl = Field(description="the API root, with its version: https://api.openai.com/v1")
    api_key: Credential | None = Field(None, description="the upstream key (none for local servers)")
    forward_client_key: bool = Field(
        False, description="a key the client sends as `Authorization: Bearer` goes upstream instead of api_key"
    )
    api_key_header: str = Field(
        "Authorization", description="header carrying the key: Authorization (as `Bearer <key>`), or e.g. api-key"
    )
    headers: dict[str, HeaderValue] = Field(default_factory=dict, description="extra headers sent with every request")
    api_version: str | None = Field(None, description="sent as the `api-version` query parameter (Azure)")
    deployment_urls: bool = Field(
        False, description="Azure style: {base_url}/deployments/{model}/chat/completions, the model in the URL"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds allowed to connect")
    models_ttl: float = Field(300.0, ge=0, description="seconds the upstream's model list is cached")
    max_connections: int = Field(0, ge=0, description="open connections to the upstream at most (0: no limit)")
    max_event_size: int = Field(
        DEFAULT_MAX_EVENT,
        gt=0,
        description="bytes one streamed event may hold; a larger one ends the stream with a bad_gateway error event",
    )
    stream_usage: bool = Field(
        True,
        description="always ask a stream for its usage (stream_options.include_usage) and drop the usage "
        "chunk when the client did not ask for it, so every stream is counted (an upstream that refuses "
        "stream_options, such as Azure before 2024-10-21, is asked without them from then on)",
    )


class OpenAICompatBackend(Backend):
    """Forwards to an OpenAI-compatible API; see the module docstring."""

    type_name = "openai_compat"
    Config = OpenAICompatConfig
    owned_by = "openai_compat"
    config: OpenAICompatConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.client: HttpClient | None = None
        self._key = self.config.api_key.get_secret_value() if self.config.api_key else None
        self._config_secrets = (*header_secrets(self.config.headers), *url_secrets(self.config.base_url))
        self._path = yarl.URL(self.config.base_url).raw_path.rstrip("/")  # the paths' common prefix
        self._query = "?" + urlencode({"api-version": self.config.api_version}) if self.config.api_version else ""
        self._stream_options = True  # the upstream takes stream_options (until it refuses them)
        self.upstream_models = ModelCache(self.name, self._fetch_models, self.config.models_ttl)

    async def __aenter__(self) -> OpenAICompatBackend:
        headers = dict(self.config.headers)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
        if self._key and not self.config.forward_client_key:
            headers[self.config.api_key_header] = self._credential(self._key)
        self.client = HttpClient(
            self.config.base_url,
            headers=headers,
            connect_timeout=self.config.connect_timeout,
            max_connections=self.config.max_connections,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.close()

    # Requests ------------------------------------------------------------------------------

    def _credential(self, key: str) -> str:
        return f"Bearer {key}" if self.config.api_key_header.lower() == "authorization" else key

    def _request_headers(self, ctx: RequestContext | None) -> dict[str, str] | None:
        """The key header when it depends on the request (a forwarded client key); else None."""
        if not self.config.forward_client_key:
            return None
        key = (ctx.client_key if ctx is not None else None) or self._key
        return {self.config.api_key_header: self._credential(key)} if key else None

    def _target(self, operation: str, model: str | None = None) -> str:
        """The path and query ``operation`` is asked at (under the base URL's path)."""
        if self.config.deployment_urls and model is not None:  # the model is one path segment, whatever a client names
            if model in (".", ".."):
                raise ModelNotFoundError(model)
            return f"{self._path}/deployments/{quote(model, safe='')}/{operation}{self._query}"
        return f"{self._path}/{operation}{self._query}"

    def _secrets(self, ctx: RequestContext | None) -> tuple[str | None, ...]:
        return (self._key, ctx.client_key if ctx is not None else None, *self._config_secrets)

    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        return self._call(ctx, "chat/completions")

    def completions(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        return self._call(ctx, "completions", completions_format.completion_to_chunks)

    async def embeddings(self, ctx: RequestContext) -> dict[str, Any]:
        async with contextlib.aclosing(self._call(ctx, "embeddings")) as answers:
            answer = await anext(answers)
        assert isinstance(answer, dict)  # not a stream: one JSON answer
        return answer

    async def _call(
        self,
        ctx: RequestContext,
        operation: str,
        to_chunks: Callable[[Mapping[str, Any], bool], list[dict[str, Any]]] = completion_to_chunks,
    ) -> AsyncIterator[dict[str, Any] | bytes]:
        """POST ``ctx.body`` to ``operation`` and yield the answer: one dict, or a stream's events
        (``to_chunks`` turns an upstream's one-piece answer to a stream request into chunks)."""
        assert ctx.body is not None and ctx.deployment is not None
        body, model = ctx.body, ctx.deployment.model
        if body.get("model") != model:
            body = {**body, "model": model}
        asked = body
        drop_usage = ctx.stream and self.config.stream_usage and self._stream_options and not include_usage(body)
        if drop_usage:
            body = {**body, "stream_options": {**(body.get("stream_options") or {}), "include_usage": True}}
        rename = model != ctx.model and ctx.model is not None
        secrets = self._secrets(ctx)
        url = self._target(operation, model)
        with transport_errors(self.name, secrets):
            try:
                response = await self._post(ctx, url, body, secrets)
            except UpstreamClientError as exc:
                if not (drop_usage and _refuses_stream_options(exc)):
                    raise
                self._stream_options = drop_usage = False  # the gateway's own addition: ask without
                log.warning("the upstream refuses stream_options; streams go uncounted", backend=self.name)
                response = await self._post(ctx, url, asked, secrets)
            try:
                if not ctx.stream or response.content_type != "text/event-stream":
                    answer = await json_object(response, self.name, self.config.max_response_size)
                    if rename:
                        answer["model"] = ctx.model
                    ctx.usage = answer.get("usage") or ctx.usage
                    if not ctx.stream:
                        yield answer
                    else:  # an upstream that answered a stream request in one piece
                        for chunk in to_chunks(answer, include_usage(ctx.body)):
                            yield chunk
                    return
                renamer = Renamer(ctx.model) if rename else None
                events = Events(self, ctx, drop_usage, renamer, secrets, choices_of(ctx.body, operation))
                blocks = events.blocks
                async for data in response.content.iter_any():
                    block = events.feed(data)
                    if blocks.done and events.failure is None:  # [DONE] came with it: one write for both
                        block += DONE
                    if block:
                        yield block
                    if events.failure is not None:
                        if blocks.problem is not None:  # the rest of a broken stream is not read
                            response.abort()
                        raise events.failure
                    if blocks.done:
                        return
                if not events.ended():
                    raise UpstreamError(f"Backend {self.name!r} ended the stream before it was complete.")
            finally:
                response.release()

    async def _post(
        self, ctx: RequestContext, target: str, body: Mapping[str, Any], secrets: tuple[str | None, ...]
    ) -> Response:
        """The upstream's response to ``body``, its headers forwarded; an error status raises."""
        assert self.client is not None
        response = await self.client.request("POST", target, orjson.dumps(body), self._request_headers(ctx))
        try:
            ctx.response_headers.update(forwarded_headers(response.headers))
            own_key = not (self.config.forward_client_key and ctx.client_key)  # else the client's 401 stays a 401
            await raise_for_status(response, self.name, secrets, own_key=own_key)
        except BaseException:
            response.release()
            raise
        return response

    # Models --------------------------------------------------------------------------------

    async def _fetch_models(self) -> list[dict[str, Any]]:
        assert self.client is not None
        secrets = self._secrets(None)
        with transport_errors(self.name, secrets):
            async with asyncio.timeout(listing_seconds(self.config.timeout)):
                response = await self.client.request("GET", self._target("models"), None, self._request_headers(None))
                try:
                    await raise_for_status(response, self.name, secrets)
                    listing = await json_object(response, self.name, self.config.max_response_size)
                finally:
                    response.release()
        return [
            {
                "id": m["id"],
                "object": "model",
                "created": m.get("created") or 0,
                "owned_by": m.get("owned_by") or self.owned_by,
            }
            for m in listing.get("data") or []
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]


def _refuses_stream_options(error: UpstreamClientError) -> bool:
    """Whether a 400 says the upstream does not take ``stream_options`` (Azure before 2024-10-21:
    "Unrecognized request argument supplied: stream_options"; others: "Unknown parameter")."""
    return error.status == 400 and (error.param == "stream_options" or "stream_options" in error.message)


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    """Register the ``openai_compat`` backend type."""
    register("openai_compat", OpenAICompatBackend)
