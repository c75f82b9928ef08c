"""gateway.upstream.http_client against real servers on 127.0.0.1: raw asyncio servers where the exact bytes
matter (framing, keep-alive, broken answers), aiohttp.web where a real HTTP server is enough."""

from __future__ import annotations

import asyncio
import base64
import errno
import gzip
import json
import socket
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import trustme
from aiohttp import web

from gateway.errors import UpstreamError
from gateway.upstream import http_client, http_response
from gateway.upstream.errors import transport_errors
from gateway.upstream.http_client import HttpClient, UpstreamConnectError
from gateway.upstream.http_response import Response

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/event-stream\r\n\r\n"

Handler = Callable[["Raw", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Raw:
    """A raw HTTP server on 127.0.0.1: ``handle(server, reader, writer)`` speaks on each connection.
    It counts connections (``accepted``, ``open``, ``most_open``), those the client closed (``eofs``),
    and records every request's bytes (``requests``)."""

    def __init__(self, handle: Handler) -> None:
        self.handle = handle
        self.accepted = self.open = self.most_open = self.eofs = 0
        self.served = 0  # answers sent, for handlers that vary them
        self.requests: list[bytes] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.handle(self, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled: by ``stop`` (asyncio would log a cancelled connection task as an error)
        finally:
            self.open -= 1
            writer.close()

    async def request(self, reader: asyncio.StreamReader) -> bytes | None:
        """The next request's head and body, or None when the client closed the connection."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eofs += 1
            return None
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        request = head + await reader.readexactly(length)
        self.requests.append(request)
        return request


def answering(*answers: bytes) -> Handler:
    """Keep-alive: every request gets the next of ``answers`` (the last one repeats)."""

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(reader) is not None:
            writer.write(answers[min(server.served, len(answers) - 1)])
            server.served += 1
            await writer.drain()

    return handle


async def until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds (an assertion error after half a second): for state that
    changes on an event of another party, with nothing to await."""
    try:
        async with asyncio.timeout(0.5):
            while not condition():  # noqa: ASYNC110 (no event to wait for)
                await asyncio.sleep(0.002)
    except TimeoutError:
        raise AssertionError("the condition did not hold in time") from None


async def fetch(client: HttpClient, method: str = "GET", target: str = "/", body: bytes | None = None) -> bytes:
    response = await asyncio.wait_for(client.request(method, target, body), 0.5)
    try:
        return await asyncio.wait_for(response.read(), 0.5)
    finally:
        response.release()


async def body_of(response: Response, how: str) -> bytes:
    """The body, with ``read`` or by iterating it as it arrives."""
    if how == "read":
        return await asyncio.wait_for(response.read(), 0.5)
    blocks = []
    async with asyncio.timeout(0.5):
        async for block in response.content.iter_any():
            blocks.append(block)
    return b"".join(blocks)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Raw]]]:
    servers: list[Raw] = []

    async def start(handle: Handler) -> Raw:
        server = Raw(handle)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def connect() -> AsyncIterator[Callable[..., HttpClient]]:
    clients: list[HttpClient] = []

    def make(url: str, **options: Any) -> HttpClient:
        client = HttpClient(url, connect_timeout=0.5, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


# The request


async def test_sequential_requests_share_one_connection_and_go_out_byte_exact(serve: Any, connect: Any) -> None:
    server = await serve(answering(OK))
    client = connect(server.url + "/v1", headers={"Authorization": "Bearer k", "X-Fixed": "f"})
    for _ in range(3):
        response = await client.request("POST", "/v1/chat?x=1", b'{"a":1}', headers={"X-Per": "p"})
        assert (response.status, response.reason, response.headers["Content-Length"]) == (200, "OK", "2")
        assert await response.read() == b"ok"
        response.release()
    assert await fetch(client, "GET", "/v1/models") == b"ok"
    assert await fetch(client, "POST", "/empty") == b"ok"
    assert server.accepted == 1
    host = b"Host: 127.0.0.1:%d\r\n" % server.port
    fixed = host + b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\nAuthorization: Bearer k\r\nX-Fixed: f\r\n"
    assert server.requests[0] == (
        b"POST /v1/chat?x=1 HTTP/1.1\r\n" + fixed + b"X-Per: p\r\nContent-Length: 7\r\n\r\n" + b'{"a":1}'
    )
    assert server.requests[1:3] == server.requests[:1] * 2
    assert server.requests[3] == b"GET /v1/models HTTP/1.1\r\n" + fixed + b"\r\n"
    assert server.requests[4] == b"POST /empty HTTP/1.1\r\n" + fixed + b"Content-Length: 0\r\n\r\n"


async def test_header_values_go_out_in_utf_8_as_aiohttp_sends_them(serve: Any, connect: Any) -> None:
    server = await serve(answering(OK))
    client = connect(server.url, headers={"X-Team": "équipe"})
    assert await fetch(client, "GET", "/") == b"ok"
    assert "X-Team: équipe\r\n".encode() in server.requests[0]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://example.com/v1", "example.com"),
        ("http://example.com:80", "example.com"),
        ("http://example.com:443", "example.com:443"),
        ("https://example.com:443/v1", "example.com"),
        ("https://example.com:8443", "example.com:8443"),
        ("http://[::1]:8080", "[::1]:8080"),
    ],
)
async def test_the_host_header_names_the_port_only_when_not_the_default(url: str, host: str) -> None:
    assert HttpClient(url).headers["Host"] == host


