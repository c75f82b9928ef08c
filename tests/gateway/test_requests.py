"""gateway/formats/requests.py: the plain-Python check of the commonest chat body, and the check in
parts (messages one by one, the rest with one message), accept exactly what the full validation accepts."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from gateway.errors import InvalidRequestError
from gateway.formats import requests
from gateway.formats.requests import validate_chat_request

MODELS = ["gpt-4o", None, 3, ["gpt"], ""]
STREAMS = [True, False, None, 1, "true"]
MESSAGES: list[Any] = [
    [{"role": "user", "content": "Hi"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "assistant", "content": "Hello"}],
    [{"role": "tool", "content": "42"}],
    [{"role": "user", "content": None}],
    [{"role": "user", "content": 5}],
    [{"role": ["user"], "content": "Hi"}],
    [{"role": "wizard", "content": "Hi"}],
    [{"role": "user"}],
    [{"role": "user", "content": "Hi", "name": "ann"}],
    [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}],
    [{"role": "user", "content": [{"type": "text"}]}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function"}]}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": None}],
    [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42", "tool_call_id": "c"}],
    [{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42", "tool_call_id": ""}],
    ["Hi"],
    [],
    "Hi",
]


EXTRAS: list[dict[str, Any]] = [
    {},
    {"temperature": 5},
    {"temperature": 0.5, "max_tokens": 10},
    {"stream_options": {"include_usage": True}},
    {"tools": [{"type": "function"}]},
    {"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
]


def full_check(body: dict[str, Any]) -> bool:
    """What the validation says with the plain path switched off."""
    try:
        requests._validate(requests.ChatCompletionRequest, body)
        body_copy = dict(body)
        plain, parts = requests._plain_chat, requests._valid_in_parts
        requests._plain_chat = requests._valid_in_parts = lambda body: False
        try:
            validate_chat_request(body_copy)
        finally:
            requests._plain_chat, requests._valid_in_parts = plain, parts
    except InvalidRequestError:
        return False
    return True


@pytest.mark.parametrize(("model", "stream"), list(itertools.product(MODELS, STREAMS)))
def test_the_quick_paths_accept_exactly_what_the_full_validation_accepts(model: Any, stream: Any) -> None:
    for messages in MESSAGES:
        body = {"model": model, "messages": messages, "stream": stream}
        for extra in EXTRAS:
            candidate = {**body, **extra}
            valid = full_check(candidate)
            if requests._plain_chat(candidate):
                assert valid, candidate
            assert requests._valid_in_parts(candidate) == valid, candidate
            if valid:
                validate_chat_request(candidate)
            else:
                with pytest.raises(InvalidRequestError):
                    validate_chat_request(candidate)


def test_the_plain_path_takes_the_commonest_body() -> None:
    assert requests._plain_chat({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert not requests._plain_chat({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "n": 2})
