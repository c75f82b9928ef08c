"""The built-in ``sourcegraph`` backend: the LLM API of a Sourcegraph instance (seed 000).

- Models: ``GET {endpoint}/.api/llm/models``, cached ``models_ttl`` seconds, served under their
  ``provider::apiVersion::model`` ids and the configured short ``aliases``. The instance's model
  configuration (``/.api/modelconfig/supported-models.json``, Sourcegraph 5.6+) is read with it: the
  model ``default`` is its default chat model, and its chat models are listed when ``/.api/llm/models``
  cannot list them. A model the instance does
  not list is our 404 ``model_not_found`` before any call (an unknown name refetches the list at most
  every ``gateway.upstream.MODELS_RETRY`` seconds); the instance's own "model not available" answers
  map to it too.
- Chat: ``POST {endpoint}/.api/llm/chat/completions``. Instances that refuse ``stream: true``, the
  ``system`` role or ``n`` > 1 are served anyway: the reply is streamed word by word from the complete
  answer, system prompts go in front of the first user message, and ``n`` choices come from ``n``
  concurrent calls. With a capability on ``auto`` the backend tries it and, on the instance's 400
  refusing it, retries at once without it and remembers that for the app's life.
- Legacy (``legacy: true``, older instances): ``POST {endpoint}/.api/completions/stream`` with its
  ``{"speaker", "text"}`` transcript and ``event: completion | error | done`` stream, whose
  completion events carry the whole text so far (``deltaText`` from ``legacy_api_version`` 2 on).
- Errors: plain-text and JSON bodies alike; a 500 wrapping an inner answer is unwrapped; a 401/403
  means the gateway's own token is refused: 502, never the client's fault. The rest as in
  ``gateway.upstream.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import aiohttp
import orjson
import structlog

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig, model_object
from gateway.context import RequestContext
from gateway.errors import GatewayError, InvalidRequestError, ModelNotFoundError, RateLimitError, UpstreamError
from gateway.upstream.errors import (
    MAX_ERROR_BODY,
    MAX_ERROR_MESSAGE,
    ModelCache,
    client_session,
    error_details,
    forwarded_headers,
    http_error,
    listing_timeout,
    read_body,
    scrub,
    transport_errors,
    url_secrets,
)
from gateway.upstream.sse import iter_sse
from gateway_plugins.backends.sourcegraph import modelconfig, streams
from gateway_plugins.backends.sourcegraph import protocol as sg
from gateway_plugins.backends.sourcegraph.config import (
    SourcegraphConfig,
)

MODELS_PATH = "/.api/llm/models"
CHAT_PATH = "/.api/llm/chat/completions"
LEGACY_PATH = "/.api/completions/stream"
OWNED_BY = "sourcegraph"

log = structlog.get_logger("gateway")


class _Refused(Exception):
    """The instance refused a capability the request used (a 400 saying so)."""

    def __init__(self, capability: sg.Capability, error: GatewayError) -> None:
        super().__init__(capability)
        self.capability = capability
        self.error = error


class SourcegraphBackend(Backend):
    """A Sourcegraph instance's LLM API; see the module docstring."""

    type_name = "sourcegraph"
    Config = SourcegraphConfig
    owned_by = OWNED_BY
    upstream_models: ModelCache  # set in __init__
    config: SourcegraphConfig

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.session: aiohttp.ClientSession | None = None
        self._token = self.config.access_token.get_secret_value()
        self._secrets = (self._token, *url_secrets(self.config.endpoint))
        self._learned: dict[str, bool] = {}  # capabilities found missing (auto mode)
        self._default: str | None = None  # the instance's default chat model (its model configuration)
        self.upstream_models = ModelCache(self.name, self._fetch_models, self.config.models_ttl)

    async def __aenter__(self) -> SourcegraphBackend:
        self.session = client_session(
            url=self.config.endpoint,
            connect_timeout=self.config.connect_timeout,
            headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"},
            max_connections=self.config.max_connections,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    # Models --------------------------------------------------------------------------------

    async def list_models(self) -> list[dict[str, Any]]:
        """The configured ``models`` (else the instance's list), then the aliases of listed models."""
        listed = await super().list_models()
        ids = {m["id"] for m in listed}
        aliases = [model_object(a, OWNED_BY) for a, target in self.config.aliases.items() if target in ids]
        return listed + [a for a in aliases if a["id"] not in ids]

    async def _fetch_models(self) -> list[dict[str, Any]]:
        """The instance's models (``/.api/llm/models``, else the chat models of its model
        configuration); its default chat model (``modelconfig``) is kept for the model ``default``."""
        config = await self._model_config()
        self._default = config.default_chat if config else None
        try:
            listing = await self._get(MODELS_PATH)
        except GatewayError:
            if config is None or not config.chat_models:
                raise
            return [model_object(m, OWNED_BY) for m in config.chat_models]
        data = listing.get("data") if listing else None
        if not isinstance(data, list):
            raise UpstreamError(f"Backend {self.name!r} answered its model list with something else than a list.")
        return [
            model_object(m["id"], OWNED_BY, sg.seconds(m.get("created")))
            for m in data
            if isinstance(m, dict) and isinstance(m.get("id"), str)
        ]

    async def _get(self, path: str) -> dict[str, Any] | None:
        """A listing's JSON object (None for something else); an error status raises."""
        assert self.session is not None
        with transport_errors(self.name, self._secrets):
            async with self.session.get(
                self.config.endpoint + path, timeout=listing_timeout(self.config.timeout, self.config.connect_timeout)
            ) as response:
                if response.status >= 400:
                    raise self._error(None, response.status, await response.content.read(MAX_ERROR_BODY), {})
                return streams.json_object(await self._read(response))

    async def _model_config(self) -> modelconfig.ModelConfig | None:
        """The instance's model configuration; None when it has none (before Sourcegraph 5.6)."""
        try:
            return modelconfig.parse(await self._get(modelconfig.PATH))
        except GatewayError as exc:
            log.info("no model configuration from the instance", backend=self.name, error=exc.message)
            return None

    async def _default_model(self, ctx: RequestContext) -> str:
        """The instance's default chat model, for the model ``default``; 404 when it names none."""
        with contextlib.suppress(GatewayError):
            await self.upstream_models.get()
        if self._default is None:
            raise ModelNotFoundError(str(ctx.model))
        return self._default

    async def _upstream_model(self, ctx: RequestContext) -> str:
        """The instance's id for the requested model (aliases resolved); 404 for one it does not
        serve. When the instance cannot list its models, the instance decides."""
        assert ctx.deployment is not None
        name = ctx.deployment.model
        target = self.config.aliases.get(name, name)
        if target == modelconfig.DEFAULT:  # the gateway's config names no default_model: the instance's
            return await self._default_model(ctx)
        if self.config.models:
            if target not in self.config.models:
                raise ModelNotFoundError(str(ctx.model))
            return target
        try:
            listed = {m["id"] for m in await self.upstream_models.get()}
            if target not in listed:
                listed = {m["id"] for m in await self.upstream_models.get(refresh=True)}
        except GatewayError as exc:
            log.info("cannot check the model against the instance's list", backend=self.name, error=exc.message)
            return target
        if target not in listed:
            raise ModelNotFoundError(str(ctx.model))
        return target

    # Chat ----------------------------------------------------------------------------------

    async def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any]]:  # type: ignore[override]
        assert ctx.body is not None
        n = ctx.body.get("n") or 1
        model = await self._upstream_model(ctx)
        if self.config.legacy:
            if n > self.config.max_n:
                raise self._too_many(n)
            answers = self._legacy(ctx, model, n)
        else:
            answers = self._modern(ctx, model, n)
        async with contextlib.aclosing(answers):
            async for item in answers:
                yield item

    def _can(self, capability: sg.Capability) -> bool:
        setting = getattr(self.config, capability)
        return self._learned.get(capability, True) if setting == "auto" else setting

    def _too_many(self, n: int) -> InvalidRequestError:
        return InvalidRequestError(
            f"Backend {self.name!r} answers n > 1 with one call per choice, and at most {self.config.max_n} "
            f"of them (max_n); n was {n}.",
            param="n",
        )

    async def _modern(self, ctx: RequestContext, model: str, n: int) -> AsyncIterator[dict[str, Any]]:
        """``/.api/llm/chat/completions``, retried without each capability the instance refuses."""
        for _ in range(4):  # at most one refusal per capability
            calls = 1 if n == 1 or self._can("n") else n
            if calls > self.config.max_n:
                raise self._too_many(n)
            stream = ctx.stream and calls == 1 and self._can("stream")
            body = self._chat_body(ctx, model, stream=stream, n=n if calls == 1 and n > 1 else None)
            try:
                if stream:
                    async with contextlib.aclosing(self._chat_stream(ctx, body)) as items:
                        async for item in items:
                            yield item
                    return
                answers = await _all([self._chat_once(ctx, body) for _ in range(calls)])
                for item in streams.reply(ctx, streams.completion(ctx, answers)):
                    yield item
                return
            except _Refused as refused:
                if getattr(self.config, refused.capability) is True:
                    raise refused.error from None
                self._learn(refused.capability)
        raise UpstreamError(f"Backend {self.name!r} kept refusing the request.")

    def _learn(self, capability: sg.Capability) -> None:
        """Remember that the instance lacks ``capability`` (concurrent requests may learn it twice)."""
        if self._learned.get(capability) is not False:
            self._learned[capability] = False
            log.info("the instance refused a capability; emulating it", backend=self.name, capability=capability)

    def _chat_body(self, ctx: RequestContext, model: str, *, stream: bool, n: int | None) -> dict[str, Any]:
        assert ctx.body is not None
        body = {
            k: v for k, v in ctx.body.items() if k not in ("stream", "stream_options", "n", "max_completion_tokens")
        }
        body["model"] = model
        body["max_tokens"] = sg.max_tokens(ctx.body, self.config.default_max_tokens)
        messages = ctx.body.get("messages") or []
        body["messages"] = sg.system_as_system(messages) if self._can("system") else sg.fold_system(messages)
        if stream:
            body["stream"] = True
        if n is not None:
            body["n"] = n
        return body

    @contextlib.asynccontextmanager
    async def _post(
        self, ctx: RequestContext, path: str, body: dict[str, Any], params: Mapping[str, str] | None = None
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """POST ``body`` to the instance; an error status raises its mapped error (``_Refused`` when
        the chat API refuses a capability the body uses)."""
        assert self.session is not None
        with transport_errors(self.name, self._secrets):
            async with self.session.post(
                self.config.endpoint + path, data=orjson.dumps(body), params=params
            ) as response:
                ctx.response_headers.update(forwarded_headers(response.headers))
                if response.status >= 400:
                    raw = await response.content.read(MAX_ERROR_BODY)
                    used = sg.used_capabilities(body) if path == CHAT_PATH else frozenset()
                    raise self._error(ctx, response.status, raw, response.headers, used)
                yield response

    async def _chat_once(self, ctx: RequestContext, body: dict[str, Any]) -> dict[str, Any]:
        async with self._post(ctx, CHAT_PATH, body) as response:
            return self._chat_answer(await self._read(response))

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        return await read_body(response, self.name, self.config.max_response_size)

    def _chat_answer(self, raw: bytes) -> dict[str, Any]:
        answer = streams.json_object(raw)
        if answer is None or not isinstance(answer.get("choices"), list) or not answer["choices"]:
            raise UpstreamError(f"Backend {self.name!r} answered with something else than a chat completion.")
        return answer

    async def _chat_stream(self, ctx: RequestContext, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        async with self._post(ctx, CHAT_PATH, body) as response:
            if response.content_type != "text/event-stream":  # answered in one piece after all
                answer = self._chat_answer(await self._read(response))
                for item in streams.reply(ctx, streams.completion(ctx, [answer])):
                    yield item
                return
            chunks = streams.chat_chunks(ctx, iter_sse(response.content), self.name, self._stream_error)
            async with contextlib.aclosing(chunks):
                async for item in chunks:
                    yield item

    # Legacy --------------------------------------------------------------------------------

    async def _legacy(self, ctx: RequestContext, model: str, n: int) -> AsyncIterator[dict[str, Any]]:
        """``/.api/completions/stream``: streamed as it comes, or collected (non-streaming, n > 1)."""
        assert ctx.body is not None
        if ctx.body.get("tools"):
            raise InvalidRequestError("Sourcegraph's legacy completions API has no tool calling.", param="tools")
        body = {
            "messages": sg.legacy_messages(ctx.body["messages"], self.config.legacy_trailing_assistant),
            **sg.legacy_parameters(ctx.body, sg.max_tokens(ctx.body, self.config.default_max_tokens)),
            "model": model,
            "stream": True,
        }
        if ctx.stream and n == 1:
            async with contextlib.aclosing(self._legacy_deltas(ctx, body)) as deltas:
                chunks = streams.legacy_chunks(ctx, deltas)
                async with contextlib.aclosing(chunks):
                    async for item in chunks:
                        yield item
            return
        answers = await _all([streams.legacy_answer(self._legacy_deltas(ctx, body)) for _ in range(n)])
        for item in streams.reply(ctx, streams.completion(ctx, answers)):
            yield item

    async def _legacy_deltas(self, ctx: RequestContext, body: dict[str, Any]) -> AsyncIterator[tuple[str, str | None]]:
        params = {"api-version": str(self.config.legacy_api_version)}
        async with self._post(ctx, LEGACY_PATH, body, params) as response:
            if response.content_type == "application/json":  # {"completion", "stopReason"} in one piece
                answer = streams.json_object(await self._read(response)) or {}
                yield str(answer.get("completion") or ""), answer.get("stopReason") or "stop"
                return
            deltas = streams.legacy_deltas(iter_sse(response.content), self.name, lambda m: self._event_error(ctx, m))
            async with contextlib.aclosing(deltas):
                async for delta in deltas:
                    yield delta

    # Errors --------------------------------------------------------------------------------

    def _error(
        self,
        ctx: RequestContext | None,
        status: int,
        raw: bytes,
        headers: Mapping[str, str],
        used: frozenset[str] = frozenset(),
    ) -> Exception:
        """The error for an instance's error answer (see the module docstring)."""
        text = (error_details(raw).get("message") or "").strip()
        inner, text = sg.unwrap(status, text)
        if inner != status:
            status, raw = inner, text.encode()
        refused = sg.refused_capability(status, text)
        if refused is not None and refused in used:
            return _Refused(refused, http_error(self.name, status, raw, headers, self._secrets))
        if ctx is not None and status in (400, 404) and sg.model_missing(text):
            return ModelNotFoundError(str(ctx.model))
        return http_error(self.name, status, raw, headers, self._secrets)

    def _stream_error(self, message: str) -> GatewayError:
        """The error of an error event in the chat API's stream."""
        said = scrub(message, self._secrets)[:MAX_ERROR_MESSAGE]
        return UpstreamError(f"Backend {self.name!r} failed during the stream: {said}")

    def _event_error(self, ctx: RequestContext, message: str) -> GatewayError:
        """The error of a legacy stream's ``error`` event."""
        message = scrub(message, self._secrets)
        if sg.model_missing(message):
            return ModelNotFoundError(str(ctx.model))
        if sg.rate_limited(message):
            return RateLimitError(f"Backend {self.name!r} is rate limited: {message[:MAX_ERROR_MESSAGE]}")
        return UpstreamError(f"Backend {self.name!r} failed: {message[:MAX_ERROR_MESSAGE]}")


async def _all(calls: list[Coroutine[Any, Any, Any]]) -> list[Any]:
    """Run ``calls`` concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    """Register the ``sourcegraph`` backend type."""
    register("sourcegraph", SourcegraphBackend)