@pytest.mark.parametrize(
    ("userinfo", "credentials"), [("user:p%40ss", b"user:p@ss"), ("us%20er", b"us er:"), ("user:", b"user:")]
)
async def test_userinfo_in_the_url_is_sent_as_basic_auth(
    serve: Any, connect: Any, userinfo: str, credentials: bytes
) -> None:
    server = await serve(answering(OK))
    assert await fetch(connect(server.url.replace("//", f"//{userinfo}@"))) == b"ok"
    assert b"\r\nAuthorization: Basic " + base64.b64encode(credentials) + b"\r\n" in server.requests[0]


async def test_a_configured_authorization_header_wins_over_userinfo(serve: Any, connect: Any) -> None:
    server = await serve(answering(OK))
    client = connect(server.url.replace("//", "//user:pw@"), headers={"authorization": "Bearer k"})
    assert await fetch(client) == b"ok"
    assert b"\r\nauthorization: Bearer k\r\n" in server.requests[0]
    assert b"Basic" not in server.requests[0]


# Reading the answer


async def test_a_chunked_answer_arrives_as_it_is_sent_and_its_connection_is_reused(serve: Any, connect: Any) -> None:
    gate = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(CHUNKED_HEAD + b"5\r\nfirst\r\n")
        await gate.wait()
        writer.write(b"6\r\nsecond\r\n5\r\nthird\r\n0\r\n\r\n")
        await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url)
    response = await asyncio.wait_for(client.request("POST", "/stream", b"{}"), 0.5)
    assert response.content_type == "text/event-stream"
    blocks = response.content.iter_any().__aiter__()
    assert await asyncio.wait_for(blocks.__anext__(), 0.5) == b"first"  # the server is still held
    gate.set()
    assert b"".join([block async for block in blocks]) == b"secondthird"
    assert response.complete
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize("how", ["read", "iterate"])
async def test_a_chunked_answer_in_many_writes_is_read_whole(serve: Any, connect: Any, how: str) -> None:
    pieces = [b"%x\r\n%s\r\n" % (len(p), p) for p in (b"alpha ", b"beta ", b"gamma")]

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(CHUNKED_HEAD)
        for piece in [*pieces, b"0\r\n\r\n"]:
            await writer.drain()
            writer.write(piece)
        await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url)
    response = await client.request("GET", "/")
    assert await body_of(response, how) == b"alpha beta gamma"
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize(
    ("answer", "connections"),
    [
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok", 3),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
        (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok", 1),
    ],
)
async def test_an_answer_that_ends_its_connection_is_not_reused(
    serve: Any, connect: Any, answer: bytes, connections: int
) -> None:
    server = await serve(answering(answer))  # the server keeps every connection open: the client closes it
    client = connect(server.url)
    for _ in range(3):
        assert await fetch(client) == b"ok"
    assert server.accepted == connections
    await until(lambda: server.eofs == connections - 1)


@pytest.mark.parametrize("how", ["read", "iterate"])
async def test_a_body_delimited_by_the_end_of_the_connection_is_read_whole(serve: Any, connect: Any, how: str) -> None:
    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if await server.request(reader) is None:
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        writer.write(b"part two")
        await writer.drain()

    server = await serve(handle)
    client = connect(server.url)
    for _ in range(2):
        response = await client.request("GET", "/")
        assert response.until_close
        assert await body_of(response, how) == b"part one, part two"
        response.release()
    assert server.accepted == 2


async def test_an_interim_answer_is_skipped_and_an_answer_without_body_keeps_the_connection(
    serve: Any, connect: Any
) -> None:
    server = await serve(
        answering(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\nX-A: 1\r\nX-A: 2\r\n\r\nnew",
            b"HTTP/1.1 204 No Content\r\n\r\n",
            OK,
        )
    )
    client = connect(server.url)
    response = await client.request("POST", "/", b"x")
    assert (response.status, response.reason, response.headers.getall("x-a")) == (201, "Created", ["1", "2"])
    assert response.content_type == "application/octet-stream"
    assert await response.read(2) == b"ne"
    response.release()
    response.release()  # twice is harmless
    response = await client.request("DELETE", "/")
    assert (response.status, await response.read()) == (204, b"")
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("chunked", [False, True])
async def test_compressed_answers_are_decoded(serve: Any, connect: Any, encoding: str, chunked: bool) -> None:
    text = b"hello, compressed world " * 500
    data = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    if chunked:
        pieces = [data[i : i + 100] for i in range(0, len(data), 100)]
        framed = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Encoding: %s\r\n\r\n" % encoding.encode()
        answer += framed
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Encoding: %s\r\n\r\n" % (
            len(data),
            encoding.encode(),
        )
        answer += data
    server = await serve(answering(answer, OK))
    client = connect(server.url)
    assert await fetch(client) == text
    assert await fetch(client) == b"ok"
    assert server.accepted == 1


