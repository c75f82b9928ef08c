"""The Backend interface every model provider implements, and the registry built at start-up."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.errors import UnsupportedEndpointError
from gateway.log import redact

if TYPE_CHECKING:
    from gateway.context import RequestContext
    from gateway.upstream.errors import ModelCache


#: Bytes a non-streamed upstream answer may have, by default (64 MiB: far above any chat answer; a batch
#: of 2048 float embeddings of 3072 dimensions, about 120 MB as JSON, needs more, or base64).
DEFAULT_MAX_RESPONSE_SIZE = 64 * 1024 * 1024


class BackendConfig(BaseModel):
    """Settings every backend has; a backend's own ``Config`` subclasses this."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: str
    models: list[str] = Field(default_factory=list, description="model ids this backend serves, for /v1/models")
    timeout: float = Field(
        60.0, gt=0, description="seconds allowed for the first output and between two streamed chunks"
    )
    max_response_size: int = Field(
        DEFAULT_MAX_RESPONSE_SIZE,
        ge=1024,
        description="bytes of a non-streamed upstream answer at most (a larger one is a 502, read no further)",
    )

    def backend_references(self) -> dict[str, str]:
        """The other backends this one calls, by config key (``{"target": name}``): each must be
        configured, checked at start-up (``backends[i].target: no backend named ...``)."""
        return {}


class Backend(ABC):
    """A model provider. One instance per configured backend, entered once for the app's life.

    ``chat(ctx)`` is one async iterator for both modes. Streaming (``ctx.stream``): it yields
    ``chat.completion.chunk`` dicts, or ``bytes`` holding one or more complete, framed SSE events
    (``data: {...}\n\n``) that go to the client as they are (the pass-through path). It yields no
    ``[DONE]`` but for one case: its last block may end with the upstream's ``data: [DONE]\n\n``
    (exactly those bytes, ``gateway.streaming.DONE``) when they came together, and then the pipeline
    sends the block, [DONE] and the response's end in one write, and no [DONE] of its own.
    Non-streaming: it yields exactly one ``chat.completion`` dict. It sets ``ctx.usage`` when the
    usage is known, and raises ``gateway.errors.GatewayError`` subclasses for failures. The model to ask for is
    ``ctx.deployment.model``; the request is ``ctx.body``.

    Two optional endpoints follow the same rules (the default of each raises a 404
    ``UnsupportedEndpointError``, as OpenAI answers a model that an endpoint does not serve):

    - ``completions(ctx)`` (``POST /v1/completions``, ``ctx.endpoint == "completions"``): an async
      iterator like ``chat``, with ``text_completion`` objects: streaming, ``text_completion`` chunk
      dicts or framed SSE bytes; non-streaming, exactly one ``text_completion`` dict.
    - ``embeddings(ctx)`` (``POST /v1/embeddings``, ``ctx.endpoint == "embeddings"``): awaitable,
      returns the OpenAI ``list`` of ``embedding`` objects with its ``usage``, honouring
      ``encoding_format`` (base64: little-endian float32) and ``dimensions``. Never streamed.

    ``gateway.formats.completions`` and ``gateway.formats.embeddings`` build these objects.

    A backend that speaks a front door's own dialect lists that endpoint in ``native_endpoints``
    (``{"messages"}``: Anthropic's Messages API) and implements ``native(ctx)``: an async iterator like
    ``chat`` that sends ``ctx.client_body`` (the client's request, untranslated; the model to ask for
    is ``ctx.deployment.model``) and yields the answer in that dialect: one dict when not streaming;
    streaming, framed SSE event bytes (``event: ...\ndata: ...\n\n``) that go to the client as they
    are. It sets ``ctx.usage`` (OpenAI's names: ``prompt_tokens``, ``completion_tokens``). The pipeline
    calls it instead of ``chat`` when the deployment's backend declares the endpoint, no plugin changed
    the translated ``ctx.body`` and none set ``ctx.translate`` (see ``gateway.endpoints``).

    When a response ends with ``ctx.usage`` still None, the pipeline estimates it (see
    ``gateway.formats.chat``), counting a stream's output as it passes. A backend that sets
    ``ctx.usage`` for every response, also for a stream cut short, says so with ``reports_usage``:
    its streams are then not counted.
    """

    type_name: ClassVar[str]
    Config: ClassVar[type[BackendConfig]] = BackendConfig
    owned_by: ClassVar[str] = "gateway"
    #: True: ``ctx.usage`` is always set (the pipeline skips counting streamed output for an estimate).
    reports_usage: ClassVar[bool] = False
    #: Front doors (``ctx.endpoint`` names) answered in their own dialect by ``native(ctx)``.
    native_endpoints: ClassVar[frozenset[str]] = frozenset()
    #: ``closed``, ``open`` or ``half_open``: set by circuit-breaking code; /metrics shows it.
    circuit_state: str = "closed"
    #: Set by a backend that can list its upstream's models (``gateway.upstream.errors.ModelCache``):
    #: ``list_models`` reads it when the config names no ``models``.
    upstream_models: ModelCache | None = None

    def __init__(self, config: BackendConfig) -> None:
        self.config = config
        self.name = config.name

    async def __aenter__(self) -> Backend:
        """Open pooled resources (one ClientSession) for the app's life."""
        return self

    async def __aexit__(self, *exc: object) -> None:  # noqa: B027 (optional, like __aenter__)
        """Close what ``__aenter__`` opened."""

    async def list_models(self) -> list[dict[str, Any]]:
        """The OpenAI model objects this backend serves: its configured ``models``, else its
        upstream's (``upstream_models``, when the backend can ask)."""
        if self.config.models or self.upstream_models is None:
            return [model_object(m, self.owned_by) for m in self.config.models]
        return await self.upstream_models.get()

    @abstractmethod
    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        """Answer a chat completion request (see the class docstring)."""

    def completions(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        """Answer a legacy text completion request (see the class docstring); optional."""
        raise UnsupportedEndpointError(
            str(ctx.model), self.name, "v1/completions", "Did you mean to use v1/chat/completions?"
        )

    async def embeddings(self, ctx: RequestContext) -> dict[str, Any]:
        """Answer an embeddings request (see the class docstring); optional."""
        raise UnsupportedEndpointError(str(ctx.model), self.name, "v1/embeddings")

    def native(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        """Answer a front door's request in its own dialect (see the class docstring); optional."""
        raise UnsupportedEndpointError(str(ctx.model), self.name, f"native {ctx.endpoint}")

    def describe(self) -> dict[str, Any]:
        """What /info shows: the config, with ``SecretStr`` fields masked by pydantic and anything
        else that looks like a credential redacted."""
        public = self.config.model_dump(mode="json", exclude={"name", "type"})  # SecretStr: "**********"
        return redact({"name": self.name, "type": self.type_name, **public})


def model_object(model_id: str, owned_by: str, created: int = 0) -> dict[str, Any]:
    """An OpenAI ``model`` object."""
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


class BackendRegistry(Mapping[str, Backend]):
    """The configured backends of one config generation, by name (``gateway.generation`` opens and closes them)."""

    def __init__(self, backends: list[Backend]) -> None:
        self._backends = {b.name: b for b in backends}

    def __getitem__(self, name: str) -> Backend:
        return self._backends[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)
