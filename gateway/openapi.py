"""The OpenAPI 3.1 document of the gateway, built from its router.

Every route handler describes itself with ``@operation(...)`` (core and plugin routes alike), so the
document lists every route the app has; request bodies are the pydantic models that validate them
(``gateway.formats.requests``), responses the models in ``gateway.formats.response_models``. A
route whose handler has no description still appears, with a placeholder summary; ``hidden=True``
leaves out a route that is not an API endpoint (a page's assets), and a second path of a handler
(``/chat/completions`` beside ``/v1/chat/completions``) is served but not listed. ``example`` is the
body Swagger UI's "Try it out" starts from: one the default config answers. Which operations need a
key is for an auth plugin to say (``gateway_process_response`` with ``ctx.endpoint == "openapi"``,
``require_key``): the document itself asks for none.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel

from gateway.formats.response_models import ErrorResponse

OPENAPI_VERSION = "3.1.0"
REF = "#/components/schemas/{model}"
JSON = "application/json"
SSE = "text/event-stream"
ATTRIBUTE = "__gateway_operation__"
UNDOCUMENTED_METHODS = frozenset({"HEAD", "OPTIONS"})  # HEAD mirrors GET; OPTIONS is CORS preflight
ANY_METHOD = ("get", "post", "put", "patch", "delete")  # a route added for method "*"
_PATH_PARAM = re.compile(r"{(\w+)}")

Handler = TypeVar("Handler", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Operation:
    """What ``/openapi.json`` says about one route handler."""

    summary: str
    tag: str = "gateway"
    request: type[BaseModel] | None = None  # the JSON body, as the model that validates it
    response: type[BaseModel] | None = None  # the JSON body of a 200
    stream: type[BaseModel] | None = None  # each event of a 200 ``text/event-stream`` (``"stream": true``)
    content_type: str | None = None  # the type of a 200 body that is not JSON (text/plain, text/html)
    description: str = ""
    hidden: bool = False  # not an API endpoint: left out of the document
    example: dict[str, Any] | None = None  # the request body "Try it out" starts from


def operation(summary: str, **details: Any) -> Callable[[Handler], Handler]:
    """Describe a route handler: ``@operation("List models", tag="models", response=ModelList)``."""
    described = Operation(summary, **details)

    def mark(handler: Handler) -> Handler:
        setattr(handler, ATTRIBUTE, described)
        return handler

    return mark


def described(handler: object) -> Operation | None:
    """The ``Operation`` a handler was marked with, or None."""
    return getattr(handler, ATTRIBUTE, None)


def documented_routes(router: web.UrlDispatcher) -> list[tuple[str, str, web.AbstractRoute]]:
    """``(method, path, route)`` of every route the document lists (lowercase methods, canonical paths):
    not the hidden ones, nor a handler's later paths for the same method (aliases)."""
    found = []
    seen: set[tuple[object, str]] = set()
    for route in router.routes():
        if route.method in UNDOCUMENTED_METHODS or route.resource is None:
            continue
        op = described(route.handler)
        if op is not None and op.hidden:
            continue
        methods = ANY_METHOD if route.method == "*" else (route.method.lower(),)
        for method in methods:
            if (route.handler, method) not in seen:
                seen.add((route.handler, method))
                found.append((method, route.resource.canonical, route))
    return found


def build_document(router: web.UrlDispatcher, *, title: str, version: str, description: str = "") -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in ``router``."""
    schemas: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for method, path, route in documented_routes(router):
        op = described(route.handler) or Operation(
            f"{method.upper()} {path}", description="Added by a plugin that does not describe it."
        )
        paths.setdefault(path, {})[method] = _operation(op, method, path, schemas)
        tags[op.tag] = None
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version, "description": description},
        "tags": [{"name": tag} for tag in tags],
        "paths": paths,
        "components": {"schemas": dict(sorted(schemas.items()))},
    }


BEARER = {"type": "http", "scheme": "bearer", "description": "An API key of this gateway"}


def require_key(document: dict[str, Any], needs: Callable[[str], bool], optional: bool = False) -> None:
    """Mark the operations of the paths for which ``needs(path)`` is true as asking for a bearer key
    (Swagger UI's lock; ``optional``: a key may be sent), and add the scheme behind "Authorize"."""
    marked = False
    for path, operations in document["paths"].items():
        if needs(path):
            for op in operations.values():
                op["security"] = [{}, {"bearer": []}] if optional else [{"bearer": []}]
                marked = True
    if marked:
        document["components"]["securitySchemes"] = {"bearer": BEARER}


def _operation(op: Operation, method: str, path: str, schemas: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {"operationId": _operation_id(method, path), "summary": op.summary, "tags": [op.tag]}
    if op.description:
        result["description"] = op.description
    if names := _PATH_PARAM.findall(path):
        string = {"type": "string"}
        result["parameters"] = [{"name": n, "in": "path", "required": True, "schema": string} for n in names]
    if op.request is not None:
        body: dict[str, Any] = {"schema": schema_ref(op.request, schemas, "validation")}
        if op.example is not None:
            body["example"] = op.example
        result["requestBody"] = {"required": True, "content": {JSON: body}}
    content: dict[str, Any] = {}
    if op.response is not None:
        content[JSON] = {"schema": schema_ref(op.response, schemas)}
    if op.stream is not None:
        event = op.stream.__name__
        content[SSE] = {
            "schema": {"type": "string", "description": f"`data: {{{event}}}` events, then `data: [DONE]`"},
            "x-event-schema": schema_ref(op.stream, schemas),
        }
    if op.content_type is not None:
        kind = "object" if op.content_type.endswith("json") else "string"
        content[op.content_type] = {"schema": {"type": kind}}
    ok: dict[str, Any] = {"description": "OK"}
    if content:
        ok["content"] = content
    error = {"description": "An error object", "content": {JSON: {"schema": schema_ref(ErrorResponse, schemas)}}}
    result["responses"] = {"200": ok, "default": error}
    return result


def schema_ref(
    model: type[BaseModel],
    schemas: dict[str, Any],
    mode: Literal["validation", "serialization"] = "serialization",
) -> dict[str, str]:
    """Add ``model``'s JSON schema (and those it refers to) to ``schemas``; return a ``$ref`` to it."""
    for name, sub in _json_schemas(model, mode).items():
        if schemas.setdefault(name, sub) != sub:
            raise ValueError(f"two different schemas are named {name!r}")
    return {"$ref": REF.format(model=model.__name__)}


@functools.cache
def _json_schemas(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> dict[str, Any]:
    """``model``'s JSON schema and those it refers to, by name (pydantic's work, done once per model)."""
    schema = model.model_json_schema(ref_template=REF, mode=mode)
    return {**schema.pop("$defs", {}), model.__name__: schema}


def _operation_id(method: str, path: str) -> str:
    return f"{method}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_') or 'root'}"
