"""The top-level ``router:`` section that every entry of ``models`` inherits (``model_table.inherit``),
and the checks of the whole table (``table_problems``) with the router's inherited ``fallbacks``
named under ``router``, where they were written."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gateway.config_problems import validation_problems
from gateway.model_table import ModelIndex, ModelRoute, RouterConfig, inherit, table_problems

_INHERITED_FALLBACK = re.compile(r"models\[(\d+)\]\.fallbacks(\[\d+\])")
_ROUTES = TypeAdapter(list[ModelRoute])

Problems = list[tuple[str, str]]


def router_defaults(router: Any, problems: Problems) -> tuple[RouterConfig, dict[str, Any]]:
    """The ``router`` section, validated, and as given (the defaults entries inherit; none when it
    has problems, which are reported under ``router``)."""
    if router is None:
        return RouterConfig(), {}
    try:
        validated = RouterConfig.model_validate(router)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, ("router",), RouterConfig))
        return RouterConfig(), {}
    return validated, dict(router)


def inherit_all(raw: dict[str, Any], defaults: Mapping[str, Any]) -> list[bool]:
    """Give each raw entry of ``raw["models"]`` the defaults it does not set; per entry, whether it
    lists its own ``fallbacks``."""
    models = raw.get("models")
    if not defaults or not isinstance(models, list):
        return []
    raw["models"] = [inherit(entry, defaults) for entry in models]
    return [isinstance(entry, Mapping) and "fallbacks" in entry for entry in models]


def routes_alone(raw_models: Any) -> list[ModelRoute]:
    """The ``models`` table validated on its own (when the rest of the config is not): [] if it fails."""
    try:
        return _ROUTES.validate_python(raw_models or [])
    except ValidationError:
        return []  # its problems are reported with the rest of the config's


def check_table(
    models: list[ModelRoute], own_fallbacks: list[bool], inherited: bool, declared: Iterable[str], problems: Problems
) -> None:
    """Drop an inherited fallback that is the entry itself, then add the table's problems (those of
    inherited fallbacks under ``router.fallbacks``, once)."""
    owns = lambda i: i < len(own_fallbacks) and own_fallbacks[i]  # noqa: E731
    if inherited:
        index = ModelIndex(models)
        for i, route in enumerate(models):
            if not owns(i):
                route.fallbacks = [name for name in route.fallbacks if index.find(name) is not route]
    for path, problem in table_problems(models, set(declared)):
        match = _INHERITED_FALLBACK.fullmatch(path) if inherited else None
        if match and not owns(int(match[1])):
            path = f"router.fallbacks{match[2]}"  # the router's list, not the entry's
        if (path, problem) not in problems:
            problems.append((path, problem))
