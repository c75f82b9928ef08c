"""API documentation served by the gateway itself, with no internet: ``GET /openapi.json`` (built
from the router and the request models, see ``gateway.openapi``), ``GET /docs`` (Swagger UI, its
assets from the swagger-ui-py package) and ``GET /docs/websocket`` (streaming is SSE, not WebSockets).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import orjson
from aiohttp import web
from pydantic import BaseModel

from gateway import __version__, hookimpl
from gateway.config import GatewayConfig
from gateway.endpoints import DOCS, OPENAPI
from gateway.errors import NotFoundError
from gateway.keys import ctx_key
from gateway.openapi import build_document, operation
from gateway.replies import json_response

TITLE = "llm-gateway"
DESCRIPTION = (
    "An OpenAI-compatible LLM gateway: point any OpenAI client at it. Streaming responses "
    '(`"stream": true`) are Server-Sent Events, not WebSockets: see `GET /docs/websocket`.'
)
#: The Swagger UI files the page loads, served from /docs/assets/ (nothing else in the package is).
ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "application/javascript",
    "favicon-32x32.png": "image/png",
}
CACHE_CONTROL = "public, max-age=86400"
PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>llm-gateway API</title>
  <link rel="stylesheet" href="/docs/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/docs/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/docs/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
      layout: "BaseLayout"
    });
  </script>
</body>
</html>
"""


class WebSocketNote(BaseModel):
    """Why there is no WebSocket endpoint, and how to stream instead."""

    websockets: bool
    streaming: str
    how: str
    content_type: str


WEBSOCKET_NOTE = {
    "websockets": False,
    "streaming": "Server-Sent Events",
    "how": 'POST /v1/chat/completions with "stream": true; the response is a text/event-stream of '
    "`data: {chat.completion.chunk}` events ending with `data: [DONE]`. Every OpenAI SDK reads it "
    "with stream=True.",
    "content_type": "text/event-stream",
}


@functools.cache
def read_asset(path: Path) -> bytes:
    """A Swagger UI file, read once per process."""
    return path.read_bytes()


def swagger_ui_dir() -> Path:
    """The swagger-ui-py package's static files (found without importing the package)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Add ``/openapi.json``, ``/docs``, ``/docs/websocket`` and the page's assets."""
    assets = swagger_ui_dir()
    document: list[bytes] = []  # built on first use, when every plugin has added its routes

    @operation("The OpenAPI document of this gateway", tag="docs", content_type="application/json")
    async def openapi_json(request: web.Request) -> web.Response:
        ctx = request[ctx_key]
        ctx.endpoint = OPENAPI
        if not document:
            built = build_document(request.app.router, title=TITLE, version=__version__, description=DESCRIPTION)
            document.append(orjson.dumps(built))
        built = orjson.loads(document[0])  # a copy per request: plugins mark it for this config
        await ctx.generation.hooks.call_all("gateway_process_response", ctx=ctx, response=built)
        return json_response(built)

    @operation("Swagger UI: browse and try the API", tag="docs", content_type="text/html")
    async def docs_page(request: web.Request) -> web.Response:
        request[ctx_key].endpoint = DOCS
        return web.Response(text=PAGE, content_type="text/html")

    @operation("A file of the Swagger UI page", hidden=True)
    async def docs_asset(request: web.Request) -> web.StreamResponse:
        ctx = request[ctx_key]
        ctx.endpoint = DOCS
        name = request.match_info["name"]
        if name not in ASSETS:
            raise NotFoundError(f"Unknown documentation asset: {name!r}.")
        return web.Response(
            body=read_asset(assets / name), headers={"Content-Type": ASSETS[name], "Cache-Control": CACHE_CONTROL}
        )

    @operation("Streaming uses Server-Sent Events, not WebSockets", tag="docs", response=WebSocketNote)
    async def websocket_note(request: web.Request) -> web.Response:
        request[ctx_key].endpoint = DOCS
        return json_response(WEBSOCKET_NOTE)

    router = app.router
    router.add_get("/openapi.json", openapi_json)
    router.add_get("/docs", docs_page)
    router.add_get("/docs/websocket", websocket_note)
    router.add_get("/docs/assets/{name}", docs_asset)
