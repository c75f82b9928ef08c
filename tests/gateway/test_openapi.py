"""The OpenAPI document: valid OpenAPI 3.1, every route of the app in it, request schemas taken from
the models that validate requests."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from pydantic import BaseModel

from gateway import hookimpl
from gateway.config import GatewayConfig
from gateway.formats import response_models as api_models
from gateway.formats.requests import ChatCompletionRequest
from gateway.openapi import REF, UNDOCUMENTED_METHODS, build_document, described, operation, schema_ref
from gateway.testing import make_app, mock_config


def document(app: web.Application) -> dict[str, Any]:
    return build_document(app.router, title="test", version="1")


def test_the_document_is_valid_openapi_3_1() -> None:
    doc = document(make_app())
    validate(doc)
    assert doc["openapi"].startswith("3.1")


def test_every_route_of_the_app_is_described_and_listed() -> None:
    """Walks the router of an app with every built-in plugin: a route added without ``@operation``
    (or left out of the document) fails here."""
    app = make_app()
    paths = document(app)["paths"]
    undescribed, missing = [], []
    for route in app.router.routes():
        if route.method in UNDOCUMENTED_METHODS:
            continue
        where = f"{route.method} {route.resource.canonical}"
        op = described(route.handler)
        if op is None:
            undescribed.append(where)
        elif not op.hidden and route.method.lower() not in paths.get(route.resource.canonical, {}):
            if route.resource.canonical not in ALIASES:
                missing.append(where)
    assert not undescribed, f"routes without @operation: {undescribed}"
    assert not missing, f"routes missing from the document: {missing}"
    for path in ("/v1/chat/completions", "/v1/models", "/v1/models/{model_id}", "/metrics", "/docs", "/openapi.json"):
        assert path in paths


def test_the_chat_request_schema_is_the_validating_model() -> None:
    doc = document(make_app())
    body = doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": REF.format(model="ChatCompletionRequest")}
    expected = ChatCompletionRequest.model_json_schema(ref_template=REF)
    defs = expected.pop("$defs")
    schemas = doc["components"]["schemas"]
    assert schemas["ChatCompletionRequest"] == expected
    assert all(schemas[name] == schema for name, schema in defs.items())

    # the document's schema accepts and refuses what the gateway does
    validator = jsonschema.Draft202012Validator({**body, "components": doc["components"]})
    validator.validate({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": 1})
    for bad in (
        {"model": "m", "messages": []},
        {"model": "m", "messages": [{"role": "robot", "content": "hi"}]},
        {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 3},
    ):
        with pytest.raises(jsonschema.ValidationError):
            validator.validate(bad)


def test_streaming_and_errors_are_described() -> None:
    chat = document(make_app())["paths"]["/v1/chat/completions"]["post"]
    ok = chat["responses"]["200"]["content"]
    assert ok["application/json"]["schema"] == {"$ref": REF.format(model="ChatCompletion")}
    assert ok["text/event-stream"]["x-event-schema"] == {"$ref": REF.format(model="ChatCompletionChunk")}
    assert chat["responses"]["default"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")


ALIASES = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/models",
    "/models/{model_id}",
    "/responses",
    "/responses/{response_id}",
    "/",
)


def test_paths_without_v1_are_aliases_left_out() -> None:
    paths = document(make_app())["paths"]
    assert not set(ALIASES) & set(paths)
    assert "description" not in paths["/v1/models"]["get"]
    assert paths["/v1/models/{model_id}"]["get"]["parameters"][0]["name"] == "model_id"
    ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(ids) == len(set(ids))


class ThirdParty:
    """A plugin adding a route it does not describe, and one it hides."""

    @hookimpl
    def gateway_setup_app(self, app: web.Application, config: GatewayConfig) -> None:
        async def ping(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        @operation("not an API endpoint", hidden=True)
        async def hidden(request: web.Request) -> web.Response:
            return web.Response(text="pong")

        app.router.add_route("*", "/x/ping", ping)
        app.router.add_get("/x/hidden", hidden)


def test_a_plugin_route_without_a_description_is_still_listed() -> None:
    no_cors = {**mock_config(), "plugins": {"disabled": ["cors"]}}  # aiohttp-cors refuses "*" routes
    doc = document(make_app(no_cors, plugins=[ThirdParty()]))
    validate(doc)
    assert set(doc["paths"]["/x/ping"]) == {"get", "post", "put", "patch", "delete"}
    assert doc["paths"]["/x/ping"]["get"]["summary"] == "GET /x/ping"
    assert "/x/hidden" not in doc["paths"]


def test_two_different_schemas_with_one_name_are_refused() -> None:
    class Usage(BaseModel):  # not gateway.formats.response_models.Usage
        tokens: str

    schemas: dict[str, Any] = {}
    schema_ref(api_models.Usage, schemas)
    with pytest.raises(ValueError, match="'Usage'"):
        schema_ref(Usage, schemas)


async def test_the_responses_endpoints_are_documented_with_a_working_example(gateway: Any) -> None:
    client = await gateway()
    doc = await (await client.get("/openapi.json")).json()
    assert set(doc["paths"]["/v1/responses"]) == {"post"}
    assert set(doc["paths"]["/v1/responses/{response_id}"]) == {"get", "delete"}
    post = doc["paths"]["/v1/responses"]["post"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": REF.format(model="ResponseObject")
    }
    [example] = doc["components"]["schemas"]["ResponsesRequest"]["examples"]
    assert example["model"] == "mock-gpt-model"
    answer = await client.post("/v1/responses", json=example)
    assert answer.status == 200 and (await answer.json())["object"] == "response"


# The document says what the validator accepts ----------------------------------------------------

USER = {"role": "user", "content": "hi"}
CHAT_OK = {"model": "mock-gpt-model", "messages": [USER]}
CASES: list[tuple[str, str, dict[str, Any], bool]] = [  # (endpoint, schema, body, accepted)
    ("/v1/chat/completions", "ChatCompletionRequest", CHAT_OK, True),
    ("/v1/chat/completions", "ChatCompletionRequest", {"messages": [USER]}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {"model": None, "messages": [USER]}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {"model": "", "messages": [USER]}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT_OK, "messages": [{"role": "user"}]}, False),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [{"role": "user", "content": None}]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "tool", "tool_call_id": "c"}]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "tool", "content": "x"}]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "tool", "content": "x", "tool_call_id": ""}]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "tool", "content": "x", "tool_call_id": "c"}]},
        True,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "assistant"}, USER]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [USER, {"role": "assistant", "tool_calls": []}, USER]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {
            **CHAT_OK,
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                USER,
            ],
        },
        True,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        False,
    ),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        True,
    ),
    ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT_OK, "tools": [{"type": "function"}]}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT_OK, "tools": [{}]}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT_OK, "tool_choice": {"type": "function"}}, False),
    ("/v1/chat/completions", "ChatCompletionRequest", {**CHAT_OK, "stream_options": {"include_usage": True}}, False),
    (
        "/v1/chat/completions",
        "ChatCompletionRequest",
        {**CHAT_OK, "stream": True, "stream_options": {"include_usage": True}},
        True,
    ),
    ("/v1/completions", "CompletionRequest", {"model": "mock-gpt-model", "prompt": "hi"}, True),
    ("/v1/completions", "CompletionRequest", {"model": "mock-gpt-model", "prompt": ""}, True),
    ("/v1/completions", "CompletionRequest", {"prompt": "hi"}, False),
    ("/v1/completions", "CompletionRequest", {"model": "mock-gpt-model", "prompt": []}, False),
    ("/v1/completions", "CompletionRequest", {"model": "mock-gpt-model", "prompt": [[]]}, False),
    ("/v1/completions", "CompletionRequest", {"model": "mock-gpt-model", "prompt": "hi", "stream_options": {}}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": "hi"}, True),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": [[1, 2]]}, True),
    ("/v1/embeddings", "EmbeddingRequest", {"input": "hi"}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": None, "input": "hi"}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": ""}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": []}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": [""]}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": [[]]}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": ["a"] * 2049}, False),
    ("/v1/embeddings", "EmbeddingRequest", {"model": "mock-gpt-model", "input": "hi", "dimensions": 3073}, False),
]


async def test_the_request_schemas_accept_what_the_gateway_accepts_and_refuse_what_it_refuses(gateway: Any) -> None:
    client = await gateway()
    doc = await (await client.get("/openapi.json")).json()
    disagree = []
    for path, name, body, accepted in CASES:
        validator = jsonschema.Draft202012Validator({"$ref": REF.format(model=name), "components": doc["components"]})
        resp = await client.post(path, json=body)
        gateway_accepts, schema_accepts = resp.status != 400, validator.is_valid(body)
        if not (gateway_accepts == schema_accepts == accepted):
            disagree.append((path, body, resp.status, schema_accepts))
    assert not disagree
