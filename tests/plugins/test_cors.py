"""The ``cors`` plugin: headers on JSON, streaming and error responses, preflight, origin lists
(comma strings and the ``${ALLOW_ORIGINS:-*}`` default config), off switch, config validation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.testing import MOCK_MODEL, mock_config

ROOT = Path(__file__).parents[2]
DEFAULT_CONFIG = ROOT / "config" / "gateway.yaml"
ORIGIN = "http://localhost:5173"
ACAO = "Access-Control-Allow-Origin"
CHAT = {"model": MOCK_MODEL, "messages": [{"role": "user", "content": "hello there"}]}


def with_cors(**cors: Any) -> dict[str, Any]:
    return {**mock_config(), "plugins": {"cors": cors}}


def header_set(value: str | None) -> set[str]:
    return {part.strip().lower() for part in (value or "").split(",") if part.strip()}


# The default policy (any origin) ----------------------------------------------------------------


async def test_json_response_allows_the_origin(gateway: Any) -> None:
    client = await gateway()
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert response.status == 200
    assert response.headers.get(ACAO) == ORIGIN
    assert "Access-Control-Allow-Credentials" not in response.headers
    # scripts may read the request id
    assert "x-request-id" in header_set(response.headers.get("Access-Control-Expose-Headers"))
    assert (await response.json())["choices"][0]["message"]["content"] == "hello there"


async def test_no_origin_no_cors_headers(gateway: Any) -> None:
    client = await gateway()
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    assert ACAO not in response.headers


async def test_streaming_response_allows_the_origin(gateway: Any) -> None:
    client = await gateway()
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers={"Origin": ORIGIN})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers.get(ACAO) == ORIGIN
    body = await response.read()
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"hello "' in body


async def test_error_responses_allow_the_origin(gateway: Any) -> None:
    client = await gateway()
    unknown = await client.post(
        "/v1/chat/completions", json={**CHAT, "model": "no-such-model"}, headers={"Origin": ORIGIN}
    )
    assert unknown.status == 404
    assert unknown.headers.get(ACAO) == ORIGIN
    assert (await unknown.json())["error"]["code"] == "model_not_found"

    invalid = await client.post("/v1/chat/completions", json={**CHAT, "temperature": 5}, headers={"Origin": ORIGIN})
    assert invalid.status == 400
    assert invalid.headers.get(ACAO) == ORIGIN
    assert (await invalid.json())["error"]["param"] == "temperature"

    not_json = await client.post("/v1/chat/completions", data=b"{nope", headers={"Origin": ORIGIN})
    assert not_json.status == 400
    assert not_json.headers.get(ACAO) == ORIGIN


async def test_upstream_error_allows_the_origin(gateway: Any) -> None:
    client = await gateway({**mock_config(failure={"mode": "error", "status": 503})})
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert response.status == 502
    assert response.headers.get(ACAO) == ORIGIN


async def test_other_routes_allow_the_origin(gateway: Any) -> None:
    client = await gateway()
    for path in ("/v1/models", f"/v1/models/{MOCK_MODEL}", "/models", "/health", "/chat/completions"):
        method = client.post if path.endswith("completions") else client.get
        kwargs: dict[str, Any] = {"json": CHAT} if path.endswith("completions") else {}
        response = await method(path, headers={"Origin": ORIGIN}, **kwargs)
        assert response.status == 200, path
        assert response.headers.get(ACAO) == ORIGIN, path


async def test_preflight(gateway: Any) -> None:
    client = await gateway()
    response = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert response.status == 200
    assert response.headers.get(ACAO) == ORIGIN
    assert "post" in header_set(response.headers.get("Access-Control-Allow-Methods"))
    assert {"authorization", "content-type"} <= header_set(response.headers.get("Access-Control-Allow-Headers"))


async def test_preflight_of_the_unprefixed_path(gateway: Any) -> None:
    client = await gateway()
    response = await client.options(
        "/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status == 200
    assert response.headers.get(ACAO) == ORIGIN


async def test_max_age_and_credentials(gateway: Any) -> None:
    client = await gateway(with_cors(allow_origins=[ORIGIN], allow_credentials=True, max_age=600))
    preflight = await client.options(
        "/v1/chat/completions",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status == 200
    assert preflight.headers.get("Access-Control-Max-Age") == "600"
    assert preflight.headers.get("Access-Control-Allow-Credentials") == "true"
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert response.headers.get(ACAO) == ORIGIN
    assert response.headers.get("Access-Control-Allow-Credentials") == "true"


# Origin lists -----------------------------------------------------------------------------------


async def test_comma_separated_origins(gateway: Any) -> None:
    client = await gateway(with_cors(allow_origins="http://a.example, http://b.example"))
    for origin in ("http://a.example", "http://b.example"):
        response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin})
        assert response.status == 200
        assert response.headers.get(ACAO) == origin
    evil = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"})
    assert evil.status == 200  # CORS does not refuse the request; the browser hides the answer
    assert ACAO not in evil.headers


async def test_preflight_from_a_disallowed_origin_is_refused(gateway: Any) -> None:
    client = await gateway(with_cors(allow_origins=["http://a.example"]))
    response = await client.options(
        "/v1/chat/completions",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 403
    assert ACAO not in response.headers


async def test_empty_origin_list_turns_cors_off(gateway: Any) -> None:
    client = await gateway(with_cors(allow_origins=[]))
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": ORIGIN})
    assert response.status == 200
    assert ACAO not in response.headers
    preflight = await client.options(
        "/v1/chat/completions", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
    )
    assert ACAO not in preflight.headers


async def test_default_config_reads_allow_origins_from_the_environment(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALLOW_ORIGINS", "http://x.example")
    client = await aiohttp_client(create_app(DEFAULT_CONFIG))
    body = {"model": "default", "messages": [{"role": "user", "content": "hi"}]}
    allowed = await client.post("/v1/chat/completions", json=body, headers={"Origin": "http://x.example"})
    assert allowed.status == 200
    assert allowed.headers.get(ACAO) == "http://x.example"
    other = await client.post("/v1/chat/completions", json=body, headers={"Origin": ORIGIN})
    assert other.status == 200
    assert ACAO not in other.headers


async def test_default_config_allows_any_origin_without_the_variable(
    aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ALLOW_ORIGINS", raising=False)
    client = await aiohttp_client(create_app(DEFAULT_CONFIG))
    response = await client.get("/v1/models", headers={"Origin": "http://anything.example"})
    assert response.headers.get(ACAO) == "http://anything.example"


# Config validation ------------------------------------------------------------------------------


def test_negative_max_age_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        create_app(with_cors(max_age=-1))
    assert "plugins.cors.max_age" in str(info.value)
    assert any(path == "plugins.cors.max_age" for path, _ in info.value.problems)


def test_unknown_cors_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        create_app(with_cors(allow_origin=["http://a.example"]))
    assert "plugins.cors.allow_origin" in str(info.value)


def test_wrong_type_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        create_app(with_cors(allow_credentials="sometimes"))
    assert "plugins.cors.allow_credentials" in str(info.value)


async def test_unknown_url_and_wrong_method_errors_allow_the_origin(gateway: Any) -> None:
    """A browser must be able to read every error object, also for a mistyped path or method."""
    client = await gateway()
    unknown = await client.post("/v1/chat/completion", json=CHAT, headers={"Origin": ORIGIN})
    assert unknown.status == 404
    assert (await unknown.json())["error"]["code"] == "unknown_url"
    assert unknown.headers.get(ACAO) == ORIGIN
    wrong_method = await client.get("/v1/chat/completions", headers={"Origin": ORIGIN})
    assert wrong_method.status == 405
    assert (await wrong_method.json())["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers.get(ACAO) == ORIGIN


async def test_unknown_url_error_from_a_disallowed_origin_gets_no_cors_header(gateway: Any) -> None:
    client = await gateway(with_cors(allow_origins=["http://a.example"]))
    response = await client.post("/v1/chat/completion", json=CHAT, headers={"Origin": "http://evil.example"})
    assert response.status == 404
    assert ACAO not in response.headers


async def test_allow_origins_is_read_from_the_config_alone(gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ALLOW_ORIGINS`` counts only where the config interpolates it: with no cors section, any origin."""
    monkeypatch.setenv("ALLOW_ORIGINS", "http://only.example")
    client = await gateway()  # a config with no cors section
    for origin in ("http://only.example", "http://other.example"):
        response = await client.get("/v1/models", headers={"Origin": origin})
        assert response.headers.get(ACAO) == origin


async def test_requests_without_an_origin_skip_the_cors_work(gateway: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiohttp-cors's per-response work (a route lookup) runs only for browser requests: counted."""
    import aiohttp_cors.cors_config

    original = aiohttp_cors.cors_config._CorsConfigImpl._on_response_prepare
    calls = []

    async def counting(self: Any, request: Any, response: Any) -> None:
        calls.append(request.path)
        await original(self, request, response)

    monkeypatch.setattr(aiohttp_cors.cors_config._CorsConfigImpl, "_on_response_prepare", counting)
    client = await gateway()
    resp = await client.get("/health")
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    assert calls == []
    resp = await client.get("/health", headers={"Origin": "http://site.example"})
    assert resp.headers["Access-Control-Allow-Origin"] == "http://site.example"
    assert calls == ["/health"]
