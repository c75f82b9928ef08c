"""Thin HTTP handlers: each names its endpoint on the context and hands over to the pipeline."""

from __future__ import annotations

import asyncio
from fnmatch import fnmatchcase
from typing import Any

import structlog
from aiohttp import web

from gateway import __version__
from gateway.api_models import (
    ChatCompletion,
    ChatCompletionChunk,
    EmbeddingList,
    Health,
    Info,
    Model,
    ModelList,
    TextCompletion,
)
from gateway.backend import model_object
from gateway.context import RequestContext
from gateway.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from gateway.errors import ModelNotFoundError
from gateway.keys import backends_key, config_key, ctx_key, plugin_manager_key
from gateway.middleware import json_response
from gateway.openapi import operation
from gateway.pipeline import json_endpoint, model_endpoint
from gateway.plugin_manager import describe
from gateway.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

NAME = "llm-gateway"


def setup_routes(app: web.Application) -> None:
    """The core routes; ``/v1`` paths also answer without the prefix (seed clients use both)."""
    router = app.router
    for prefix in ("/v1", ""):
        router.add_post(f"{prefix}/chat/completions", handle_chat_completions)
        router.add_post(f"{prefix}/completions", handle_completions)
        router.add_post(f"{prefix}/embeddings", handle_embeddings)
        router.add_get(f"{prefix}/models", list_models)
        router.add_get(f"{prefix}/models/{{model_id:.+}}", retrieve_model)
    router.add_get("/", health)
    router.add_get("/health", health)
    router.add_get("/info", info)


@operation(
    "Create a chat completion",
    tag="chat",
    request=ChatCompletionRequest,
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
    response=TextCompletion,
    stream=TextCompletion,
    description="OpenAI's legacy text completions, for backends that serve them; they stream like chat completions.",
)
async def handle_completions(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], COMPLETIONS)


@operation("Create embeddings", tag="embeddings", request=EmbeddingRequest, response=EmbeddingList)
async def handle_embeddings(request: web.Request) -> web.StreamResponse:
    return await model_endpoint(request[ctx_key], EMBEDDINGS)


@operation("List models", tag="models", response=ModelList)
async def list_models(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = "models.list"
    return await json_endpoint(ctx, _model_list)


@operation("Retrieve a model", tag="models", response=Model)
async def retrieve_model(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = "models.retrieve"
    ctx.model = request.match_info["model_id"]
    return await json_endpoint(ctx, _one_model)


@operation("Health check", tag="operations", response=Health)
async def health(request: web.Request) -> web.Response:
    request[ctx_key].endpoint = "health"
    return json_response({"status": "ok"})


@operation("Gateway info", tag="operations", response=Info)
async def info(request: web.Request) -> web.Response:
    ctx = request[ctx_key]
    ctx.endpoint = "info"
    return await json_endpoint(ctx, _info)


async def _model_list(ctx: RequestContext) -> dict[str, Any]:
    return {"object": "list", "data": await all_models(ctx.request.app)}


async def _one_model(ctx: RequestContext) -> dict[str, Any]:
    for model in await all_models(ctx.request.app):
        if model["id"] == ctx.model:
            return model
    raise ModelNotFoundError(ctx.model or "")


async def all_models(app: web.Application) -> list[dict[str, Any]]:
    """Every model the ``models`` table serves: exact names as they are, patterns expanded from
    their backend's list. A backend that fails to list is logged and skipped."""
    config, backends = app[config_key], app[backends_key]
    patterns = [r for r in config.models if _is_pattern(r.name)]
    listings = await asyncio.gather(*(backends[r.backend].list_models() for r in patterns), return_exceptions=True)
    found: dict[str, dict[str, Any]] = {}
    for route in config.models:
        if not _is_pattern(route.name):
            found.setdefault(route.name, model_object(route.name, backends[route.backend].owned_by))
    for route, listing in zip(patterns, listings, strict=True):
        if isinstance(listing, BaseException):
            structlog.get_logger("gateway").warning("listing models failed", backend=route.backend, error=str(listing))
            continue
        for model in listing:
            if fnmatchcase(model["id"], route.name):
                found.setdefault(model["id"], model)
    return list(found.values())


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


async def _info(ctx: RequestContext) -> dict[str, Any]:
    app = ctx.request.app
    config = app[config_key]
    return {
        "name": NAME,
        "version": __version__,
        "plugins": describe(app[plugin_manager_key]),
        "backends": [backend.describe() for backend in app[backends_key].values()],
        "models": [route.model_dump(exclude_none=True) for route in config.models],
        "default_model": config.default_model,
        **config.info,
    }
