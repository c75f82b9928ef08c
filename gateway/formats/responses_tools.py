"""The tools of a Responses request in the chat form: ``function`` tools as they are, ``custom``
tools (free-form text, as Codex's ``apply_patch``) as functions taking one string ``input``, the
tools of a ``namespace`` flattened; hosted tools (``web_search``, ``file_search``, ...), which only
OpenAI's servers run, are not offered to the model (they stay in the echoed ``tools``)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import InvalidRequestError

#: The chat parameters of a ``custom`` tool.
CUSTOM_PARAMETERS = {
    "type": "object",
    "properties": {"input": {"type": "string", "description": "The tool's input, as free-form text"}},
    "required": ["input"],
    "additionalProperties": False,
}
OFFERED = ("function", "custom")


def validate_tools(tools: Any) -> None:
    """``tools`` is a list of objects with a ``type``; function and custom tools (in a namespace too) need a name."""
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequestError("Invalid type for 'tools': expected an array.", param="tools")
    for i, tool in enumerate(tools):
        _check(tool, f"tools[{i}]")
        if tool["type"] == "namespace":
            if not isinstance(tool.get("tools"), list):
                raise InvalidRequestError(f"Invalid '{f'tools[{i}]'}.tools': expected an array.", param=f"tools[{i}]")
            for j, inner in enumerate(tool["tools"]):
                _check(inner, f"tools[{i}].tools[{j}]")
                if inner["type"] not in OFFERED:
                    param = f"tools[{i}].tools[{j}].type"
                    raise InvalidRequestError("A namespace holds function and custom tools only.", param=param)


def _check(tool: Any, where: str) -> None:
    if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
        raise InvalidRequestError(f"Invalid '{where}': expected an object with a 'type'.", param=where)
    if tool["type"] in (*OFFERED, "namespace") and not isinstance(tool.get("name"), str):
        raise InvalidRequestError(f"Missing required parameter: '{where}.name'.", param=f"{where}.name")


def offered(tools: Any) -> Iterator[tuple[Mapping[str, Any], str | None]]:
    """Each tool the model is offered, with the namespace it sits in (or None)."""
    for tool in tools or ():
        if tool["type"] in OFFERED:
            yield tool, None
        elif tool["type"] == "namespace":
            for inner in tool["tools"]:
                yield inner, tool["name"]


def chat_tools(tools: Any) -> list[dict[str, Any]]:
    return [chat_tool(tool) for tool, _ in offered(tools)]


def chat_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    """A chat function tool; a ``custom`` tool's grammar goes into its description."""
    if tool["type"] == "custom":
        function: dict[str, Any] = {"name": tool["name"], "parameters": CUSTOM_PARAMETERS}
        description = tool.get("description") or ""
        grammar = tool.get("format") if isinstance(tool.get("format"), Mapping) else {}
        if grammar.get("type") == "grammar" and grammar.get("definition"):
            syntax = grammar.get("syntax", "")
            description = f"{description}\n\nThe input follows this {syntax} grammar:\n{grammar['definition']}".lstrip()
        if description:
            function["description"] = description
        return {"type": "function", "function": function}
    function = {"name": tool["name"], "parameters": tool.get("parameters") or {"type": "object"}}
    if tool.get("description"):
        function["description"] = tool["description"]
    if tool.get("strict") is not None:
        function["strict"] = tool["strict"]
    return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolKinds:
    """What a call by name becomes: a ``custom_tool_call`` (``custom``), or a ``function_call``
    that names its ``namespace``."""

    custom: frozenset[str] = frozenset()
    namespaces: Mapping[str, str] = field(default_factory=dict)


def tool_kinds(request: Mapping[str, Any]) -> ToolKinds:
    tools = list(offered(request.get("tools")))
    custom = frozenset(tool["name"] for tool, _ in tools if tool["type"] == "custom")
    return ToolKinds(custom, {tool["name"]: ns for tool, ns in tools if ns is not None})


def custom_input(arguments: str) -> str:
    """A custom tool's text from the chat call's arguments (``{"input": ...}``; else as they are)."""
    try:
        parsed = orjson.loads(arguments or "{}")
    except orjson.JSONDecodeError:
        return arguments
    return parsed["input"] if isinstance(parsed, dict) and isinstance(parsed.get("input"), str) else arguments


def custom_arguments(text: str) -> str:
    """The chat call's arguments for a custom tool's text."""
    return orjson.dumps({"input": text}).decode()
