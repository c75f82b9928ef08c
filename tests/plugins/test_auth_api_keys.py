"""The ``auth_api_keys`` plugin through the HTTP API: credentials in every accepted form, OpenAI's
401/403/404 errors (raw and through the openai SDK), allowlists on chat and on /v1/models, the three
modes (passthrough against a real upstream), protected and open paths, CORS preflights, the
principal for later plugins, keys kept out of logs and /info, and config validation."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI, OpenAI

from gateway import hookimpl
from gateway.config import ConfigError
from gateway.context import RequestContext
from gateway.keys import ctx_key, generations_key
from gateway.limits import Limits
from gateway.loading import load
from gateway.log import setup_logging
from gateway.testing import MOCK_MODEL, Finished, ServerThread, make_app, mock_config
from tests.upstreams.openai import OpenAIUpstream

LARGE = "mock-gpt-large"
# Keys the log redactor would not recognise (no `sk-` prefix): only the plugin keeps them out of logs.
ADMIN_KEY = "gw-admin-7f3a9c2e5b1d4a6f"
TEAM_KEY = "gw-team-4e8b1a6c0d2f9e3b"
WRONG_KEY = "gw-wrong-0a1b2c3d4e5f6789"
SEED_KEY = "your_api_key_here"  # what seed 002's clients send, as `beareryour_api_key_here`
UPSTREAM_KEY = "sk-upstream-own-key-1234567890"
CLIENT_KEY = "sk-client-own-key-0987654321"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
CHAT = {"model": MOCK_MODEL, "messages": MESSAGES}
MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key header. "
    "You can obtain an API key from the administrator of this gateway."
)
TIMEOUT = 10.0


def keys_config(**section: Any) -> dict[str, Any]:
    """The mock backend serving mock-gpt-model and mock-gpt-large; ``admin`` may use both, ``team``
    only ``mock-gpt-m*`` (mock-gpt-model)."""
    section.setdefault(
        "keys",
        [
            {"name": "admin", "key": ADMIN_KEY},
            {"name": "team", "key": TEAM_KEY, "models": ["mock-gpt-m*"], "metadata": {"team": "search"}},
        ],
    )
    return {**mock_config(models=(MOCK_MODEL, LARGE)), "plugins": {"auth_api_keys": section}}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Spy:
    """A later plugin: what ``gateway_process_request`` sees of the caller."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, str | None]] = []
        self.limits: Limits | None = None

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        principal = ctx.principal
        self.seen.append(((principal.name, principal.metadata) if principal else None, ctx.client_key))
        self.limits = principal.limits if principal else None


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


# Credentials ----------------------------------------------------------------------------------


async def test_a_request_without_a_key_is_401_with_openais_message(gateway: Any) -> None:
    client = await gateway(keys_config())
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 401
    error = error_of(await response.json())
    assert error == {"message": MISSING, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}


async def test_a_wrong_key_is_401_showing_only_its_ends(gateway: Any) -> None:
    client = await gateway(keys_config())
    response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(WRONG_KEY))
    assert response.status == 401
    text = await response.text()
    error = error_of(json.loads(text))
    assert error["code"] == "invalid_api_key"
    assert error["message"] == (
        "Incorrect API key provided: gw-***789. You can obtain an API key from the administrator of this gateway."
    )
    assert WRONG_KEY not in text
    short = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("abc12"))
    assert error_of(await short.json())["message"].startswith("Incorrect API key provided: ***.")


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {ADMIN_KEY}"},
        {"Authorization": f"bearer {ADMIN_KEY}"},
        {"Authorization": f"BEARER {ADMIN_KEY}"},
        {"Authorization": f"Bearer   {ADMIN_KEY}  "},
        {"Authorization": f"bearer{ADMIN_KEY}"},  # seed 002's clients: no space after the scheme
        {"x-api-key": ADMIN_KEY},
        {"X-Api-Key": ADMIN_KEY},
    ],
    ids=["Bearer", "bearer", "BEARER", "spaces", "no-space", "x-api-key", "X-Api-Key"],
)
async def test_every_accepted_credential_form(gateway: Any, headers: dict[str, str]) -> None:
    spy = Spy()
    client = await gateway(keys_config(), [spy])
    response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status == 200, await response.text()
    assert (await response.json())["choices"][0]["message"]["content"] == "hello there"
    assert spy.seen == [(("admin", {}), None)]  # the gateway key is taken off ctx.client_key


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Basic {ADMIN_KEY}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Token {ADMIN_KEY}"},
        {"x-api-key": ""},
    ],
    ids=["basic", "empty-bearer", "token-scheme", "empty-x-api-key"],
)
async def test_other_credential_forms_are_missing_keys(gateway: Any, headers: dict[str, str]) -> None:
    client = await gateway(keys_config())
    response = await client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status == 401
    assert error_of(await response.json())["message"] == MISSING


