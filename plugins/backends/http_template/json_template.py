"""JSON templates with JMESPath references, for backends declared in YAML (``http_template``).

A template is any JSON-like tree (what YAML parses to). Its strings may refer to variables:

- a string that is one reference, ``"{{ history }}"``, becomes the value found, whatever its type
  (a list, an object, a number...): structured values are inserted, never formatted into JSON text;
  in an object, a key whose reference finds nothing (null) is left out;
- a reference inside a longer string, ``"Q: {{ last_user_message }}"``, is replaced by its text
  (a string as it is, null as nothing, anything else as compact JSON);
- everything else is a literal.

Each reference is a JMESPath expression over the variables (``messages[-1].content``,
``parameters.temperature || `0.7```), compiled once when the config is read; an expression that does
not parse, or names a variable that does not exist, is a config error. No code is evaluated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import jmespath
import jmespath.exceptions
import orjson

_REFERENCE = re.compile(r"\{\{(.*?)\}\}", re.DOTALL)
_WHOLE = re.compile(r"\s*\{\{((?:(?!\}\}).)*)\}\}\s*", re.DOTALL)

#: A compiled template node: the variables -> the rendered value (``_ABSENT`` to leave a key out).
Node = Callable[[Mapping[str, Any]], Any]
_ABSENT: Any = object()


def compile_path(expression: str, variables: Collection[str] | None = None) -> Any:
    """A compiled JMESPath expression; ``ValueError`` naming the problem when it does not parse or,
    with ``variables`` given, when it reads a top-level name that is not one of them."""
    try:
        compiled = jmespath.compile(expression.strip())
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"invalid JMESPath expression {expression.strip()!r}: {exc}") from None
    if variables is not None:
        unknown = sorted(root_fields(compiled.parsed) - set(variables))
        if unknown:
            known = ", ".join(sorted(variables))
            raise ValueError(f"unknown variable {unknown[0]!r} in {expression.strip()!r} (known: {known})")
    return compiled


def root_fields(node: Mapping[str, Any]) -> set[str]:
    """The top-level names a parsed JMESPath expression reads from the data it is applied to."""
    kind, children = node.get("type"), node.get("children") or []
    if kind == "field":
        return {node["value"]}
    if kind in ("subexpression", "index_expression", "projection", "value_projection", "filter_projection", "pipe"):
        children = children[:1]  # the rest applies to what the first part found
    elif kind in ("expref", "literal", "current", "identity", "index", "slice"):
        return set()
    found: set[str] = set()
    for child in children:
        if isinstance(child, Mapping):
            found |= root_fields(child)
    return found


def text_of(value: Any) -> str:
    """How a value reads inside a longer string."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return orjson.dumps(value).decode()


class Template:
    """A compiled template: ``Template(tree, variables).render(values)``. ``ValueError`` for a bad
    reference, its message starting with the place in the tree (``history: unknown variable...``)."""

    def __init__(self, tree: Any, variables: Collection[str]) -> None:
        self.variables = frozenset(variables)
        self._root = self._compile(tree, "")

    def render(self, values: Mapping[str, Any]) -> Any:
        """The tree with every reference replaced by what it finds in ``values``."""
        out = self._root(values)
        return None if out is _ABSENT else out

    def _compile(self, tree: Any, where: str) -> Node:
        if isinstance(tree, Mapping):
            return self._compile_object(tree, where)
        if isinstance(tree, list):
            items = [self._compile(v, f"{where}[{i}]") for i, v in enumerate(tree)]
            return lambda values: [None if (v := item(values)) is _ABSENT else v for item in items]
        if isinstance(tree, str) and "{{" in tree:
            return self._compile_string(tree, where)
        return lambda values: tree

    def _compile_object(self, tree: Mapping[Any, Any], where: str) -> Node:
        fields = [(str(k), self._compile(v, f"{where}.{k}" if where else str(k))) for k, v in tree.items()]

        def render(values: Mapping[str, Any]) -> dict[str, Any]:
            out = {}
            for key, field in fields:
                value = field(values)
                if value is not _ABSENT:
                    out[key] = value
            return out

        return render

    def _compile_string(self, text: str, where: str) -> Node:
        whole = _WHOLE.fullmatch(text)
        if whole is not None:
            path = self._path(whole.group(1), where)

            def reference(values: Mapping[str, Any]) -> Any:
                found = path.search(values)
                return _ABSENT if found is None else found

            return reference
        pieces: list[str | Any] = []
        last = 0
        for match in _REFERENCE.finditer(text):
            pieces += [text[last : match.start()], self._path(match.group(1), where)]
            last = match.end()
        pieces.append(text[last:])
        return lambda values: "".join(p if isinstance(p, str) else text_of(p.search(values)) for p in pieces)

    def _path(self, expression: str, where: str) -> Any:
        if not expression.strip():
            raise ValueError(f"{where or 'template'}: empty reference {{{{ }}}}")
        try:
            return compile_path(expression, self.variables)
        except ValueError as exc:
            raise ValueError(f"{where or 'template'}: {exc}") from None
