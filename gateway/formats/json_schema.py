"""Example values for JSON schemas: a value that validates against a tool's ``parameters`` schema."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

_STRING_FORMATS = {
    "date-time": "2024-01-01T00:00:00Z",
    "date": "2024-01-01",
    "time": "00:00:00Z",
    "email": "user@example.com",
    "uri": "https://example.com",
    "uuid": "00000000-0000-4000-8000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}


#: Limits that keep a hostile schema (recursive ``$ref``s, huge ``minItems``) from stalling the server.
MAX_NODES = 10_000
MAX_DEPTH = 32
MAX_ITEMS = 1_000
MAX_LENGTH = 100_000


class SchemaTooComplexError(ValueError):
    """The schema needs a larger example than the limits allow."""


class _Walk:
    """The root schema (for ``$ref``) and the nodes left to generate."""

    __slots__ = ("nodes_left", "schema")

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self.nodes_left = MAX_NODES


def example_value(schema: Any) -> Any:
    """A value that validates against the JSON ``schema`` (the common keywords; local ``$ref`` only).

    const, then default, then the first enum value, anyOf/oneOf -> the first option; objects get every
    listed property; arrays one item (or ``minItems``); strings "example" (or a sample of their
    ``format``); numbers their lower bound, else 0; booleans true. Raises ``SchemaTooComplexError``
    past ``MAX_NODES`` values, ``MAX_ITEMS`` items or ``MAX_LENGTH`` characters.
    """
    return _example(schema, _Walk(schema), 0)


def _example(schema: Any, root: _Walk, depth: int) -> Any:
    root.nodes_left -= 1
    if root.nodes_left < 0:
        raise SchemaTooComplexError(f"the schema needs more than {MAX_NODES} values")
    if not isinstance(schema, dict) or depth > MAX_DEPTH:
        return None if schema is False else {}
    if "$ref" in schema:
        return _example(_resolve(root.schema, schema["$ref"]), root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if schema.get(key):
            return _example(schema[key][0], root, depth + 1)
    if schema.get("allOf"):
        merged = {k: v for k, v in schema.items() if k != "allOf"}
        for part in schema["allOf"]:
            part = _resolve(root.schema, part["$ref"]) if "$ref" in part else part
            merged = {**merged, **part, "properties": {**merged.get("properties", {}), **part.get("properties", {})}}
        return _example(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "array" if "items" in schema else "string"
    return _EXAMPLES.get(kind, _string)(schema, root, depth + 1)


def _resolve(root: Any, ref: str) -> Any:
    if not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/")[1:]:
        node = node.get(part.replace("~1", "/").replace("~0", "~"), {}) if isinstance(node, dict) else {}
    return node


def _object(schema: dict[str, Any], root: _Walk, depth: int) -> dict[str, Any]:
    out = {name: _example(sub, root, depth) for name, sub in (schema.get("properties") or {}).items()}
    extra = schema.get("additionalProperties")
    for name in schema.get("required") or ():
        if name not in out:
            out[name] = _example(extra, root, depth) if isinstance(extra, dict) else "example"
    return out


def _array(schema: dict[str, Any], root: _Walk, depth: int) -> list[Any]:
    items, prefix = schema.get("items"), schema.get("prefixItems")
    if isinstance(items, list):  # draft 4 tuple
        prefix = items
    if prefix:
        return [_example(sub, root, depth) for sub in prefix]
    count = max(1, schema.get("minItems", 1))
    if schema.get("maxItems") is not None:
        count = min(count, schema["maxItems"])
    if count > MAX_ITEMS:
        raise SchemaTooComplexError(f"minItems over {MAX_ITEMS}")
    return [_example(items, root, depth) if isinstance(items, dict) else "example"] * count


def _string(schema: dict[str, Any], root: _Walk, depth: int) -> str:
    if schema.get("minLength", 0) > MAX_LENGTH:
        raise SchemaTooComplexError(f"minLength over {MAX_LENGTH}")
    text = _STRING_FORMATS.get(schema.get("format", ""), "example")
    text += "x" * max(0, schema.get("minLength", 0) - len(text))
    return text[: schema["maxLength"]] if "maxLength" in schema else text


def _number(schema: dict[str, Any], integer: bool) -> float | int:
    """The lower bound (just above it when open: +1, or the middle of an open range), else 0."""
    low, low_open = _bound(schema, "minimum", "exclusiveMinimum", lower=True)
    high, high_open = _bound(schema, "maximum", "exclusiveMaximum", lower=False)
    step = 1 if integer else (high - low) / 2 if low is not None and high is not None else 1
    if low is not None:
        value = low + step if low_open else low
    elif high is not None:
        value = min(0, high - step if high_open else high)
    else:
        value = 0
    multiple = schema.get("multipleOf")
    if multiple:
        value = math.ceil(value / multiple) * multiple
    return math.ceil(value) if integer else value


def _bound(schema: dict[str, Any], inclusive: str, exclusive: str, *, lower: bool) -> tuple[Any, bool]:
    """A bound and whether it is open, from the inclusive and exclusive keywords (draft 4 and later)."""
    value, strict = schema.get(inclusive), schema.get(exclusive)
    if strict is True:  # draft 4: a flag on the inclusive keyword
        return value, value is not None
    tighter = isinstance(strict, (int, float)) and (value is None or (strict >= value if lower else strict <= value))
    if tighter and not isinstance(strict, bool):
        return strict, True
    return value, False


_EXAMPLES: dict[str, Callable[[dict[str, Any], _Walk, int], Any]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": lambda schema, root, depth: _number(schema, integer=True),
    "number": lambda schema, root, depth: _number(schema, integer=False),
    "boolean": lambda schema, root, depth: True,
    "null": lambda schema, root, depth: None,
}