@pytest.mark.parametrize("how", ["read", "iterate"])
@pytest.mark.parametrize("split", [False, True])
async def test_a_corrupt_gzip_body_is_a_payload_error(serve: Any, connect: Any, how: str, split: bool) -> None:
    body = b"this is not gzip at all"
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Encoding: gzip\r\n\r\n" % len(body)
    gate = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted > 1:
            return await answering(OK)(server, reader, writer)
        await server.request(reader)
        if split:  # the body arrives while the client is reading
            writer.write(head)
            await gate.wait()
            writer.write(body)
        else:
            writer.write(head + body)
        await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url)
    response = await client.request("GET", "/")
    asyncio.get_running_loop().call_later(0.01, gate.set)
    with pytest.raises(aiohttp.ClientPayloadError, match="gzip"):
        await body_of(response, how)
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 2  # the broken connection was not reused


# Broken answers


async def test_a_server_closing_before_answering_is_a_server_disconnected_error(serve: Any, connect: Any) -> None:
    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await asyncio.wait_for(client.request("GET", "/"), 0.5)
    with pytest.raises(UpstreamError, match="broke the connection"), transport_errors("up"):
        await asyncio.wait_for(client.request("GET", "/"), 0.5)  # the slot was freed
    assert server.accepted == 2


@pytest.mark.parametrize("how", ["read", "iterate"])
@pytest.mark.parametrize(
    "answer",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789", CHUNKED_HEAD + b"a\r\n0123456789\r\n"],
    ids=["content-length", "chunked"],
)
async def test_a_server_closing_mid_body_is_a_payload_error(serve: Any, connect: Any, how: str, answer: bytes) -> None:
    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted == 1:
            await server.request(reader)
            writer.write(answer)
            await writer.drain()
        else:
            await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    response = await client.request("GET", "/")
    if how == "iterate":
        blocks = []
        with pytest.raises(aiohttp.ClientPayloadError):
            async with asyncio.timeout(0.5):
                async for block in response.content.iter_any():
                    blocks.append(block)
        assert b"".join(blocks) == b"0123456789"
    else:
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.read(), 0.5)
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 2


async def test_invalid_http_is_a_payload_error(serve: Any, connect: Any) -> None:
    server = await serve(answering(b"SPDY/9 nonsense\r\n\r\n", OK))
    client = connect(server.url, max_connections=1)
    with pytest.raises(aiohttp.ClientPayloadError, match="not valid HTTP"):
        await asyncio.wait_for(client.request("GET", "/"), 0.5)
    assert await fetch(client) == b"ok"
    assert server.accepted == 2


@pytest.mark.parametrize("how", ["read", "iterate"])
async def test_invalid_chunk_framing_mid_body_is_a_payload_error(serve: Any, connect: Any, how: str) -> None:
    server = await serve(answering(CHUNKED_HEAD + b"5\r\nfirst\r\nzz\r\nmore\r\n", OK))
    client = connect(server.url)
    response = await client.request("GET", "/")
    with pytest.raises(aiohttp.ClientPayloadError, match="not valid HTTP"):
        await body_of(response, how)
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 2


# Releasing, cancelling, limits