async def test_a_key_configured_by_its_sha256_only(gateway: Any) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest().upper()
    client = await gateway(keys_config(keys=[{"name": "hashed", "sha256": digest}]))
    for _ in range(2):  # the second time from the keys already found
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_KEY))).status == 200
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(digest))).status == 401
        near = ADMIN_KEY[:-1] + ("0" if ADMIN_KEY[-1] != "0" else "1")
        assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(near))).status == 401


async def test_a_stream_needs_a_key_too(gateway: Any) -> None:
    client = await gateway(keys_config())
    body = {**CHAT, "stream": True}
    refused = await client.post("/v1/chat/completions", json=body)
    assert refused.status == 401
    assert refused.headers["Content-Type"].startswith("application/json")
    streamed = await client.post("/v1/chat/completions", json=body, headers=bearer(TEAM_KEY))
    assert streamed.status == 200
    assert (await streamed.read()).endswith(b"data: [DONE]\n\n")


# Later plugins see the caller ------------------------------------------------------------------


async def test_the_principal_carries_name_metadata_and_limits(gateway: Any) -> None:
    spy = Spy()
    keys = [
        {"name": "team", "key": TEAM_KEY, "metadata": {"team": "search", "tier": 2}, "limits": {"tokens_per_minute": 9}}
    ]
    client = await gateway(keys_config(keys=keys), [spy])
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200
    assert spy.seen == [(("team", {"team": "search", "tier": 2}), None)]
    assert spy.limits == Limits(tokens_per_minute=9)


# Allowlists -------------------------------------------------------------------------------------


async def test_a_model_outside_the_allowlist_is_403(gateway: Any) -> None:
    spy = Spy()
    client = await gateway(keys_config(), [spy])
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    assert response.status == 403
    error = error_of(await response.json())
    assert error["message"] == f"The API key `team` is not allowed to use the model `{LARGE}`."
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "model"
    assert error["code"] == "permission_denied"
    assert spy.seen == []  # refused before any pre-processing
    admin = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(ADMIN_KEY))
    assert admin.status == 200
    # the model `default` is checked as the model it stands for
    default = await client.post("/v1/chat/completions", json={**CHAT, "model": "default"}, headers=bearer(TEAM_KEY))
    assert default.status == 200


async def test_hidden_models_are_404_like_models_that_do_not_exist(gateway: Any) -> None:
    client = await gateway(keys_config(hide_forbidden_models=True))
    hidden = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    absent = await client.post("/v1/chat/completions", json={**CHAT, "model": "no-such"}, headers=bearer(TEAM_KEY))
    assert hidden.status == absent.status == 404
    hidden_error, absent_error = error_of(await hidden.json()), error_of(await absent.json())
    assert hidden_error["code"] == absent_error["code"] == "model_not_found"
    assert hidden_error["message"] == absent_error["message"].replace("no-such", LARGE)


async def test_the_model_list_shows_only_what_the_key_may_use(gateway: Any) -> None:
    client = await gateway(keys_config())
    assert (await client.get("/v1/models")).status == 401
    team = await (await client.get("/v1/models", headers=bearer(TEAM_KEY))).json()
    admin = await (await client.get("/models", headers=bearer(ADMIN_KEY))).json()
    assert [m["id"] for m in team["data"]] == [MOCK_MODEL]
    assert [m["id"] for m in admin["data"]] == [MOCK_MODEL, LARGE]
    allowed = await client.get(f"/v1/models/{MOCK_MODEL}", headers=bearer(TEAM_KEY))
    assert allowed.status == 200
    assert (await allowed.json())["id"] == MOCK_MODEL
    forbidden = await client.get(f"/v1/models/{LARGE}", headers=bearer(TEAM_KEY))
    assert forbidden.status == 404
    assert error_of(await forbidden.json())["code"] == "model_not_found"
    assert (await client.get(f"/v1/models/{LARGE}", headers=bearer(ADMIN_KEY))).status == 200
    assert (await client.get(f"/v1/models/{LARGE}")).status == 401


