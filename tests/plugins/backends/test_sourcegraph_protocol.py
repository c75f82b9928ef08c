"""Sourcegraph's dialects: error texts, stop reasons, timestamps and message translation."""

from __future__ import annotations

import pytest

from gateway.errors import InvalidRequestError
from gateway_plugins.backends.sourcegraph import protocol as sg

WRAPPED = (
    "failed to forward request to apiHandler: handler returned unexpected status code: got 400 want 200, "
    'response body: the requested chat model is not available ("anthropic::unknown::claude-gpt", onProTier=true)\n'
)


def test_a_500_wrapping_an_inner_answer_is_unwrapped() -> None:
    status, text = sg.unwrap(500, WRAPPED)
    assert status == 400 and text.startswith("the requested chat model is not available")
    assert sg.unwrap(400, "got 500 want 200, response body: x") == (400, "got 500 want 200, response body: x")
    assert sg.unwrap(502, "bad gateway") == (502, "bad gateway")


@pytest.mark.parametrize(
    ("text", "missing"),
    [
        ('the requested chat model is not available ("x", onProTier=true)', True),
        ("model anthropic/claude-3-haiku is not in the correct format. Expected format: ...", True),
        ("model gpt-9 not found", True),
        ("stream is not supported", False),
        ("response_format is not supported", False),
        ("Invalid access token.", False),
    ],
)
def test_model_missing(text: str, missing: bool) -> None:
    assert sg.model_missing(text) is missing


@pytest.mark.parametrize(
    ("status", "text", "capability"),
    [
        (400, "stream is not supported", "stream"),
        (400, "stream_options is not supported", None),
        (400, "system role is not supported", "system"),
        (400, "n must be nil or 1", "n"),
        (400, "seed is not supported", None),
        (500, "stream is not supported", None),
    ],
)
def test_refused_capability(status: int, text: str, capability: str | None) -> None:
    assert sg.refused_capability(status, text) == capability


def test_finish_reasons_and_timestamps() -> None:
    assert [sg.finish_reason(r) for r in ("end_turn", "stop_sequence", "max_tokens", "tool_use", "", None, "?")] == [
        "stop",
        "stop",
        "length",
        "tool_calls",
        "stop",
        "stop",
        "stop",
    ]
    assert sg.seconds(1727692163829) == 1727692163
    assert sg.seconds(1727692163) == 1727692163
    assert sg.seconds(None) == sg.seconds(True) == 0


def test_fold_system_without_a_user_message_makes_one() -> None:
    folded = sg.fold_system([{"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}])
    assert folded == [{"role": "user", "content": "S"}, {"role": "assistant", "content": "A"}]
    assert sg.fold_system([{"role": "user", "content": None}, {"role": "developer", "content": "D"}]) == [
        {"role": "user", "content": "D"}
    ]


def test_legacy_messages() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": None},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
    ]
    assert sg.legacy_messages(messages) == [{"speaker": "human", "text": "a\n\nb"}]
    assert sg.legacy_messages(messages, trailing_assistant=True)[-1] == {"speaker": "assistant"}
    with pytest.raises(InvalidRequestError) as caught:
        sg.legacy_messages([{"role": "system", "content": "s"}, *messages, {"role": "tool", "content": "r"}])
    assert caught.value.param == "messages[4]"


def test_legacy_parameters() -> None:
    body = {"temperature": 0, "top_p": 0.5, "stop": ["x", "y"], "top_k": 3}
    assert sg.legacy_parameters(body, 10) == {
        "maxTokensToSample": 10,
        "temperature": 0,
        "topP": 0.5,
        "topK": 3,
        "stopSequences": ["x", "y"],
    }
