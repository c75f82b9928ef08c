"""What every HTTP backend's config says about its upstream (``gateway.upstream.Credential``,
``HeaderValue``, ``Url``, ``BaseUrl``): a key read with its file's newline works; a header value that
cannot be sent, or a URL that cannot be called, fails at start-up instead of failing every request."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError
from gateway.testing import make_app
from tests.plugins.backends.test_openai_compat import KEY, chat, compat_config
from tests.upstreams.openai import OpenAIUpstream

BACKENDS = {
    "openai_compat": {"type": "openai_compat", "base_url": "http://127.0.0.1:1/v1"},
    "anthropic": {"type": "anthropic"},
    "sourcegraph": {"type": "sourcegraph", "endpoint": "http://127.0.0.1:1"},
    "http_template": {"type": "http_template", "url": "http://127.0.0.1:1/chat", "response": {"text": "reply"}},
}
KEY_FIELD = {"sourcegraph": "access_token"}
URL_FIELD = {"openai_compat": "base_url", "anthropic": "base_url", "sourcegraph": "endpoint", "http_template": "url"}


def backend_config(kind: str, **options: Any) -> dict[str, Any]:
    backend = {"name": "b", **BACKENDS[kind], KEY_FIELD.get(kind, "api_key"): "k-1234567890", **options}
    return {"backends": [backend], "models": [{"name": "m", "backend": "b"}]}


async def test_a_key_with_its_files_newline_is_sent_without_it(aiohttp_server: Any, gateway: Any) -> None:
    upstream = OpenAIUpstream()
    base_url = str((await aiohttp_server(upstream.app)).make_url("/v1"))
    client = await gateway(compat_config(base_url, api_key=f" {KEY}\r\n"))
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200, await resp.text()
    assert upstream.last.headers["Authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize("kind", ["openai_compat", "anthropic", "http_template"])
def test_a_header_with_a_line_break_fails_at_start_up_without_showing_it(kind: str) -> None:
    with pytest.raises(ConfigError) as raised:
        make_app(backend_config(kind, headers={"X-Api-Key": "secret-value\r\nX-Injected: 1"}))
    message = str(raised.value)
    assert "backends[0].headers.X-Api-Key" in message and "control characters" in message
    assert "secret-value" not in message


@pytest.mark.parametrize("kind", sorted(BACKENDS))
def test_a_key_with_a_line_break_inside_fails_at_start_up_without_showing_it(kind: str) -> None:
    field = KEY_FIELD.get(kind, "api_key")
    with pytest.raises(ConfigError) as raised:
        make_app(backend_config(kind, **{field: "secret-one\nsecret-two"}))
    message = str(raised.value)
    assert f"backends[0].{field}" in message and "secret-one" not in message


@pytest.mark.parametrize("kind", sorted(BACKENDS))
@pytest.mark.parametrize("url", ["https://", "https:///v1", "ftp://example.com", "http://example.com:99999"])
def test_a_url_without_a_host_fails_at_start_up(kind: str, url: str) -> None:
    with pytest.raises(ConfigError, match=rf"backends\[0\]\.{URL_FIELD[kind]}: "):
        make_app(backend_config(kind, **{URL_FIELD[kind]: url}))


@pytest.mark.parametrize("kind", ["openai_compat", "anthropic", "sourcegraph"])
def test_an_api_root_with_a_query_fails_at_start_up(kind: str) -> None:
    """Paths are appended to it: Azure's ``?api-version=`` belongs in ``api_version``."""
    with pytest.raises(ConfigError, match="no query or fragment"):
        make_app(backend_config(kind, **{URL_FIELD[kind]: "https://example.com/openai?api-version=2024-10-21"}))


def test_a_custom_apis_url_keeps_its_query() -> None:
    make_app(backend_config("http_template", url="https://example.com/chat?key=abc"))  # raises if refused


async def test_a_key_in_a_urls_query_shows_neither_in_info_nor_in_errors(aiohttp_server: Any, gateway: Any) -> None:
    """Google's APIs take ``?key=``: /info and an upstream echoing the URL must not show it."""
    from aiohttp import web

    secret = "AIzaSy-not-for-clients-123"

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"API key not valid for {request.url}"}}, status=400)

    app = web.Application()
    app.router.add_post("/v1/models/gemini:generateContent", echo)
    url = str((await aiohttp_server(app)).make_url("/v1/models/gemini:generateContent")) + f"?alt=json&key={secret}"
    client = await gateway(backend_config("http_template", url=url, api_key=None))
    info = await (await client.get("/info")).text()
    assert secret not in info and "alt=json&key=" in info
    resp = await client.post(
        "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "Hi"}]}
    )
    message = (await resp.json())["error"]["message"]
    assert resp.status == 400 and "API key not valid" in message and secret not in message