async def test_the_model_list_shows_the_aliases_the_key_may_use_and_no_other(gateway: Any) -> None:
    """``transforms`` aliases are listed by what the key may use (the name the client asks for)."""
    config = keys_config(keys=[{"name": "team", "key": TEAM_KEY, "models": ["fast"]}])
    config["plugins"]["transforms"] = {"rules": [{"aliases": {"fast": LARGE, "slow": MOCK_MODEL}}]}
    client = await gateway(config)
    listed = await (await client.get("/v1/models", headers=bearer(TEAM_KEY))).json()
    assert [m["id"] for m in listed["data"]] == ["fast"]
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "fast"}, headers=bearer(TEAM_KEY))).ok
    slow = await client.post("/v1/chat/completions", json={**CHAT, "model": "slow"}, headers=bearer(TEAM_KEY))
    assert slow.status == 403


# Open and protected paths ----------------------------------------------------------------------


async def test_health_stays_open_and_info_is_protected_by_default(gateway: Any) -> None:
    client = await gateway(keys_config())
    for path in ("/", "/health"):
        response = await client.get(path)
        assert response.status == 200
        assert await response.json() == {"status": "ok"}
    refused = await client.get("/info")
    assert refused.status == 401
    assert error_of(await refused.json())["message"] == MISSING
    assert (await client.get("/info", headers=bearer(WRONG_KEY))).status == 401
    info = await client.get("/info", headers=bearer(TEAM_KEY))
    assert info.status == 200
    text = await info.text()
    assert ADMIN_KEY not in text and TEAM_KEY not in text
    assert "auth_api_keys" in {p["name"] for p in json.loads(text)["plugins"]}
    # /metrics (the metrics plugin's route) needs a key too
    assert (await client.get("/metrics")).status == 401
    metrics = await client.get("/metrics", headers=bearer(TEAM_KEY))
    assert metrics.status == 200 and metrics.content_type == "text/plain"


class StatsRoute:
    """A plugin serving ``GET /stats`` itself, without asking ``gateway_authenticate``."""

    @hookimpl
    def gateway_setup_app(self, app: web.Application) -> None:
        async def stats(request: web.Request) -> web.Response:
            principal = request[ctx_key].principal
            return web.json_response({"caller": principal.name if principal else None})

        app.router.add_get("/stats", stats)


async def test_protect_lists_the_guarded_paths(gateway: Any) -> None:
    client = await gateway(keys_config(protect=[]))
    assert (await client.get("/info")).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 401  # the API stays guarded


async def test_a_protected_path_is_guarded_whichever_plugin_serves_it(gateway: Any) -> None:
    client = await gateway(keys_config(protect=["/stats"]), [StatsRoute()])
    refused = await client.get("/stats")
    assert refused.status == 401
    assert error_of(await refused.json())["code"] == "invalid_api_key"
    assert await (await client.get("/stats", headers={"x-api-key": TEAM_KEY})).json() == {"caller": "team"}
    assert (await client.get("/info")).status == 200  # no longer in the list


async def test_protected_paths_need_a_configured_key_in_every_mode(gateway: Any, upstream: OpenAIUpstream) -> None:
    """Optional and passthrough modes let keyless or unknown callers use the API, not /info."""
    for config in (keys_config(mode="optional"), upstream_config(upstream, mode="passthrough")):
        client = await gateway(config)
        assert (await client.get("/info")).status == 401
        assert (await client.get("/info", headers=bearer(CLIENT_KEY))).status == 401
        assert (await client.get("/info", headers=bearer(ADMIN_KEY))).status == 200
    keyless = await gateway(upstream_config(upstream, mode="passthrough", keys=[]))  # nothing to check against
    assert (await keyless.get("/info")).status == 200


