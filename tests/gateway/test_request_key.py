"""The canonical request key: what changes it and what does not."""

from __future__ import annotations

from gateway.formats.request_key import request_key

BODY = {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}


def test_framing_and_order_do_not_change_the_key() -> None:
    same = {"stream": True, "stream_options": {"include_usage": True}, "user": "u", "seed": None}
    reordered = dict(reversed(list(BODY.items())))
    assert request_key("chat.completions", BODY) == request_key("chat.completions", reordered | same)


def test_what_changes_the_answer_changes_the_key() -> None:
    base = request_key("chat.completions", BODY)
    for change in ({"temperature": 1}, {"seed": 1}, {"n": 2}, {"stop": ["x"]}, {"tools": []}, {"max_tokens": 5}):
        assert request_key("chat.completions", BODY | change) != base
    assert request_key("completions", BODY) != base
    assert request_key("chat.completions", BODY, model="other") != base
    assert request_key("chat.completions", BODY, scope="tenant-a") != base
    assert len(base) == 32
