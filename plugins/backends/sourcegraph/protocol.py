"""Sourcegraph's LLM API dialects, as pure functions for the ``sourcegraph`` backend.

- Messages: system prompts folded into the first user message (for instances that reject the
  ``system`` role), and the legacy ``{"speaker": "human" | "assistant", "text": ...}`` transcript.
- Stop reasons (``end_turn``, ``stop_sequence``, ``max_tokens``, ...) -> OpenAI finish reasons.
- Error texts: Sourcegraph answers many errors as plain text, and the first versions of
  ``/.api/llm/chat/completions`` wrap an inner 400 in a 500 (``... got 400 want 200, response body:
  ...``). These helpers unwrap that, and recognise a missing model and the three capability refusals
  (``stream is not supported``, ``system role is not supported``, ``n must be nil or 1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from gateway.errors import InvalidRequestError
from gateway.formats.chat import content_text
from gateway.formats.chat import finish_reason as finish_reason  # Sourcegraph's stop reasons are among its names

Capability = Literal["stream", "system", "n"]

SYSTEM_ROLES = ("system", "developer")

_WRAPPED = re.compile(r"got (\d{3}) want 200, response body: (.*)", re.DOTALL)
_MODEL_MISSING = re.compile(
    r"requested (?:chat )?model is not available|model .{0,300}?(?:not found|does not exist|is not available"
    r"|is not in the correct format)|unknown model|no such model",
    re.IGNORECASE | re.DOTALL,
)
_REFUSALS: tuple[tuple[Capability, re.Pattern[str]], ...] = (
    ("stream", re.compile(r"(?<![\w-])stream(?:ing)? is not supported", re.IGNORECASE)),
    ("system", re.compile(r"system (?:role|messages?|prompts?) (?:is|are) not (?:supported|allowed)", re.IGNORECASE)),
    ("n", re.compile(r"(?<![\w-])n must be (?:nil or )?1|(?<![\w-])n (?:> ?1 )?is not supported", re.IGNORECASE)),
)
_RATE_LIMITED = re.compile(r"rate limit|too many requests|quota exceeded", re.IGNORECASE)


def seconds(created: Any) -> int:
    """A Unix time in seconds; some instances answer milliseconds."""
    if not isinstance(created, int | float) or isinstance(created, bool) or created <= 0:
        return 0
    return int(created // 1000 if created > 100_000_000_000 else created)


# Errors ----------------------------------------------------------------------------------------


def unwrap(status: int, text: str) -> tuple[int, str]:
    """The inner status and message of a 500 that wraps another answer, else the answer as it is."""
    found = _WRAPPED.search(text) if status >= 500 else None
    if found is None:
        return status, text
    return int(found.group(1)), found.group(2).strip()


def model_missing(text: str) -> bool:
    """Whether an error text says the requested model does not exist (or is not available)."""
    return bool(_MODEL_MISSING.search(text))


def refused_capability(status: int, text: str) -> Capability | None:
    """The capability a 400 refuses (``stream``, ``system`` or ``n``), if that is what it says."""
    if status != 400:
        return None
    for capability, pattern in _REFUSALS:
        if pattern.search(text):
            return capability
    return None


def rate_limited(text: str) -> bool:
    return bool(_RATE_LIMITED.search(text))


# Requests --------------------------------------------------------------------------------------


def used_capabilities(body: Mapping[str, Any]) -> frozenset[str]:
    """The capabilities a chat request body relies on."""
    used = set()
    if body.get("stream"):
        used.add("stream")
    if (body.get("n") or 1) > 1:
        used.add("n")
    if any(isinstance(m, dict) and m.get("role") == "system" for m in body.get("messages") or ()):
        used.add("system")
    return frozenset(used)


def max_tokens(body: Mapping[str, Any], default: int) -> int:
    """The request's ``max_completion_tokens`` or ``max_tokens``, else ``default``."""
    for key in ("max_completion_tokens", "max_tokens"):
        if isinstance(body.get(key), int):
            return body[key]
    return default


# Messages --------------------------------------------------------------------------------------


def fold_system(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` without system (and developer) messages: their text goes in front of the first
    user message, separated by a blank line (or becomes a user message when there is none)."""
    prompts, rest = [], []
    for message in messages:
        if message.get("role") in SYSTEM_ROLES:
            prompts.append(content_text(message.get("content")))
        else:
            rest.append(dict(message))
    prefix = "\n\n".join(p for p in prompts if p)
    if not prefix:
        return rest
    for message in rest:
        if message.get("role") == "user":
            message["content"] = _prepend(prefix, message.get("content"))
            return rest
    return [{"role": "user", "content": prefix}, *rest]


def system_as_system(messages: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` with ``developer`` messages as ``system`` (Sourcegraph knows only that role)."""
    return [{**m, "role": "system"} if m.get("role") == "developer" else dict(m) for m in messages]


def _prepend(prefix: str, content: Any) -> Any:
    if isinstance(content, list):
        return [{"type": "text", "text": prefix}, *content]
    return f"{prefix}\n\n{content}" if content else prefix


def legacy_messages(messages: Iterable[Mapping[str, Any]], trailing_assistant: bool = False) -> list[dict[str, str]]:
    """The legacy API's transcript: ``human`` / ``assistant`` speakers with text, system prompts in
    the first human message, consecutive messages of one speaker merged (the legacy API refuses
    them), empty ones dropped; ``trailing_assistant`` ends it with an assistant turn without text,
    as instances from before Anthropic's Messages API expect. Tools and images raise a 400."""
    messages = list(messages)
    for i, message in enumerate(messages):
        if message.get("role") == "tool" or message.get("tool_calls"):
            raise InvalidRequestError(
                "Sourcegraph's legacy completions API has no tool calling.", param=f"messages[{i}]"
            )
        content = message.get("content")
        if isinstance(content, list) and any(isinstance(p, dict) and p.get("type") != "text" for p in content):
            raise InvalidRequestError(
                "Sourcegraph's legacy completions API accepts text content only.", param=f"messages[{i}].content"
            )
    transcript: list[dict[str, str]] = []
    for message in fold_system(messages):
        text = content_text(message.get("content"))
        if not text:
            continue
        speaker = "assistant" if message.get("role") == "assistant" else "human"
        if transcript and transcript[-1]["speaker"] == speaker:
            transcript[-1]["text"] += "\n\n" + text
        else:
            transcript.append({"speaker": speaker, "text": text})
    if trailing_assistant and (not transcript or transcript[-1]["speaker"] != "assistant"):
        transcript.append({"speaker": "assistant"})
    return transcript


def legacy_parameters(body: Mapping[str, Any], max_tokens: int) -> dict[str, Any]:
    """The legacy API's sampling parameters from an OpenAI request."""
    params: dict[str, Any] = {"maxTokensToSample": max_tokens}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK")):
        if body.get(ours) is not None:
            params[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        params["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    return params