async def test_a_reload_changes_who_may_reach_protected_paths(aiohttp_client: Any) -> None:
    """A key revoked by a config reload loses /info at once, like the API; a key added gains it."""
    app = make_app(keys_config(keys=[{"name": "admin", "key": ADMIN_KEY}]))
    client: TestClient = await aiohttp_client(app)
    assert (await client.get("/info", headers=bearer(ADMIN_KEY))).status == 200
    assert await app[generations_key].reload(keys_config(keys=[{"name": "team", "key": TEAM_KEY}]))
    for path in ("/v1/models", "/info"):
        assert (await client.get(path, headers=bearer(ADMIN_KEY))).status == 401, path
        assert (await client.get(path, headers=bearer(TEAM_KEY))).status == 200, path
    assert await app[generations_key].reload(mock_config())  # no keys: auth is off, /info open
    assert (await client.get("/info")).status == 200


async def test_cors_preflights_need_no_key(gateway: Any) -> None:
    client = await gateway(keys_config())
    origin = "http://localhost:5173"
    for path in ("/v1/chat/completions", "/info"):
        preflight = await client.options(
            path,
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST" if "chat" in path else "GET",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert preflight.status == 200, (path, await preflight.text())
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
    refused = await client.post("/v1/chat/completions", json=CHAT, headers={"Origin": origin})
    assert refused.status == 401
    assert refused.headers["Access-Control-Allow-Origin"] == origin  # a browser can read the 401


# Modes ------------------------------------------------------------------------------------------


async def test_no_keys_means_no_auth(gateway: Any) -> None:
    spy = Spy()
    client = await gateway({**mock_config(), "plugins": {"auth_api_keys": {"hide_forbidden_models": True}}}, [spy])
    response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer("anything"))
    assert response.status == 200
    assert (await client.get("/info")).status == 200
    assert spy.seen == [(None, "anything"), (None, None)]  # the key stays for a backend to forward


async def test_optional_mode_lets_anonymous_callers_in_but_not_wrong_keys(gateway: Any) -> None:
    spy = Spy()
    client = await gateway(keys_config(mode="optional"), [spy])
    anonymous = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE})
    assert anonymous.status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(WRONG_KEY))).status == 401
    team = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    assert team.status == 403  # a key that is sent still has its allowlist
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200
    assert spy.seen == [(None, None), (("team", {"team": "search"}), None)]
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == [MOCK_MODEL, LARGE]


def upstream_config(upstream: OpenAIUpstream, **section: Any) -> dict[str, Any]:
    backend = {
        "name": "openai",
        "type": "openai_compat",
        "base_url": upstream.base_url,
        "api_key": UPSTREAM_KEY,
        "forward_client_key": True,
        "timeout": 5,
    }
    section.setdefault("keys", [{"name": "admin", "key": ADMIN_KEY, "models": ["gpt-4o*"]}])
    return {
        "backends": [backend],
        "models": [{"name": "*", "backend": "openai"}],
        "plugins": {"auth_api_keys": section},
    }


async def test_passthrough_hands_the_clients_key_to_the_upstream(gateway: Any, upstream: OpenAIUpstream) -> None:
    spy = Spy()
    client = await gateway(upstream_config(upstream, mode="passthrough"), [spy])
    body = {"model": "gpt-4o-mini", "messages": MESSAGES}
    for headers in (bearer(CLIENT_KEY), {"Authorization": f"bearer{CLIENT_KEY}"}, {"x-api-key": CLIENT_KEY}):
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status == 200, await response.text()
        assert upstream.last.headers["Authorization"] == f"Bearer {CLIENT_KEY}"
    # no key: the backend's own (seed 001: "Authorization: Bearer or environment variable")
    assert (await client.post("/v1/chat/completions", json=body)).status == 200
    assert upstream.last.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    # a configured key keeps its name and allowlist, and still goes upstream as it is
    assert (await client.post("/v1/chat/completions", json=body, headers=bearer(ADMIN_KEY))).status == 200
    assert upstream.last.headers["Authorization"] == f"Bearer {ADMIN_KEY}"
    refused = await client.post(
        "/v1/chat/completions", json={**body, "model": "text-embedding-3-small"}, headers=bearer(ADMIN_KEY)
    )
    assert refused.status == 403
    unknown = "passthrough-" + hashlib.sha256(CLIENT_KEY.encode()).hexdigest()[:8]
    assert spy.seen == [
        ((unknown, {}), CLIENT_KEY),
        ((unknown, {}), CLIENT_KEY),
        ((unknown, {}), CLIENT_KEY),
        (None, None),
        (("admin", {}), ADMIN_KEY),
    ]


