"""The docs plugin: /openapi.json, the Swagger UI page and its assets served by the gateway itself
(no external URL anywhere), and the WebSocket note."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from gateway.testing import make_app, mock_config
from tests.gateway.test_openapi import ALIASES

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


DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "gateway.yaml"


async def test_every_try_it_out_example_succeeds_unchanged_against_the_default_config(aiohttp_client: Any) -> None:
    client = await aiohttp_client(make_app(DEFAULT_CONFIG))
    doc = await (await client.get("/openapi.json")).json()
    sent = []
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            if "requestBody" not in op:
                continue
            example = op["requestBody"]["content"]["application/json"]["example"]
            response = await client.request(method, path, json=example)
            assert response.status == 200, (path, await response.text())
            sent.append(path)
    assert sorted(sent) == [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/responses",
    ]


async def test_the_unprefixed_aliases_are_served_but_not_listed(gateway: Any) -> None:
    client = await gateway()
    paths = (await (await client.get("/openapi.json")).json())["paths"]
    for alias in ALIASES:
        assert alias not in paths
    assert "/health" in paths and "/v1/models/{model_id}" in paths
    assert (await client.get("/models")).status == 200


def locks(doc: dict[str, Any]) -> dict[str, Any]:
    return {
        f"{method} {path}": op["security"]
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "security" in op
    }


async def test_no_lock_icon_without_keys(gateway: Any) -> None:
    doc = await (await (await gateway()).get("/openapi.json")).json()
    assert locks(doc) == {} and "security" not in doc and "securitySchemes" not in doc["components"]


@pytest.mark.parametrize("mode", ["required", "optional"])
async def test_the_lock_icon_is_on_the_routes_that_need_a_key(gateway: Any, mode: str) -> None:
    keys = {"mode": mode, "keys": [{"name": "a", "key": "sk-a-0123456789"}]}
    client = await gateway({**mock_config(), "plugins": {"auth_api_keys": keys}})
    doc = await (await client.get("/openapi.json")).json()
    validate(doc)
    found = locks(doc)
    api = [{"bearer": []}] if mode == "required" else [{}, {"bearer": []}]
    assert found.pop("post /v1/chat/completions") == found.pop("get /v1/models") == api
    assert found.pop("get /info") == found.pop("get /metrics") == [{"bearer": []}]  # protect: a key in every mode
    assert all(name.split()[1].startswith("/v1/") for name in found)  # the rest of the API, nothing else
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for open_path in ("/health", "/docs", "/openapi.json"):
        assert "security" not in doc["paths"][open_path]["get"]
