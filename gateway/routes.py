"""Thin HTTP handlers: each names its endpoint on the context and hands over to the pipeline."""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from typing import Any

import structlog
from aiohttp import web

from gateway import __version__
from gateway.backend import Backend, model_object
from gateway.context import RequestContext
from gateway.endpoints import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    HEALTH,
    INFO,
    MESSAGES,
    MODELS_LIST,
    MODELS_RETRIEVE,
    RESPONSES,
    RESPONSES_DELETE,
    RESPONSES_RETRIEVE,
)
from gateway.errors import ModelNotFoundError
from gateway.formats import messages as messages_format
from gateway.formats.requests import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    MessagesRequest,
    ResponsesRequest,
)
from gateway.formats.response_models import (
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingList,
    Health,
    Info,
    Message,
    Model,
    ModelList,
    ResponseDeleted,
    ResponseObject,
    TextCompletion,
    TokenCount,
)
from gateway.generation import Generation
from gateway.keys import ctx_key
from gateway.openapi import operation
from gateway.pipeline import json_endpoint, model_endpoint, read_json, resolve_model
from gateway.plugin_manager import describe
from gateway.replies import json_response
from gateway.responses import not_found, stored
from gateway.upstream.errors import MODELS_TIMEOUT

NAME = "llm-gateway"
#: Seconds a backend's ``list_models()`` may take for ``/v1/models``; one that takes longer is skipped
#: (a little over ``MODELS_TIMEOUT``, the bound of the built-in backends' own listing requests).
LISTING_TIMEOUT = MODELS_TIMEOUT + 2.0


#: The model of the default config (config/gateway.yaml) and a user message: the bodies Swagger UI's
#: "Try it out" starts from, which that config answers unchanged.
EXAMPLE_MODEL = "mock-gpt-model"
_HELLO = [{"role": "user", "content": "Hello! Say hi back."}]
CHAT_EXAMPLE = {"model": EXAMPLE_MODEL, "messages": _HELLO}
COMPLETION_EXAMPLE = {"model": EXAMPLE_MODEL, "prompt": "Say hi back.", "max_tokens": 16}
EMBEDDING_EXAMPLE = {"model": EXAMPLE_MODEL, "input": "Hello!"}
MESSAGES_EXAMPLE = {"model": EXAMPLE_MODEL, "max_tokens": 256, "messages": _HELLO}
RESPONSES_EXAMPLE = {"model": EXAMPLE_MODEL, "input": "Hello! Say hi back."}


def setup_routes(app: web.Application) -> None:
    """The core routes; ``/v1`` paths also answer without the prefix (seed clients use both)."""
    router = app.router
    for prefix in ("/v1", ""):
        router.add_post(f"{prefix}/chat/completions", handle_chat_completions)
        router.add_post(f"{prefix}/completions", handle_completions)
        router.add_post(f"{prefix}/embeddings", handle_embeddings)
        router.add_get(f"{prefix}/models", list_models)
        router.add_get(f"{prefix}/models/{{model_id:.+}}", retrieve_model)
        router.add_post(f"{prefix}/responses", handle_responses)
        router.add_get(f"{prefix}/responses/{{response_id}}", retrieve_response)
        router.add_delete(f"{prefix}/responses/{{response_id}}", delete_response)
    router.add_post("/v1/messages", handle_messages)
    router.add_post("/v1/messages/count_tokens", handle_count_tokens)
    router.add_get("/health", health)
    router.add_get("/", health)  # an alias: served, not in the document
    router.add_get("/info", info)


@operation(
    "Create a chat completion",
    tag="chat",
    request=ChatCompletionRequest,
    example=CHAT_EXAMPLE,
    response=ChatCompletion,
    stream=ChatCompletionChunk,
    description="OpenAI's chat completions; fields the gateway does not check pass through to the backend. "
    'With `"stream": true` the answer is `text/event-stream` (Server-Sent Events, not WebSockets).',
)
async def handle_chat_completions(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], CHAT)


@operation(
    "Create a completion (legacy)",
    tag="completions",
    request=CompletionRequest,
    example=COMPLETION_EXAMPLE,
    response=TextCompletion,
    stream=TextCompletion,
    description="OpenAI's legacy text completions, for backends that serve them; they stream like chat completions.",
)
async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], COMPLETIONS)


@operation(
    "Create embeddings", tag="embeddings", request=EmbeddingRequest, example=EMBEDDING_EXAMPLE, response=EmbeddingList
)
async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], EMBEDDINGS)


@operation(
    "Create a message (Anthropic Messages API)",
    tag="messages",
    request=MessagesRequest,
    example=MESSAGES_EXAMPLE,
    response=Message,
    description="Anthropic's Messages API over every backend: translated to chat completions and back "
    "(Anthropic's named SSE events when streamed; errors in Anthropic's shape).",
)
async def handle_messages(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], MESSAGES)