def held_stream(gate: asyncio.Event | None) -> Handler:
    """The first connection: a chunked answer's first chunk, the rest once ``gate`` is set (never when
    None: the connection stays open until the client closes it). Then ``OK`` to every request."""

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted == 1:
            await server.request(reader)
            writer.write(CHUNKED_HEAD + b"5\r\nfirst\r\n")
            if gate is None:
                assert await server.request(reader) is None
                return
            await gate.wait()
            writer.write(b"4\r\nrest\r\n0\r\n\r\n")
        await answering(OK)(server, reader, writer)

    return handle


async def test_an_answer_released_unfinished_whose_rest_arrives_in_time_keeps_its_connection(
    serve: Any, connect: Any
) -> None:
    gate = asyncio.Event()
    server = await serve(held_stream(gate))
    client = connect(server.url, max_connections=1)
    response = await client.request("GET", "/")
    assert await asyncio.wait_for(response.read(5), 0.5) == b"first"
    response.release()
    gate.set()
    assert await fetch(client) == b"ok"  # waits for the slot: the drain
    assert server.accepted == 1


async def test_an_answer_released_unfinished_whose_rest_is_late_closes_its_connection(
    serve: Any, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_response, "DRAIN", 0.05)
    server = await serve(held_stream(None))
    client = connect(server.url, max_connections=1)
    response = await client.request("GET", "/")
    assert await asyncio.wait_for(response.content.iter_any().__anext__(), 0.5) == b"first"
    response.release()
    assert await fetch(client) == b"ok"
    assert server.accepted == 2
    await until(lambda: server.eofs == 1)  # the client closed the first connection


async def test_an_answer_until_close_released_unfinished_closes_its_connection_at_once(
    serve: Any, connect: Any
) -> None:
    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted > 1:
            return await answering(OK)(server, reader, writer)
        await server.request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nthe start, and the rest never comes")
        assert await server.request(reader) is None

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    response = await client.request("GET", "/")
    assert await asyncio.wait_for(response.read(3), 0.5) == b"the"
    response.release()
    await until(lambda: server.eofs == 1)  # no drain: its end would be the connection's
    assert await fetch(client) == b"ok"


async def test_cancelling_a_request_waiting_for_its_answer_closes_its_connection_and_frees_its_slot(
    serve: Any, connect: Any
) -> None:
    asked = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted <= 2:
            await server.request(reader)
            asked.set()
            assert await server.request(reader) is None  # no answer, until the client goes away
        else:
            await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    task = asyncio.create_task(client.request("GET", "/hang"))
    await asyncio.wait_for(asked.wait(), 0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: server.eofs == 1)
    with pytest.raises(TimeoutError):  # a timeout is a cancellation too
        await asyncio.wait_for(client.request("GET", "/hang"), 0.05)
    await until(lambda: server.eofs == 2)
    assert await fetch(client) == b"ok"
    assert server.accepted == 3


async def test_max_connections_holds_a_second_request_until_the_first_is_done(serve: Any, connect: Any) -> None:
    gate = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(reader) is not None:
            await gate.wait()
            writer.write(OK)

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    tasks = [asyncio.create_task(fetch(client)) for _ in range(2)]
    await until(lambda: len(server.requests) == 1)
    await asyncio.sleep(0.02)  # time for a second connection, were one allowed
    assert (server.accepted, len(server.requests)) == (1, 1)
    gate.set()
    assert await asyncio.gather(*tasks) == [b"ok", b"ok"]
    assert (server.accepted, server.most_open) == (1, 1)


async def test_max_connections_with_answers_that_close_their_connection(serve: Any, connect: Any) -> None:
    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        await asyncio.sleep(0.01)  # time for another connection, were one allowed
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    server = await serve(handle)
    client = connect(server.url, max_connections=1)
    assert await asyncio.gather(*(fetch(client) for _ in range(3))) == [b"ok"] * 3
    assert (server.accepted, server.most_open) == (3, 1)


async def test_a_refused_connection_is_an_upstream_connect_error(connect: Any) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = connect(f"http://127.0.0.1:{port}", max_connections=1)
    with pytest.raises(UpstreamConnectError) as caught:
        await client.request("GET", "/")
    assert caught.value.errno == errno.ECONNREFUSED
    assert caught.value.os_error.errno == errno.ECONNREFUSED
    with pytest.raises(UpstreamError, match="unreachable: connection refused"), transport_errors("up"):
        await asyncio.wait_for(client.request("GET", "/"), 0.5)  # the slot was freed