async def test_required_mode_never_sends_the_gateway_key_upstream(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await gateway(upstream_config(upstream))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}
    for headers in (bearer(ADMIN_KEY), {"x-api-key": ADMIN_KEY}):
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status == 200
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
        assert upstream.last.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
        assert all(ADMIN_KEY not in value for value in upstream.last.headers.values())
    count = len(upstream.requests)
    assert (await client.post("/v1/chat/completions", json=body, headers=bearer(CLIENT_KEY))).status == 401
    assert len(upstream.requests) == count  # a refused request never reaches the upstream


# The official openai SDK ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = keys_config()
    config["plugins"]["auth_api_keys"]["keys"].append({"name": "seed", "key": SEED_KEY})
    with ServerThread(make_app(config)) as s:
        yield s


def sdk(server: ServerThread, key: str) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=TIMEOUT)


def test_sdk_raises_authentication_error_for_a_wrong_key(server: ServerThread) -> None:
    with sdk(server, WRONG_KEY) as client, pytest.raises(openai.AuthenticationError) as caught:
        client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert caught.value.status_code == 401
    assert caught.value.code == "invalid_api_key"
    assert WRONG_KEY not in str(caught.value)
    with sdk(server, WRONG_KEY) as client, pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_sdk_raises_permission_denied_for_a_forbidden_model(server: ServerThread) -> None:
    with sdk(server, TEAM_KEY) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            client.chat.completions.create(model=LARGE, messages=MESSAGES)
        assert caught.value.status_code == 403
        assert caught.value.param == "model"
        with pytest.raises(openai.PermissionDeniedError):
            client.chat.completions.create(model=LARGE, messages=MESSAGES, stream=True)
        reply = client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == "hello there"
        assert [m.id for m in client.models.list()] == [MOCK_MODEL]
        assert client.models.retrieve(MOCK_MODEL).id == MOCK_MODEL
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(LARGE)


def test_sdk_streams_with_a_valid_key(server: ServerThread) -> None:
    with sdk(server, ADMIN_KEY) as client:
        stream = client.chat.completions.create(model=LARGE, messages=MESSAGES, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "hello there"


def test_seed_002_client_as_written(server: ServerThread) -> None:
    """Seed 002's Python client sends ``Authorization: beareryour_api_key_here``; a gateway with that
    key accepts it as written (and refuses the same client without the key)."""

    def stream_chat_completion(model: str, messages: Any, authorization: str) -> Iterator[Any]:
        url = server.url + "/v1/chat/completions"
        headers = {"Content-Type": "application/json", "Authorization": authorization}
        data = {"model": model, "messages": messages, "stream": True}
        with requests.post(url, json=data, headers=headers, stream=True, timeout=TIMEOUT) as response:
            assert response.status_code == 200, response.text
            for line in response.iter_lines():
                if line:
                    decoded_line = line.decode("utf-8")
                    if decoded_line == "data: [DONE]":
                        break
                    elif decoded_line.startswith("data: "):
                        yield json.loads(decoded_line[6:])

    messages = [{"role": "user", "content": "Tell me a joke"}]
    chunks = list(stream_chat_completion("default", messages, "beareryour_api_key_here"))
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Tell me a joke"
    refused = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "default", "messages": messages, "stream": True},
        headers={"Authorization": "bearerother_key_here"},
        timeout=TIMEOUT,
    )
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "invalid_api_key"