@operation(
    "Create a response (OpenAI Responses API)",
    tag="responses",
    request=ResponsesRequest,
    example=RESPONSES_EXAMPLE,
    response=ResponseObject,
    description="OpenAI's Responses API over every backend: translated to chat completions and back. "
    'With `"stream": true` the answer is `text/event-stream` of typed events (`event: response.created`, '
    "`response.output_text.delta`, ..., `response.completed`), each with a `sequence_number`. With `store` "
    "(the default) the response is kept for `previous_response_id` and `GET /v1/responses/{id}`, per API key.",
)
async def handle_responses(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], RESPONSES)


@operation("Retrieve a stored response", tag="responses", response=ResponseObject)
async def retrieve_response(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = RESPONSES_RETRIEVE
    return await json_endpoint(ctx, _stored_response)


@operation("Delete a stored response", tag="responses", response=ResponseDeleted)
async def delete_response(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = RESPONSES_DELETE
    return await json_endpoint(ctx, _delete_response)


async def _stored_response(ctx: RequestContext) -> dict[str, Any]:
    response_id = ctx.request.match_info["response_id"]
    record = await stored(ctx).get(response_id)
    if record is None:
        raise not_found(response_id)
    return record["response"]


async def _delete_response(ctx: RequestContext) -> dict[str, Any]:
    response_id = ctx.request.match_info["response_id"]
    if not await stored(ctx).delete(response_id):
        raise not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}


@operation(
    "Count the tokens of a message (Anthropic)",
    tag="messages",
    request=MessagesRequest,
    example=MESSAGES_EXAMPLE,
    response=TokenCount,
)
async def handle_count_tokens(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = "messages.count_tokens"
    body = await read_json(request)
    messages_format.validate_count(body)
    resolve_model(ctx, body)
    return await json_endpoint(ctx, lambda ctx: _count(body))


async def _count(body: dict[str, Any]) -> dict[str, Any]:
    return messages_format.count_tokens(body)


@operation("List models", tag="models", response=ModelList)
async def list_models(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = MODELS_LIST
    return await json_endpoint(ctx, _model_list)


@operation("Retrieve a model", tag="models", response=Model)
async def retrieve_model(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = MODELS_RETRIEVE
    ctx.model = request.match_info["model_id"]
    return await json_endpoint(ctx, _one_model)


@operation("Health check", tag="operations", response=Health)
async def health(request: web.Request) -> web.Response:
    request[ctx_key].endpoint = HEALTH
    return json_response({"status": "ok"})


@operation("Gateway info", tag="operations", response=Info)
async def info(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = INFO
    return await json_endpoint(ctx, _info)


async def _model_list(ctx: RequestContext) -> dict[str, Any]:
    return {"object": "list", "data": await all_models(ctx.generation)}


async def _one_model(ctx: RequestContext) -> dict[str, Any]:
    for model in await all_models(ctx.generation):
        if model["id"] == ctx.model:
            return model
    raise ModelNotFoundError(ctx.model or "")


async def all_models(generation: Generation) -> list[dict[str, Any]]:
    """Every model the ``models`` table serves: exact names and aliases as they are, patterns expanded
    from the lists of their deployments' backends (under its prefix for a provider wildcard such as
    ``openai/*``, whose backends list their own names). A backend that fails to list, or takes longer than
    ``LISTING_TIMEOUT`` seconds, is logged and skipped."""
    routes, backends = generation.config.models, generation.backends
    listed = [(route, backends[t.backend]) for route in routes if route.is_pattern for t in route.targets]
    listings = await asyncio.gather(*(_listing(backend) for _, backend in listed), return_exceptions=True)
    found: dict[str, dict[str, Any]] = {}
    for route in routes:
        if not route.is_pattern:
            owned_by = backends[route.targets[0].backend].owned_by
            for name in (route.name, *route.aliases):
                found.setdefault(name, model_object(name, owned_by))
    for (route, backend), listing in zip(listed, listings, strict=True):
        if isinstance(listing, BaseException):
            structlog.get_logger("gateway").warning("listing models failed", backend=backend.name, error=str(listing))
            continue
        prefix = route.prefix
        for model in listing:
            if prefix is not None:  # a provider wildcard lists its backends' models under its prefix
                found.setdefault(prefix + model["id"], {**model, "id": prefix + model["id"]})
            elif fnmatchcase(model["id"], route.name):
                found.setdefault(model["id"], model)
    return list(found.values())


async def _listing(backend: Backend) -> list[dict[str, Any]]:
    """``backend.list_models()`` within ``LISTING_TIMEOUT`` seconds: a backend that hangs must not
    hold ``/v1/models`` for everyone."""
    try:
        return await asyncio.wait_for(backend.list_models(), LISTING_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(f"no answer within {LISTING_TIMEOUT:g} seconds") from None


async def _info(ctx: RequestContext) -> dict[str, Any]:
    generation = ctx.generation
    config = generation.config
    return {
        "name": NAME,
        "version": __version__,
        "config_generation": generation.number,
        "plugins": describe(generation.pm),
        "backends": [backend.describe() for backend in generation.backends.values()],
        "models": [route.model_dump(exclude_defaults=True) for route in config.models],
        "default_model": config.default_model,
        "state": ctx.state_store.describe(),
        **config.info,
    }