@pytest.mark.parametrize("how", ["read", "iterate"])
async def test_a_large_body_pauses_reading_and_arrives_intact(
    serve: Any, connect: Any, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setattr(http_response, "HIGH_WATER", 1024)
    body = bytes(range(256)) * 4096  # 1 MiB

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await server.request(reader) is not None:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    server = await serve(handle)
    client = connect(server.url)
    for _ in range(2):
        response = await client.request("GET", "/")
        await until(lambda: response._paused)  # noqa: B023 (awaited in this iteration)
        assert await body_of(response, how) == body
        assert not response._paused
        response.release()
    assert server.accepted == 1


# Idle connections


async def test_an_expired_connection_is_not_reused(serve: Any, connect: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http_client, "KEEPALIVE", 0)
    server = await serve(answering(OK))
    client = connect(server.url)
    for _ in range(3):
        assert await fetch(client) == b"ok"
    assert server.accepted == 3
    await until(lambda: server.eofs == 2)  # the client closed the expired ones


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve: Any, connect: Any) -> None:
    released = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.request(reader)
        writer.write(OK)  # keep-alive
        await released.wait()  # then gone

    server = await serve(handle)
    client = connect(server.url)
    assert await fetch(client) == b"ok"
    (idle,) = client._idle
    released.set()
    await until(lambda: idle.closed)
    assert await fetch(client) == b"ok"
    assert server.accepted == 2


async def test_a_server_talking_on_an_idle_connection_gets_it_closed(serve: Any, connect: Any) -> None:
    released = asyncio.Event()

    async def handle(server: Raw, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if server.accepted == 1:
            await server.request(reader)
            writer.write(OK)
            await released.wait()
            writer.write(OK)  # an answer nobody asked for
            assert await server.request(reader) is None
        else:
            await answering(OK)(server, reader, writer)

    server = await serve(handle)
    client = connect(server.url)
    assert await fetch(client) == b"ok"
    released.set()
    await until(lambda: server.eofs == 1)
    assert await fetch(client) == b"ok"
    assert server.accepted == 2


async def test_close_closes_idle_connections_then_those_in_use_when_released(serve: Any, connect: Any) -> None:
    server = await serve(answering(OK))
    client = connect(server.url)
    first = await client.request("GET", "/")
    second = await client.request("GET", "/")  # the first is busy: a second connection
    assert await first.read() == b"ok"
    first.release()
    assert not client.closed
    await client.close()
    assert client.closed
    await until(lambda: server.eofs == 1)
    assert await second.read() == b"ok"
    second.release()
    await until(lambda: server.eofs == 2)
    with pytest.raises(aiohttp.ClientOSError, match="closed"):
        await client.request("GET", "/")
    assert server.accepted == 2


# With aiohttp.web: a real server, and TLS


def echo_app() -> web.Application:
    async def echo(request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        response = web.json_response({"body": (await request.read()).decode(), "peer": list(peer or ())})
        response.enable_compression()
        return response

    app = web.Application()
    app.router.add_post("/echo", echo)
    return app


async def test_an_aiohttp_server_compressing_its_answers(aiohttp_server: Any, connect: Any) -> None:
    server = await aiohttp_server(echo_app())
    client = connect(str(server.make_url("/")))
    answers = []
    for n in range(2):
        response = await client.request("POST", "/echo", b"x" * 2000 * (n + 1))
        assert response.headers["Content-Encoding"] in ("gzip", "deflate")
        answers.append(json.loads(await response.read()))
        response.release()
    assert [a["body"] for a in answers] == ["x" * 2000, "x" * 4000]
    assert answers[0]["peer"] == answers[1]["peer"]  # one connection


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


async def test_https_with_a_trusted_ca(aiohttp_server: Any, connect: Any, ca: trustme.CA) -> None:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = await aiohttp_server(echo_app(), ssl=server_context)
    url = f"https://127.0.0.1:{server.port}/v1"
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    client = connect(url, ssl_context=client_context)
    peers = []
    for body in (b"one", b"two"):
        response = await client.request("POST", "/echo", body)
        answer = json.loads(await response.read())
        response.release()
        assert answer["body"] == body.decode()
        peers.append(answer["peer"])
    assert peers[0] == peers[1]

    untrusting = connect(url)  # the system's CAs do not know this one
    with pytest.raises(UpstreamConnectError) as caught:
        await client_request(untrusting)
    assert isinstance(caught.value, OSError)
    assert isinstance(caught.value.os_error, ssl.SSLCertVerificationError)
    with pytest.raises(UpstreamError, match="'up' is unreachable: certificate verify failed: "), transport_errors("up"):
        await client_request(untrusting)


async def client_request(client: HttpClient) -> None:
    response = await asyncio.wait_for(client.request("POST", "/echo", b"x"), 0.5)
    response.release()
