"""The model endpoints (chat completions, legacy completions, embeddings, Anthropic messages, OpenAI
responses): what differs between them.

The path through the pipeline is the same for all three (``pipeline.model_endpoint``); an
``Endpoint`` names the operation, validates the body, calls the backend's method, and knows how to
estimate the usage of, and stream, a response a plugin answered with (``ctx.response``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from gateway.formats import chat as chat_format
from gateway.formats import completions as completions_format
from gateway.formats import embeddings as embeddings_format
from gateway.formats import messages as messages_format
from gateway.formats import responses as responses_format
from gateway.formats.requests import validate_chat_request, validate_completion_request, validate_embedding_request
from gateway.responses import ResponsesIngress

if TYPE_CHECKING:
    from gateway.backend import Backend
    from gateway.context import RequestContext
    from gateway.errors import GatewayError


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One model endpoint; see the module docstring."""

    name: str  # ctx.endpoint
    validate: Callable[[Any], None]
    call: Callable[[Backend, RequestContext], AsyncIterator[Any]]  # the backend's output, as an iterator
    estimate_usage: Callable[[Mapping[str, Any] | None, Mapping[str, Any]], dict[str, int]]
    to_chunks: Callable[[Mapping[str, Any], bool], list[dict[str, Any]]] | None = None  # None: never streams
    # A front door in another dialect (``/v1/messages``): the client's body -> the chat form, the
    # ``chat.completion`` -> the client's answer, and the stream's encoder (``formats.messages``).
    translate_in: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    translate_out: Callable[[Mapping[str, Any], str], dict[str, Any]] | None = None
    stream_encoder: Callable[[str, Mapping[str, Any]], Any] | None = None
    # A front door whose translation needs the request itself (``/v1/responses``): ``ingress(ctx,
    # body)`` is an ``Ingress`` for the request, in place of the three translations above.
    ingress: Callable[[RequestContext, dict[str, Any]], Ingress] | None = None
    # the final event of a stream a backend answered natively that failed: the error in the dialect
    error_event: Callable[[GatewayError], bytes] | None = None

    def native(self, ctx: RequestContext, backend: Backend | None) -> bool:
        """Whether ``backend`` answers this front door's request in its own dialect (``Backend.native``):
        it declares the endpoint, no plugin set ``ctx.translate``, and none changed the translated
        body (apart from its model): the client's request can go upstream as it was sent."""
        client = ctx.client_body
        if backend is None or client is None or self.name not in backend.native_endpoints or ctx.translate:
            return False
        assert self.translate_in is not None and ctx.body is not None
        body = ctx.body
        return {**self.translate_in(client), "model": body.get("model")} == body


class Ingress(Protocol):
    """A front door's translation of one request, for a dialect whose answers depend on more than the
    completion (ids, echoed settings, state kept between requests)."""

    def chat_body(self) -> dict[str, Any]:
        """The chat completion request for the client's body."""
        ...

    async def admitted(self, ctx: RequestContext) -> None:
        """The caller is known (after ``gateway_authenticate``, before ``gateway_process_request``):
        load what the request refers to into ``ctx.body``, or raise."""
        ...

    def answer(self, completion: Mapping[str, Any]) -> dict[str, Any]:
        """The client's answer for a ``chat.completion``."""
        ...

    def encoder(self) -> Any:
        """The stream's encoder: ``start()``, ``feed(chunk)``, ``end(streamed_tokens)``, ``error(error)``,
        each giving the bytes to write."""
        ...

    async def finished(self) -> None:
        """The answer is complete (before its last bytes are written): keep what the dialect keeps."""
        ...


#: ``ctx.endpoint`` of the other routes the core serves (the model endpoints' are ``CHAT.name`` and so on).
MODELS_LIST = "models.list"
MODELS_RETRIEVE = "models.retrieve"
HEALTH = "health"
INFO = "info"
RESPONSES_RETRIEVE = "responses.retrieve"
RESPONSES_DELETE = "responses.delete"
#: ``ctx.endpoint`` of the docs plugin's routes: ``/openapi.json`` (whose document passes through
#: ``gateway_process_response``, so an auth plugin marks the operations that need a key), the pages.
OPENAPI = "openapi"
DOCS = "docs"


async def _one(result: Awaitable[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    """An awaited result as a one-item iterator, so it takes the same path as a completion."""
    yield await result


CHAT = Endpoint(
    "chat.completions",
    validate_chat_request,
    lambda backend, ctx: backend.chat(ctx),
    chat_format.estimated_usage,
    chat_format.completion_to_chunks,
)
COMPLETIONS = Endpoint(
    "completions",
    validate_completion_request,
    lambda backend, ctx: backend.completions(ctx),
    completions_format.estimated_usage,
    completions_format.completion_to_chunks,
)
EMBEDDINGS = Endpoint(
    "embeddings",
    validate_embedding_request,
    lambda backend, ctx: _one(backend.embeddings(ctx)),
    embeddings_format.estimated_usage,
)
MESSAGES = Endpoint(
    "messages",
    messages_format.validate,
    lambda backend, ctx: backend.native(ctx) if MESSAGES.native(ctx, backend) else backend.chat(ctx),
    chat_format.estimated_usage,
    chat_format.completion_to_chunks,
    messages_format.to_chat,
    messages_format.from_completion,
    messages_format.StreamEncoder,
    error_event=messages_format.error_event,
)
RESPONSES = Endpoint(
    "responses",
    responses_format.validate,
    lambda backend, ctx: backend.chat(ctx),
    chat_format.estimated_usage,
    chat_format.completion_to_chunks,
    ingress=ResponsesIngress,
)
