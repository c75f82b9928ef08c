"""A request the validator refuses, worded as OpenAI words it: pydantic's first error as an
``InvalidRequestError`` (message, ``param``, ``code``), and the errors the checks written by hand raise."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from gateway.config_problems import key_path
from gateway.errors import InvalidRequestError


def empty_array(param: str, min_length: int = 1) -> InvalidRequestError:
    return InvalidRequestError(
        f"Invalid '{param}': empty array. Expected an array with minimum length {min_length}, "
        "but got an empty array instead.",
        param=param,
        code="empty_array",
    )


def missing(param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


_TYPE_NAMES = {
    "string_type": "a string",
    "float_type": "a decimal",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "bool_type": "a boolean",
    "list_type": "an array",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}


#: JSON's names for Python's types, ``bool`` before ``int`` (a bool is an int).
_JSON_TYPES = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a decimal"),
    (str, "a string"),
    (list, "an array"),
    (dict, "an object"),
)


def _json_type(value: Any) -> str:
    return next((name for kind, name in _JSON_TYPES if isinstance(value, kind)), "null")


#: pydantic's bound errors: (OpenAI's words, the operator, the constraint's key).
_BOUNDS = {
    "greater_than_equal": ("below minimum", ">=", "ge"),
    "greater_than": ("below minimum", ">", "gt"),
    "less_than_equal": ("above maximum", "<=", "le"),
    "less_than": ("above maximum", "<", "lt"),
}


def request_error(exc: ValidationError) -> InvalidRequestError:
    """The first pydantic error as OpenAI words it (message, ``param``, ``code``)."""
    err = exc.errors(include_url=False)[0]
    param, kind, value, ctx = key_path(err["loc"]), err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return missing(param)
    if kind in _TYPE_NAMES or kind == "invalid_type":
        expected = ctx.get("expected") or _TYPE_NAMES[kind]
        return InvalidRequestError(
            f"Invalid type for '{param}': expected {expected}, but got {_json_type(value)} instead.",
            param=param,
            code="invalid_type",
        )
    if kind == "literal_error":
        return InvalidRequestError(
            f"Invalid value: {value!r}. Supported values are: {ctx.get('expected')}.", param=param, code="invalid_value"
        )
    number = "decimal" if any(isinstance(ctx.get(k), float) for k in ("ge", "gt", "le", "lt")) else "integer"
    ctx = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in ctx.items()}
    if kind in _BOUNDS:
        words, operator, key = _BOUNDS[kind]
        return InvalidRequestError(
            f"Invalid '{param}': {number} {words} value. "
            f"Expected a value {operator} {ctx[key]}, but got {value} instead.",
            param=param,
            code=f"{number}_{words.replace('imum', '').replace(' ', '_')}_value",
        )
    if kind == "too_short" and isinstance(value, list) and not value:
        return empty_array(param, ctx.get("min_length", 1))
    return InvalidRequestError(f"Invalid '{param}': {err['msg']}.", param=param, code="invalid_value")
