"""The outside probe's findings (issue 19), each driven over the wire against the example configs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

EXAMPLES = Path(__file__).parents[2] / "config" / "examples"
MESSAGES: Any = [{"role": "user", "content": "Hello!"}]


def nested(depth: int) -> bytes:
    """A chat body whose ``metadata`` is ``depth`` lists deep."""
    return (
        b'{"model":"mock-gpt-model","messages":[{"role":"user","content":"hi"}],"x":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


@pytest.fixture
def upstream() -> Iterator[tuple[OpenAIUpstream, str]]:
    fake = OpenAIUpstream()
    fake.default = Reply(content="fine")
    with ServerThread(fake.app) as server:
        yield fake, server.url + "/v1"


def test_bodies_nested_too_deep_get_400_and_break_nothing(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = upstream
    monkeypatch.setenv("OPENAI_API_BASE", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    with ServerThread(make_app(EXAMPLES / "openai.yaml")) as gateway:
        for depth in (300, 238, 238):  # 238 lists in the body's object: one level over the limit
            answer = requests.post(
                gateway.url + "/v1/chat/completions",
                data=nested(depth),
                headers={"Content-Type": "application/json"},
                timeout=10,
            )
            assert answer.status_code == 400, answer.text
            assert answer.json()["error"]["type"] == "invalid_request_error"
            assert "nested" in answer.json()["error"]["message"]
        fine = requests.post(
            gateway.url + "/v1/chat/completions", json={"model": "mock-gpt-model", "messages": MESSAGES}, timeout=10
        )
        assert fine.status_code == 200, fine.text
        assert fine.json()["choices"][0]["message"]["content"] == "fine"
        deep_but_fine = requests.post(
            gateway.url + "/v1/chat/completions",
            data=nested(237),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert deep_but_fine.status_code == 200, deep_but_fine.text
    assert len(fake.requests) == 2


def raw_post(url: str, headers: bytes, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST ``body`` with header lines given as raw bytes (invalid UTF-8 included); status and JSON."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + headers
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(payload)


BAD_KEYS = [b"Authorization: Bearer sk-\xff\xfe-bad\r\n", b"x-api-key: gw-\xc3\x28-bad\r\n"]
CHAT_BODY = orjson.dumps({"model": "mock-gpt-model", "messages": MESSAGES})


@pytest.mark.parametrize("header", BAD_KEYS)
def test_a_key_that_is_not_utf8_gets_401(header: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", "gw-example-admin-5d1c9e7a")
    monkeypatch.setenv("GATEWAY_LIMITED_KEY", "gw-example-limited-8b2f4a6e")
    with ServerThread(make_app(EXAMPLES / "auth.yaml")) as gateway:
        status, body = raw_post(gateway.url, header, CHAT_BODY)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


def test_a_forwarded_key_that_is_not_utf8_gets_401_not_502(upstream: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fake, url = upstream
    monkeypatch.setenv("OPENAI_API_BASE", url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream")
    with ServerThread(make_app(EXAMPLES / "openai.yaml")) as gateway:
        status, body = raw_post(gateway.url, BAD_KEYS[0], CHAT_BODY)
        info = requests.get(gateway.url + "/info", timeout=5).json()
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert not fake.requests
    assert "failed" not in str(info.get("deployments", {}))
