"""Translation between OpenAI chat completions and Anthropic's Messages API, both ways: the request,
the reply and the stream's events. Pure functions and one small state machine per stream; no I/O.

What becomes of each request field:

- translated: ``messages`` (system and developer messages -> ``system``; consecutive turns of one
  role merged; ``tool`` messages -> ``tool_result`` blocks of a user turn; ``image_url`` parts ->
  image blocks; assistant ``tool_calls`` -> ``tool_use`` blocks), ``max_completion_tokens`` /
  ``max_tokens`` (else the backend's default: Anthropic requires one), ``stop`` -> ``stop_sequences``,
  ``temperature``, ``top_p``, ``tools``, ``tool_choice``, ``parallel_tool_calls: false`` ->
  ``disable_parallel_tool_use``, ``user`` -> ``metadata.user_id``, ``stream``;
- passed on as it is: ``top_k`` (Anthropic's own);
- dropped for API versions from 2026-10-21 on, which removed them: ``temperature``, ``top_p``, ``top_k``;
- refused with a 400 naming the parameter, because the answer could not be what the client asked
  for: ``n`` > 1, ``logprobs``, a ``response_format`` other than text, audio output, the legacy
  ``functions`` / ``function_call`` and ``function`` messages, content parts other than text and images;
- dropped: every other field (``seed``, penalties, ``logit_bias``, ``store``, ``metadata``,
  ``service_tier``, ``reasoning_effort``...). They only tune sampling or bookkeeping, and Anthropic
  refuses fields it does not know.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import InvalidRequestError
from gateway.formats.chat import (
    chat_completion,
    completion_id,
    message_choice,
    tool_call,
    usage,
)
from gateway.formats.messages import FINISH_REASONS, TOOL_CHOICES

#: Sampling parameters sent on as they are (``top_k`` is Anthropic's own).
SAMPLING = ("temperature", "top_p", "top_k")
#: The first API version without the sampling parameters.
SAMPLING_REMOVED_IN = "2026-10-21"


def unsupported(what: str, param: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"The anthropic backend does not support {what}.", param=param, code="unsupported_parameter"
    )


# Requests ---------------------------------------------------------------------------------------


def messages_request(
    body: Mapping[str, Any], model: str, default_max_tokens: int, sampling: bool = True
) -> dict[str, Any]:
    """The Messages API body for an OpenAI chat completion request (see the module docstring);
    ``sampling``: whether the API version still takes ``temperature``, ``top_p`` and ``top_k``."""
    _refuse_unsupported(body)
    system, turns = _turns(body["messages"])
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    out: dict[str, Any] = {
        "model": model,
        "max_tokens": default_max_tokens if max_tokens is None else max_tokens,
        "messages": turns,
    }
    if system:
        out["system"] = system
    stop = body.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for key in SAMPLING if sampling else ():
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("tools"):
        _add_tools(body, out)
    if body.get("user"):
        out["metadata"] = {"user_id": body["user"]}
    if body.get("stream"):
        out["stream"] = True
    return out


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    if (body.get("n") or 1) > 1:
        raise InvalidRequestError(
            "The anthropic backend answers with one choice: 'n' must be 1.", param="n", code="unsupported_parameter"
        )
    if body.get("logprobs"):
        raise unsupported("logprobs", "logprobs")
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping) and response_format.get("type", "text") != "text":
        raise unsupported(f"response_format {response_format.get('type')!r}", "response_format")
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        raise unsupported("audio output", "modalities")
    for legacy in ("functions", "function_call"):
        if body.get(legacy):
            raise unsupported(f"the legacy {legacy!r} (use 'tools' and 'tool_choice')", legacy)


def _turns(messages: list[Mapping[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The system prompt (system and developer messages joined by blank lines) and the alternating
    user and assistant turns."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("system", "developer"):
            text = _system_text(message.get("content"), i)
            if text:
                system.append(text)
            continue
        if role == "user":
            blocks, to = _user_blocks(message.get("content"), f"messages[{i}].content"), "user"
        elif role == "assistant":
            blocks, to = _assistant_blocks(message, i), "assistant"
        elif role == "tool":
            blocks, to = [_tool_result(message, i)], "user"
        else:
            raise unsupported(f"messages with role {role!r} (use 'tool')", f"messages[{i}].role")
        if not blocks:
            continue
        if turns and turns[-1]["role"] == to:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": to, "content": blocks})
    if not turns:
        raise InvalidRequestError(
            "The anthropic backend needs at least one user or assistant message with content.", param="messages"
        )
    for turn in turns:
        content = turn["content"]
        if turn["role"] == "user":  # Anthropic wants a turn's tool results before anything else
            content.sort(key=lambda block: block["type"] != "tool_result")
        if len(content) == 1 and content[0]["type"] == "text":
            turn["content"] = content[0]["text"]
    return "\n\n".join(system) or None, turns


def _system_text(content: Any, i: int) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content or ()):
        if part.get("type") != "text":
            raise unsupported(f"{part.get('type')!r} parts in system messages", f"messages[{i}].content[{j}].type")
        texts.append(part["text"])
    return "\n".join(texts)


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    """Text and image blocks of a user message's (or a tool result's) content; empty texts left out."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content or ()):
        kind = part.get("type")
        if kind == "text":
            if part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{param}[{j}].image_url"))
        else:
            raise unsupported(f"content parts of type {kind!r}", f"{param}[{j}].type")
    return blocks


