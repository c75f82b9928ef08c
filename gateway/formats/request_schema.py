"""What ``/openapi.json`` says about a request is what ``gateway.formats.requests`` accepts: the rules
its pydantic models cannot express (a tool message needs its content, a ``text`` part its text, an
embeddings input is not empty...) are written into their JSON schemas as JSON Schema conditions."""

from __future__ import annotations

from typing import Any

NOT_NULL: dict[str, Any] = {"not": {"type": "null"}}
TRUTHY: dict[str, Any] = {"not": {"enum": [None, False, 0, "", [], {}]}}  # what Python takes as true


def when(prop: str, value: Any, then: dict[str, Any]) -> dict[str, Any]:
    """If ``prop`` is ``value`` (a list: one of them), then ``then``."""
    test = {"enum": value} if isinstance(value, list) else {"const": value}
    return {"if": {"properties": {prop: test}}, "then": then}


def present(prop: str, schema: dict[str, Any] = NOT_NULL) -> dict[str, Any]:
    """``prop`` is given, and fits ``schema`` (default: it is not null)."""
    return {"required": [prop], "properties": {prop: schema}}


def require_model(schema: dict[str, Any]) -> None:
    """``model`` is required and a non-empty string (``require_model: false`` lets a request name none:
    the document says what the default config accepts)."""
    schema["properties"]["model"] = {"type": "string", "minLength": 1, "title": "Model"}
    schema["required"] = ["model", *(r for r in schema.get("required", ()) if r != "model")]


def model_and_stream_options(schema: dict[str, Any]) -> None:
    """``require_model``, and ``stream_options`` only with ``stream: true``."""
    require_model(schema)
    schema.setdefault("allOf", []).append({"if": present("stream_options"), "then": present("stream", {"const": True})})


def text_inputs(*, empty_strings: bool, max_items: int | None = None) -> dict[str, Any]:
    """A ``prompt`` / ``input`` as ``requests._check_text_input`` checks it: a string, or a non-empty
    array of strings, of tokens or of non-empty token arrays."""
    string: dict[str, Any] = {"type": "string"} if empty_strings else {"type": "string", "minLength": 1}
    array: dict[str, Any] = {"type": "array", "minItems": 1}
    if max_items is not None:
        array["maxItems"] = max_items
    tokens = {"type": "array", "minItems": 1, "items": {"type": "integer"}}
    return {
        "anyOf": [
            string,
            {**array, "items": string},
            {**array, "items": {"type": "integer"}},
            {**array, "items": tokens},
        ]
    }
