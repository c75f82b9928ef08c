"""The connection (``gateway.serving.server``): header and body deadlines (408), a declared body over the limit
(413 at once), and aiohttp's parser errors as OpenAI error objects that echo nothing, over raw sockets."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from structlog.testing import capture_logs

from gateway.testing import mock_config

SECRET = "sk-do-not-echo-0123456789"


def config(**server: Any) -> dict[str, Any]:
    return {**mock_config(), "server": server}


async def exchange(client: Any, *parts: bytes, pause: float = 0.0, within: float = 5.0) -> tuple[bytes, float]:
    """Send ``parts`` (``pause`` s apart, until the server answers or closes); the whole answer up to
    the server's close, and the seconds from the first byte sent to that close."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    started = time.monotonic()

    async def send() -> None:
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(pause)

    sender = asyncio.create_task(send())
    try:
        answer = await asyncio.wait_for(reader.read(-1), within)  # to EOF: the server closes
    finally:
        sender.cancel()
        writer.close()
    return answer, time.monotonic() - started


def parse(answer: bytes) -> tuple[bytes, dict[bytes, bytes], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines)}
    return status, headers, orjson.loads(body)


def assert_error(answer: bytes, status: bytes, code: str) -> dict[str, Any]:
    line, headers, body = parse(answer)
    assert line.startswith(b"HTTP/1.1 " + status), line
    assert headers[b"content-type"].startswith(b"application/json")
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"
    return error


async def test_a_stalled_body_gets_408_and_the_connection_closes(gateway: Any) -> None:
    client = await gateway(config(body_timeout=0.5))
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    head += b"Content-Length: 1000\r\n\r\n"
    answer, took = await exchange(client, head + b'{"model": "')
    error = assert_error(answer, b"408", "request_timeout")
    assert "0.5 s" in error["message"]
    assert 0.5 <= took < 2.5
    # a body that keeps coming, however slowly, is not cut: 0.3 s between reads under a 0.5 s limit
    payload = orjson.dumps({"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}]})
    head = head.replace(b"1000", str(len(payload)).encode()) + b"Connection: close\r\n\r\n"
    head = head.replace(b"\r\n\r\nConnection", b"\r\nConnection")
    pieces = [head, *(payload[i : i + 10] for i in range(0, len(payload), 10))]
    answer, _ = await exchange(client, *pieces, pause=0.3, within=10)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]


async def test_headers_trickled_slowly_get_408_at_the_header_deadline(gateway: Any) -> None:
    client = await gateway(config(header_timeout=0.6))
    start = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\n"
    trickle = [b"X-Slow-%d: x\r\n" % i for i in range(100)]  # one line every 0.1 s: 10 s if let
    with capture_logs() as logs:
        answer, took = await exchange(client, start, *trickle, pause=0.1)
    assert_error(answer, b"408", "request_timeout")
    assert 0.6 <= took < 2.0
    assert [e for e in logs if e["event"] == "request headers timed out" and e["log_level"] == "warning"]
    # a connection that sends nothing at all is closed at the same deadline
    answer, took = await exchange(client)
    assert_error(answer, b"408", "request_timeout")
    assert took < 2.0


async def test_prompt_requests_on_a_kept_alive_connection_are_untouched_by_the_deadlines(gateway: Any) -> None:
    client = await gateway(config(header_timeout=0.3, body_timeout=0.3))
    for _ in range(3):
        resp = await client.post(
            "/v1/chat/completions", json={"model": "mock-gpt-model", "messages": [{"role": "user", "content": "x"}]}
        )
        assert resp.status == 200
        await asyncio.sleep(0.4)  # idle between requests longer than either deadline: keep-alive's job


async def test_a_declared_body_over_the_limit_gets_413_without_waiting_for_it(gateway: Any) -> None:
    client = await gateway(config(max_body_size=1000, body_timeout=30))
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000000\r\n\r\n")
    started = time.monotonic()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)  # no byte of the body sent
    assert time.monotonic() - started < 1.5
    _, headers, _ = parse(head + b"{}")
    error = orjson.loads(await reader.readexactly(int(headers[b"content-length"])))["error"]
    assert head.startswith(b"HTTP/1.1 413") and error["code"] == "request_too_large"
    writer.close()


async def assert_parser_error(client: Any, request: bytes, problem: str) -> None:
    with capture_logs() as logs:
        answer, _ = await exchange(client, request)
    error = assert_error(answer, b"400", "malformed_request")
    assert problem in error["message"]
    assert SECRET not in answer.decode("latin-1") and b"X-Pad" not in answer
    [line] = [e for e in logs if e["event"] == "malformed request"]
    assert line["log_level"] == "warning" and line["problem"] == problem
    assert "exc_info" not in line and SECRET not in repr(logs)
    assert not [e for e in logs if e["log_level"] in ("error", "critical", "exception")]


async def test_a_header_line_too_long_is_an_openai_error_that_echoes_nothing(gateway: Any) -> None:
    client = await gateway()
    key = b"Bearer " + SECRET.encode() + b"x" * 9000
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: " + key + b"\r\n\r\n"
    await assert_parser_error(client, request, "a request line or header is too long")


async def test_too_many_headers_is_an_openai_error(gateway: Any) -> None:
    client = await gateway()
    pads = b"".join(b"X-Pad-%d: %s\r\n" % (i, SECRET.encode()) for i in range(200))
    request = b"GET /v1/models HTTP/1.1\r\nHost: t\r\n" + pads + b"\r\n"
    await assert_parser_error(client, request, "the request has too many headers")


async def test_content_length_with_transfer_encoding_is_an_openai_error(gateway: Any) -> None:
    client = await gateway()
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\nX-Key: " + SECRET.encode() + b"\r\n\r\n0\r\n\r\n"
    )
    await assert_parser_error(client, request, "the request has both Content-Length and Transfer-Encoding")
