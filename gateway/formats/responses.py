"""OpenAI's Responses API as a front door: a ``/v1/responses`` request translated into the internal
chat completions form, and the ``chat.completion`` translated back into a ``response`` object.

Plain dicts, shaped as the ``openai`` SDK's ``openai.types.responses`` models. The stream's events
are ``gateway.formats.responses_stream``; the kept conversations ``gateway.state.responses``; the
per-request glue ``gateway.responses``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.formats import responses_tools as tools

#: Request fields copied as they are into the chat request.
CHAT_FIELDS = ("temperature", "top_p", "parallel_tool_calls", "user")
#: ``finish_reason`` of an unfinished answer -> ``incomplete_details.reason``.
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}
#: Input roles the chat form has no use for -> the chat role.
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
#: Item types that carry nothing a chat backend could use (a model's reasoning): skipped.
SKIPPED_ITEMS = frozenset({"reasoning", "item_reference"})
CALL_ITEMS = ("function_call", "custom_tool_call")
OUTPUT_ITEMS = ("function_call_output", "custom_tool_call_output")


NO_KINDS = tools.ToolKinds()
#: The content parts a message may have (files are not: no chat backend takes them).
PARTS = frozenset({"input_text", "input_image", "output_text", "text", "refusal"})


def new_id(prefix: str) -> str:
    """``resp_...``, ``msg_...``, ``fc_...``: the prefix and 48 hex digits, as OpenAI's ids."""
    return prefix + os.urandom(24).hex()


# Requests ---------------------------------------------------------------------------------------


def _invalid(message: str, param: str, code: str | None = None) -> InvalidRequestError:
    return InvalidRequestError(message, param=param, code=code)


def validate(body: Any) -> None:
    """Check a Responses request: an object with ``input`` a string or a list of items, function tools."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    items = body.get("input")
    if items is None and not body.get("previous_response_id"):
        raise _invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    if items is not None and not isinstance(items, (str, list)):
        raise _invalid("Invalid type for 'input': expected a string or an array of input items.", "input")
    for i, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            raise _invalid(f"Invalid type for 'input[{i}]': expected an object.", f"input[{i}]")
        kind = item.get("type", "message")
        if kind == "message" and ROLES.get(item.get("role")) is None:
            raise _invalid(
                f"Invalid value for 'input[{i}].role': expected 'user', 'assistant', 'system' or 'developer'.",
                f"input[{i}].role",
            )
        if kind not in ("message", *CALL_ITEMS, *OUTPUT_ITEMS, *SKIPPED_ITEMS):
            raise _invalid(f"Input items of type '{kind}' are not supported by this gateway.", f"input[{i}].type")
        content = item.get("content") if kind == "message" else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, dict) or part.get("type") not in PARTS:
                where = f"input[{i}].content[{j}]"
                raise _invalid(f"Content parts of type '{_kind(part)}' are not supported by this gateway.", where)
    tools.validate_tools(body.get("tools"))
    for key in ("instructions", "previous_response_id"):
        if body.get(key) is not None and not isinstance(body[key], str):
            raise _invalid(f"Invalid type for '{key}': expected a string.", key)
    if body.get("max_output_tokens") is not None:
        tokens = body["max_output_tokens"]
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise _invalid("Invalid 'max_output_tokens': expected a positive integer.", "max_output_tokens")
    text_format = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if text_format is not None and (not isinstance(text_format, dict) or text_format.get("type") not in _FORMATS):
        raise _invalid("Invalid 'text.format': expected type 'text', 'json_object' or 'json_schema'.", "text.format")


_FORMATS = ("text", "json_object", "json_schema")


def _kind(part: Any) -> Any:
    return part.get("type") if isinstance(part, dict) else type(part).__name__


def to_chat(body: Mapping[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat completion request for a Responses request; ``history`` are the chat messages of the
    conversation it continues (``previous_response_id``), after the instructions."""
    messages: list[dict[str, Any]] = []
    if body.get("instructions"):
        messages.append({"role": "system", "content": body["instructions"]})
    messages += history
    messages += input_messages(body.get("input"))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for key in CHAT_FIELDS:
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    offered = tools.chat_tools(body.get("tools"))
    if offered:
        out["tools"] = offered
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        out["tool_choice"] = choice
    elif isinstance(choice, Mapping) and choice.get("type") == "function":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    response_format = _response_format((body.get("text") or {}).get("format"))
    if response_format is not None:
        out["response_format"] = response_format
    if body.get("stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _response_format(text_format: Any) -> dict[str, Any] | None:
    if not isinstance(text_format, Mapping) or text_format.get("type") == "text":
        return None
    if text_format.get("type") == "json_object":
        return {"type": "json_object"}
    schema = {k: text_format[k] for k in ("name", "description", "schema", "strict") if k in text_format}
    return {"type": "json_schema", "json_schema": schema}


def input_messages(items: Any) -> list[dict[str, Any]]:
    """The chat messages of ``input``: a string is one user message; consecutive ``function_call``
    (and ``custom_tool_call``) items join the assistant message before them, each ``*_output`` is a
    ``tool`` message."""
    if items is None:
        return []
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    out: list[dict[str, Any]] = []
    for item in items:
        kind = item.get("type", "message")
        if kind in CALL_ITEMS:
            if kind == "custom_tool_call":
                arguments = tools.custom_arguments(item.get("input") or "")
            else:
                arguments = item.get("arguments") or ""
            function = {"name": item.get("name"), "arguments": arguments}
            call = {"id": item.get("call_id"), "type": "function", "function": function}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and last.get("_open"):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call], "_open": True})
        elif kind in OUTPUT_ITEMS:
            output = item.get("output")
            text = output if isinstance(output, str) else _text_of(output)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "message":
            out.append(_message(item))
    for message in out:
        message.pop("_open", None)
    return out