def _image(image: Any, param: str) -> dict[str, Any]:
    """An image block: a ``data:`` URL -> a base64 source, an http(s) URL -> a url source."""
    url = image.get("url") if isinstance(image, Mapping) else image
    if not isinstance(url, str):
        raise InvalidRequestError(
            "Missing required parameter: 'url'.", param=f"{param}.url", code="missing_required_parameter"
        )
    if url.startswith("data:"):
        header, comma, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if not comma or encoding != "base64" or not media_type:
            raise InvalidRequestError(
                "An image data URL must be base64: data:<media type>;base64,<data>.", param=f"{param}.url"
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError("An image URL must be an http(s) URL or a base64 data URL.", param=f"{param}.url")


def _assistant_blocks(message: Mapping[str, Any], i: int) -> list[dict[str, Any]]:
    if message.get("function_call"):
        raise unsupported("the legacy 'function_call' (use 'tool_calls')", f"messages[{i}].function_call")
    content = message.get("content")
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    else:
        for j, part in enumerate(content or ()):
            kind = part.get("type")
            text = part.get("text") if kind == "text" else part.get("refusal") if kind == "refusal" else None
            if kind not in ("text", "refusal"):
                raise unsupported(f"assistant content parts of type {kind!r}", f"messages[{i}].content[{j}].type")
            if text:
                blocks.append({"type": "text", "text": text})
    for k, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"messages[{i}].tool_calls[{k}]"))
    return blocks


def _tool_use(call: Any, param: str) -> dict[str, Any]:
    """A ``tool_use`` block for an assistant's tool call; its arguments must be a JSON object."""
    if not isinstance(call, Mapping) or call.get("type", "function") != "function":
        raise unsupported("tool calls other than functions", f"{param}.type")
    function = call.get("function")
    if not isinstance(call.get("id"), str) or not isinstance(function, Mapping) or not function.get("name"):
        raise InvalidRequestError(
            "A tool call needs an 'id' and a function 'name'.", param=param, code="missing_required_parameter"
        )
    try:
        arguments = orjson.loads(function.get("arguments") or "{}")
    except orjson.JSONDecodeError:
        arguments = None
    if not isinstance(arguments, dict):
        raise InvalidRequestError("A tool call's arguments must be a JSON object.", param=f"{param}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _tool_result(message: Mapping[str, Any], i: int) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _user_blocks(content, f"messages[{i}].content")
        if parts:
            block["content"] = parts
    return block


def _add_tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice`` (left out when the client named none and parallel calls are on)."""
    tools = []
    for i, tool in enumerate(body["tools"]):
        if tool.get("type", "function") != "function":
            raise unsupported(f"tools of type {tool.get('type')!r}", f"tools[{i}].type")
        function = tool["function"]
        entry = {"name": function["name"], "input_schema": function.get("parameters") or {"type": "object"}}
        if function.get("description"):
            entry["description"] = function["description"]
        tools.append(entry)
    out["tools"] = tools
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        translated = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, Mapping):
        translated = {"type": "tool", "name": choice["function"]["name"]}
    else:
        translated = {"type": "auto"}
    if body.get("parallel_tool_calls") is False and translated["type"] != "none":
        translated["disable_parallel_tool_use"] = True
    if choice is not None or len(translated) > 1:
        out["tool_choice"] = translated


# Replies ----------------------------------------------------------------------------------------


def finish_reason(stop_reason: str | None) -> str:
    return FINISH_REASONS.get(stop_reason or "", "stop")


def with_stop_sequence(choice: dict[str, Any], stopped: Mapping[str, Any]) -> dict[str, Any]:
    """``choice`` with the stop sequence Anthropic reports (a message or a ``message_delta``'s delta)
    as its ``stop_reason`` (vLLM's field; ``/v1/messages`` reads it back as ``stop_sequence``)."""
    if stopped.get("stop_reason") == "stop_sequence" and isinstance(stopped.get("stop_sequence"), str):
        choice["stop_reason"] = stopped["stop_sequence"]
    return choice


def usage_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI's usage for Anthropic's: the prompt counts cached input too (read and written), and
    ``prompt_tokens_details.cached_tokens`` says how much was read from the cache."""
    cache_read = raw.get("cache_read_input_tokens") or 0
    cache_written = raw.get("cache_creation_input_tokens") or 0
    out: dict[str, Any] = usage(
        (raw.get("input_tokens") or 0) + cache_read + cache_written, raw.get("output_tokens") or 0
    )
    if cache_read or cache_written:
        out["prompt_tokens_details"] = {"cached_tokens": cache_read}
    return out


def completion(message: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The ``chat.completion`` for a Messages API reply: its text blocks joined, its ``tool_use``
    blocks as tool calls (other blocks, such as thinking, left out)."""
    texts, calls = [], []
    for block in message.get("content") or ():
        kind = block.get("type")
        if kind == "text":
            texts.append(block.get("text") or "")
        elif kind == "tool_use":
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(tool_call(block["id"], block["name"], arguments))
    content = "".join(texts) if texts or not calls else None
    choice = with_stop_sequence(
        message_choice(0, content, finish_reason(message.get("stop_reason")), calls or None), message
    )
    return chat_completion(completion_id(), int(time.time()), model, [choice], usage_of(message.get("usage") or {}))
