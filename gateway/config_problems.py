"""Config problems as (key path, message): pydantic's errors in the YAML's own terms, with a "did you
mean" for a misspelt key and never a value that may be a secret; and the line of each key path."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError


def key_path(loc: tuple[Any, ...]) -> str:
    """``("backends", 1, "base_url")`` -> ``backends[1].base_url`` (also OpenAI's ``param`` notation)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_problems(
    exc: ValidationError, prefix: tuple[Any, ...] = (), model: type[BaseModel] | None = None
) -> list[tuple[str, str]]:
    """(key path, message) of each error; an unknown key of ``model`` gets a "did you mean"."""
    problems = []
    for err in exc.errors(include_url=False):
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if err["type"] == "extra_forbidden" and model is not None:
            msg += did_you_mean(str(err["loc"][-1]), _keys_at(model, err["loc"][:-1]))
        if _shows_input(err):
            msg += f" (got {err['input']!r})"
        problems.append((key_path(prefix + tuple(err["loc"])), msg))
    return problems


def did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _keys_at(model: Any, loc: tuple[Any, ...]) -> list[str]:
    """The keys the pydantic model nested at ``loc`` accepts (none when the path leaves the models)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        model = next(
            (
                a
                for a in (field.annotation, *get_args(field.annotation))
                if isinstance(a, type) and issubclass(a, BaseModel)
            ),
            None,
        )
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return []
    return [name for name, f in model.model_fields.items() if not f.exclude] + [
        f.alias for f in model.model_fields.values() if f.alias
    ]


_SECRET_WORDS = ("key", "token", "secret", "password", "auth")


def _shows_input(err: Any) -> bool:
    """Echo a bad value in the message unless it is a container or may be a secret."""
    if err["type"] in ("missing", "extra_forbidden") or isinstance(err.get("input"), (dict, list, type(None))):
        return False
    return not any(word in str(part).lower() for part in err["loc"] for word in _SECRET_WORDS)


_LAST_PART = re.compile(r"(\.[^.\[]*|\[\d+\])$")


def line_of(path: str, lines: Mapping[str, int]) -> int | None:
    """The line of ``path`` in the file, else of the nearest enclosing key that is there."""
    while path:
        if path in lines:
            return lines[path]
        trimmed = _LAST_PART.sub("", path)
        if trimmed == path:
            return None
        path = trimmed
    return None


def node_lines(node: yaml.Node, path: str, lines: dict[str, int], duplicates: list[tuple[str, str]]) -> None:
    """The line of every key and list item under ``node``, by key path (``backends[1].base_url``); a
    key given twice in one mapping goes to ``duplicates`` as a problem (PyYAML keeps the last silently)."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            child = f"{path}.{key.value}" if path else str(key.value)
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    duplicates.append((child, f"duplicate key {key.value!r} (given twice in one mapping)"))
                    lines[child] = key.start_mark.line + 1  # the problem's line: the second one
                    continue
                seen.add(key.value)
            lines.setdefault(child, key.start_mark.line + 1)
            node_lines(value, child, lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            child = f"{path}[{i}]"
            lines.setdefault(child, item.start_mark.line + 1)
            node_lines(item, child, lines, duplicates)