async def test_async_sdk_sees_hidden_models_as_not_found(aiohttp_client: Any) -> None:
    http: TestClient = await aiohttp_client(make_app(keys_config(hide_forbidden_models=True)))
    async with AsyncOpenAI(
        base_url=str(http.make_url("/v1")), api_key=TEAM_KEY, max_retries=0, timeout=TIMEOUT
    ) as client:
        with pytest.raises(openai.NotFoundError) as caught:
            await client.chat.completions.create(model=LARGE, messages=MESSAGES)
        assert caught.value.code == "model_not_found"
        reply = await client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == "hello there"
        assert [m.id async for m in client.models.list()] == [MOCK_MODEL]
    async with AsyncOpenAI(base_url=str(http.make_url("/v1")), api_key=WRONG_KEY, max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as refused:
            await wrong.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
        assert refused.value.code == "invalid_api_key"


# Logs -------------------------------------------------------------------------------------------


async def test_keys_never_appear_in_logs_and_the_access_line_names_the_key(aiohttp_client: Any) -> None:
    buffer = io.BytesIO()
    setup_logging("json", "debug", stream=buffer)
    finished = Finished()
    client: TestClient = await aiohttp_client(make_app(keys_config(), plugins=[finished]))
    sent = [
        ("POST", "/v1/chat/completions", bearer(ADMIN_KEY), CHAT),
        ("POST", "/v1/chat/completions", {"x-api-key": TEAM_KEY}, {**CHAT, "stream": True}),
        ("POST", "/v1/chat/completions", {"Authorization": f"bearer{TEAM_KEY}"}, {**CHAT, "model": LARGE}),
        ("POST", "/v1/chat/completions", bearer(WRONG_KEY), CHAT),
        ("GET", "/v1/models", bearer(TEAM_KEY), None),
        ("GET", "/info", bearer(ADMIN_KEY), None),
        ("GET", "/info", {"x-api-key": WRONG_KEY}, None),
    ]
    for method, path, headers, body in sent:
        response = await client.request(method, path, headers=headers, json=body)
        await response.read()
    await finished.wait(len(sent))
    text = buffer.getvalue().decode()
    for key in (ADMIN_KEY, TEAM_KEY, WRONG_KEY):
        assert key not in text
    access = [line for line in map(json.loads, text.splitlines()) if line["event"] == "request"]
    assert [(line["status"], line.get("principal")) for line in access] == [
        (200, "admin"),
        (200, "team"),
        (403, "team"),
        (401, None),
        (200, "team"),
        (200, "admin"),
        (401, None),
    ]
    assert "gw-***789" in access[3]["error"]


# Config -----------------------------------------------------------------------------------------


def config_error(**section: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        load(keys_config(**section))
    return str(caught.value)


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"mode": "required", "keys": []}, "mode required needs at least one entry in `keys`"),
        ({"mode": "optional", "keys": []}, "mode optional needs at least one entry in `keys`"),
        ({"keys": [{"name": "a"}]}, "give exactly one of `key` and `sha256`"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY, "sha256": "0" * 64}]}, "give exactly one of `key` and `sha256`"),
        ({"keys": [{"name": "a", "key": ""}]}, "`key` is empty"),
        ({"keys": [{"name": "a", "sha256": "abc"}]}, "plugins.auth_api_keys.keys[0].sha256: String should match"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY, "models": []}]}, "keys[0].models"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY, "metadata": {"limits": 1}}]}, "`metadata.limits` is reserved"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY, "limits": {"requests_per_minute": 0}}]}, "requests_per_minute"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY, "secret": 1}]}, "keys[0].secret: unknown key"),
        ({"keys": [{"name": "a", "key": ADMIN_KEY}, {"name": "a", "key": TEAM_KEY}]}, "keys[1]: the name 'a' is taken"),
        (
            {"keys": [{"name": "a", "key": ADMIN_KEY}, {"name": "b", "key": ADMIN_KEY}]},
            "keys[1]: the same key as keys[0]",
        ),
        ({"protect": ["/health"]}, "'/health' cannot be protected"),
        ({"protect": ["info"]}, "'info' cannot be protected"),
        ({"mode": "passthrough", "keys": [], "protect": ["/info"]}, "protect needs at least one entry in `keys`"),
        ({"mode": "sometimes"}, "plugins.auth_api_keys.mode"),
        ({"header": "x"}, "plugins.auth_api_keys.header: unknown key"),
    ],
)
def test_config_problems_name_the_key_path_and_never_the_key(section: dict[str, Any], problem: str) -> None:
    message = config_error(**section)
    assert message.startswith("<config>: plugins.auth_api_keys")
    assert problem in message
    assert ADMIN_KEY not in message and TEAM_KEY not in message


def test_a_key_from_an_unset_variable_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GW_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"keys\[0\]\.key: environment variable GW_TEST_UNSET_KEY is not set"):
        load(keys_config(keys=[{"name": "a", "key": "${GW_TEST_UNSET_KEY}"}]))


def test_passthrough_needs_no_keys() -> None:
    settings = load(keys_config(mode="passthrough", keys=[])).config.plugin_config("auth_api_keys")
    assert settings.active and settings.mode == "passthrough"
    assert not load(mock_config()).config.plugin_config("auth_api_keys").active