def _message(item: Mapping[str, Any]) -> dict[str, Any]:
    role, content = ROLES[item["role"]], item.get("content")
    if isinstance(content, str):
        return {"role": role, "content": content, "_open": role == "assistant"}
    if role != "user":  # system and assistant turns: their text
        return {"role": role, "content": _text_of(content), "_open": role == "assistant"}
    parts: list[dict[str, Any]] = []
    for part in content or ():
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif kind == "input_image":
            image = {"url": part.get("image_url") or part.get("file_id") or ""}
            if part.get("detail"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
    return {"role": role, "content": parts}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or p.get("refusal") or "" for p in content or () if isinstance(p, Mapping))


# Replies ----------------------------------------------------------------------------------------


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def message_item(item_id: str, content: list[dict[str, Any]], status: str = "completed") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "role": "assistant", "content": content}


def function_call_item(
    item_id: str, call_id: str, name: str, arguments: str, status: str = "completed", namespace: str | None = None
) -> dict[str, Any]:
    item = {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def custom_call_item(item_id: str, call_id: str, name: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "custom_tool_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "input": text,
    }


def response_usage(usage: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The Responses ``usage`` for a chat ``usage``."""
    if not usage:
        return None
    prompt, completion = usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": usage.get("total_tokens") or prompt + completion,
    }


def response_object(
    request: Mapping[str, Any],
    response_id: str,
    model: str,
    *,
    status: str = "completed",
    output: list[dict[str, Any]] | None = None,
    usage: Mapping[str, Any] | None = None,
    finish_reason: str | None = None,
    error: Mapping[str, Any] | None = None,
    created_at: int | None = None,
) -> dict[str, Any]:
    """A ``response`` object: the answer and the request's settings, as OpenAI echoes them."""
    reason = INCOMPLETE.get(finish_reason or "")
    if reason is not None and status == "completed":
        status = "incomplete"
    text = request.get("text") if isinstance(request.get("text"), dict) else {}
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at if created_at is not None else int(time.time()),
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": reason} if status == "incomplete" else None,
        "instructions": request.get("instructions"),
        "max_output_tokens": request.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output if output is not None else [],
        "parallel_tool_calls": request.get("parallel_tool_calls", True),
        "previous_response_id": request.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": request.get("store", True),
        "temperature": request.get("temperature", 1.0),
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity", "medium")},
        "tool_choice": request.get("tool_choice", "auto"),
        "tools": [_echoed_tool(tool) for tool in request.get("tools") or ()],
        "top_p": request.get("top_p", 1.0),
        "truncation": request.get("truncation", "disabled"),
        "usage": response_usage(usage),
        "user": request.get("user"),
        "metadata": request.get("metadata") or {},
    }


def _echoed_tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        return dict(tool)
    return {"description": None, "parameters": None, "strict": True, **tool}


def output_items(
    completion: Mapping[str, Any], kinds: tools.ToolKinds = NO_KINDS
) -> tuple[list[dict[str, Any]], str | None]:
    """The output items of a ``chat.completion`` and its ``finish_reason``: a ``message`` with the
    text (or refusal), then a ``function_call`` per tool call (a ``custom_tool_call`` for a custom
    tool: ``tools.ToolKinds``)."""
    choice = (completion.get("choices") or [{}])[0]
    reply = choice.get("message") or {}
    finish = choice.get("finish_reason")
    status = "incomplete" if finish in INCOMPLETE else "completed"
    items: list[dict[str, Any]] = []
    if reply.get("content"):
        items.append(message_item(new_id("msg_"), [output_text(reply["content"])], status))
    elif reply.get("refusal"):
        items.append(message_item(new_id("msg_"), [{"type": "refusal", "refusal": reply["refusal"]}], status))
    for call in reply.get("tool_calls") or ():
        function = call.get("function") or {}
        call_id, name, arguments = (
            call.get("id") or new_id("call_"),
            function.get("name") or "",
            function.get("arguments"),
        )
        if name in kinds.custom:
            items.append(custom_call_item(new_id("ctc_"), call_id, name, tools.custom_input(arguments or "")))
        else:
            namespace = kinds.namespaces.get(name)
            items.append(function_call_item(new_id("fc_"), call_id, name, arguments or "", namespace=namespace))
    return items, finish


def chat_reply(output: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The assistant chat message of a response's output (to continue the conversation), or None."""
    text = "".join(part.get("text", "") for item in output if item["type"] == "message" for part in item["content"])
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": _arguments(item)}}
        for item in output
        if item["type"] in CALL_ITEMS
    ]
    if not text and not calls:
        return None
    reply: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        reply["tool_calls"] = calls
    return reply


def _arguments(item: Mapping[str, Any]) -> str:
    if item["type"] == "custom_tool_call":
        return tools.custom_arguments(item["input"])
    return item["arguments"]


def failure(status: int, message: str) -> dict[str, Any]:
    """The ``error`` of a failed response (``ResponseError``: its ``code`` is one of OpenAI's few)."""
    return {"code": "rate_limit_exceeded" if status == 429 else "server_error", "message": message}
