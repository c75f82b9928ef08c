"""gateway/formats/requests.py: the plain-Python check of the commonest chat body accepts only what
the full validation accepts."""

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
    ["Hi"],
    [],
    "Hi",
]


def full_check(body: dict[str, Any]) -> bool:
    """What the validation says with the plain path switched off."""
    try:
        requests._validate(requests.ChatCompletionRequest, body)
        body_copy = dict(body)
        original, requests._plain_chat = requests._plain_chat, lambda body: False
        try:
            validate_chat_request(body_copy)
        finally:
            requests._plain_chat = original
    except InvalidRequestError:
        return False
    return True


@pytest.mark.parametrize(("model", "stream"), list(itertools.product(MODELS, STREAMS)))
def test_the_plain_path_accepts_only_what_the_full_validation_accepts(model: Any, stream: Any) -> None:
    for messages in MESSAGES:
        body = {"model": model, "messages": messages, "stream": stream}
        for extra in ({}, {"temperature": 5}, {"stream_options": {"include_usage": True}}):
            candidate = {**body, **extra}
            if requests._plain_chat(candidate):
                assert full_check(candidate), candidate
                validate_chat_request(candidate)
            elif not full_check(candidate):
                with pytest.raises(InvalidRequestError):
                    validate_chat_request(candidate)


def test_the_plain_path_takes_the_commonest_body() -> None:
    assert requests._plain_chat({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True})
    assert not requests._plain_chat({"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "n": 2})
