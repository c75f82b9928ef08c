"""What a rule does to a request body: refusal, redaction, system prompt, defaults, caps, alias."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

from gateway.context import RequestContext
from gateway.endpoints import CHAT, COMPLETIONS
from gateway.errors import ContentPolicyError
from gateway_plugins.transforms.config import Rule

REFUSED = "This request was refused by the gateway's content policy."
SYSTEM_ROLES = ("system", "developer")
TOKEN_LIMITS = ("max_tokens", "max_completion_tokens")


def text_fields(body: dict[str, Any]) -> Iterator[tuple[str, Any, Any]]:
    """``(param, container, key)`` of every text the client sent: message contents (strings and text
    parts), the arguments of earlier tool calls, ``prompt`` and ``input`` (strings or lists of
    strings); ``container[key]`` is the text."""
    messages = body.get("messages")
    for i, message in enumerate(messages if isinstance(messages, list) else ()):
        if not isinstance(message, dict):
            continue
        content = message.get("content")
        if isinstance(content, str):
            yield f"messages[{i}].content", message, "content"
        elif isinstance(content, list):
            for j, part in enumerate(content):
                if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                    yield f"messages[{i}].content[{j}].text", part, "text"
        calls = message.get("tool_calls")
        for j, call in enumerate(calls if isinstance(calls, list) else ()):
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                yield f"messages[{i}].tool_calls[{j}].function.arguments", function, "arguments"
    for field in ("prompt", "input"):
        value = body.get(field)
        if isinstance(value, str):
            yield field, body, field
        elif isinstance(value, list):
            for j, item in enumerate(value):
                if isinstance(item, str):
                    yield f"{field}[{j}]", value, j


def apply_rule(rule: Rule, ctx: RequestContext) -> None:
    """Apply one matching rule to ``ctx.body``, in place; raise ``ContentPolicyError`` to refuse."""
    body = ctx.body
    assert body is not None
    if rule.refuse:
        for param, container, key in text_fields(body):
            refusal = rule.refusal(container[key])
            if refusal is not None:
                message = f"{REFUSED} {refusal.message}" if refusal.message else REFUSED
                raise ContentPolicyError(message, param=param)
    if rule.redactions is not None:
        for _, container, key in text_fields(body):
            container[key] = rule.redactions.sub(container[key])
    if rule.system_prompt is not None and isinstance(body.get("messages"), list):
        _system_prompt(body["messages"], rule.system_prompt, rule.system_prompt_mode)
    for field, value in rule.defaults.items():
        if body.get(field) is None:
            body[field] = copy.deepcopy(value)
    for field, cap in rule.caps.items():
        _cap(body, field, cap, ctx.endpoint)
    target = rule.aliases.get(body.get("model"))  # type: ignore[arg-type]
    if target is not None:
        body["model"] = target


def _system_prompt(messages: list[Any], prompt: str, mode: str) -> None:
    system = [m for m in messages if isinstance(m, dict) and m.get("role") in SYSTEM_ROLES]
    if mode == "inject" and system:
        return
    if mode == "replace":
        messages[:] = [m for m in messages if not (isinstance(m, dict) and m.get("role") in SYSTEM_ROLES)]
    messages.insert(0, {"role": "system", "content": prompt})


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cap(body: dict[str, Any], field: str, cap: float, endpoint: str) -> None:
    """Lower ``field`` to ``cap``. A cap on ``max_tokens`` or ``max_completion_tokens`` caps whichever
    of the two the client sent, and sets the capped one when it sent neither (a chat or completion
    request): an output-token ceiling holds whatever the client sends."""
    if field in TOKEN_LIMITS and endpoint in (CHAT.name, COMPLETIONS.name):
        sent = [f for f in TOKEN_LIMITS if _is_number(body.get(f))]
        for name in sent or ["max_tokens" if endpoint == COMPLETIONS.name else field]:
            if not _is_number(body.get(name)) or body[name] > cap:
                body[name] = cap
    elif _is_number(body.get(field)) and body[field] > cap:
        body[field] = cap
