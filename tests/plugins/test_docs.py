"""The docs plugin: /openapi.json, the Swagger UI page and its assets served by the gateway itself
(no external URL anywhere), and the WebSocket note."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate

from gateway.testing import mock_config

ASSET_TYPES = {".css": "text/css", ".js": "application/javascript", ".png": "image/png"}


async def test_openapi_json_is_valid_and_lists_the_plugins_routes(gateway: Any) -> None:
    client = await gateway()
    response = await client.get("/openapi.json")
    assert response.status == 200
    assert response.content_type == "application/json"
    doc = await response.json()
    validate(doc)
    assert {"/v1/chat/completions", "/metrics", "/docs", "/docs/websocket", "/openapi.json"} <= set(doc["paths"])
    assert not any(path.startswith("/docs/assets") for path in doc["paths"])
    assert (await (await client.get("/openapi.json")).json()) == doc  # built once, served again


async def test_the_swagger_page_and_its_assets_come_from_the_gateway(gateway: Any) -> None:
    client = await gateway()
    response = await client.get("/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    html = await response.text()
    assert not re.search(r"https?:|//[a-z]", html, re.I)  # nothing from the internet
    assert 'url: "/openapi.json"' in html
    links = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(links) == 3
    for link in links:
        asset = await client.get(link)
        assert asset.status == 200, link
        assert asset.content_type == ASSET_TYPES[link[link.rindex(".") :]]
        assert len(await asset.read()) > 500
    bundle = await (await client.get("/docs/assets/swagger-ui-bundle.js")).text()
    assert "SwaggerUIBundle" in bundle


async def test_only_the_pages_assets_are_served(gateway: Any) -> None:
    client = await gateway()
    for name in ("swagger-editor-bundle.js", "..%2F__init__.py", "index.css"):
        response = await client.get(f"/docs/assets/{name}")
        assert response.status == 404
        assert (await response.json())["error"]["type"] == "invalid_request_error"


async def test_websocket_note_says_streaming_is_sse(gateway: Any) -> None:
    client = await gateway()
    response = await client.get("/docs/websocket")
    assert response.status == 200
    note = await response.json()
    assert note["websockets"] is False
    assert note["content_type"] == "text/event-stream"
    assert "data: [DONE]" in note["how"]


async def test_disabled_plugin_serves_no_docs(gateway: Any) -> None:
    client = await gateway({**mock_config(), "plugins": {"disabled": ["docs"]}})
    for path in ("/docs", "/openapi.json", "/docs/websocket"):
        assert (await client.get(path)).status == 404
