"""Upstream proxies from the environment (gateway/upstream/proxy.py) in both upstream clients: the
lean one (openai_compat) and aiohttp's (http_template), through a real HTTP proxy on 127.0.0.1
written here with asyncio (``CONNECT`` tunnels for https, absolute-form requests for http). The
upstreams are named ``upstream.test``, a name only the proxy can resolve: an answer proves the
request went through it. tests/conftest.py clears the machine's own proxy settings for every test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trustme

from gateway.upstream.proxy import parse, proxy_for
from tests.upstreams.chat_api import ChatAPI
from tests.upstreams.openai import OpenAIUpstream

NAME = "upstream.test"
MESSAGES = [{"role": "user", "content": "through the proxy"}]


class Proxy:
    """An HTTP proxy: ``CONNECT host:port`` opens a tunnel, an absolute-form request is forwarded
    (its connection piped on). Only ``upstream.test`` resolves, to 127.0.0.1; ``credentials``, when
    set, are required (407 without them). ``seen`` records each connection's first request line."""

    def __init__(self, credentials: str | None = None) -> None:
        self.credentials = credentials
        self.seen: list[str] = []
        self.authorizations: list[str | None] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        line, *fields = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (f.partition(":") for f in fields if f)}
        self.seen.append(line)
        self.authorizations.append(headers.get("proxy-authorization"))
        if self.credentials and headers.get("proxy-authorization") != "Basic " + base64.b64encode(
            self.credentials.encode()
        ).decode("ascii"):
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        method, target, _ = line.split(" ")
        authority = target if method == "CONNECT" else target.split("/")[2]
        host, _, port = authority.rpartition(":")
        if host != NAME:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", int(port))
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def trusted(ca: trustme.CA, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[ssl.SSLContext]:
    """The server side TLS context of ``upstream.test``, its CA trusted by the gateway (SSL_CERT_FILE)."""
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(NAME).configure_cert(context)
    yield context


@contextlib.asynccontextmanager
async def serving(aiohttp_server: Any, app: Any, context: ssl.SSLContext | None) -> AsyncIterator[int]:
    server = await aiohttp_server(app, ssl=context)
    yield server.port


def openai_backend(base_url: str) -> dict[str, Any]:
    return {
        "backends": [{"name": "up", "type": "openai_compat", "base_url": base_url, "api_key": "sk-up", "timeout": 10}],
        "models": [{"name": "*", "backend": "up"}],
    }


def template_backend(url: str) -> dict[str, Any]:
    backend = {
        "name": "chat",
        "type": "http_template",
        "url": url,
        "models": ["custom-chat"],
        "body": {"message": "{{ last_user_message }}", "history": "{{ history }}"},
        "response": {"text": "reply"},
        "timeout": 10,
    }
    return {"backends": [backend]}


# The environment ---------------------------------------------------------------------------------


def test_which_proxy_the_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:3128")
    monkeypatch.setenv("HTTP_PROXY", "proxy.corp:8080")  # a bare host:port is http://
    found = proxy_for("https://api.openai.com/v1")
    assert found is not None and (found.url, found.user, found.password) == ("http://proxy.corp:3128", "user", "p@ss")
    assert found.authorization == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert proxy_for("http://ollama.lan:11434/v1").url == "http://proxy.corp:8080"  # type: ignore[union-attr]
    monkeypatch.setenv("https_proxy", "http://lower.corp:1")  # lowercase wins, as in urllib
    assert proxy_for("https://api.openai.com/v1").url == "http://lower.corp:1"  # type: ignore[union-attr]
    for loopback in ("http://127.0.0.1:8000/v1", "https://localhost/v1", "http://[::1]:1/v1", "http://127.8.9.1/"):
        assert proxy_for(loopback) is None  # never proxied
    monkeypatch.setenv("NO_PROXY", "internal.corp, .example.com,api.other.com:8443")
    assert proxy_for("https://llm.internal.corp/v1") is None
    assert proxy_for("https://example.com/v1") is None and proxy_for("https://a.b.example.com/v1") is None
    assert proxy_for("https://api.other.com:8443/v1") is None
    assert proxy_for("https://api.other.com/v1") is not None  # another port
    assert proxy_for("https://notexample.com/v1") is not None
    monkeypatch.setenv("NO_PROXY", "*")
    assert proxy_for("https://api.openai.com/v1") is None
    with pytest.raises(ValueError, match=r"HTTPS_PROXY=socks5://h:1: only http:// proxies are supported"):
        parse("socks5://h:1", "https_proxy")


# The lean client (openai_compat) -------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_https_through_a_connect_tunnel_with_credentials(
    gateway: Any, aiohttp_server: Any, trusted: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    fake = OpenAIUpstream()
    async with serving(aiohttp_server, fake.app, trusted) as port, Proxy("user:secret") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url.replace("http://", "http://user:secret@"))
        client = await gateway(openai_backend(f"https://{NAME}:{port}/v1"))
        for _ in range(2):  # the second on the same tunnel
            resp = await client.post(
                "/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream}
            )
            assert resp.status == 200, await resp.text()
            assert b"Hello from upstream" in await resp.read() or stream
    assert proxy.seen == [f"CONNECT {NAME}:{port} HTTP/1.1"]  # one tunnel, kept alive
    assert fake.last.headers["Authorization"] == "Bearer sk-up"  # inside the tunnel, as without a proxy


async def test_http_through_a_proxy_in_absolute_form(
    gateway: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = OpenAIUpstream()
    async with serving(aiohttp_server, fake.app, None) as port, Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        client = await gateway(openai_backend(f"http://{NAME}:{port}/v1"))
        resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
        assert resp.status == 200, await resp.text()
    assert proxy.seen == [f"POST http://{NAME}:{port}/v1/chat/completions HTTP/1.1"]
    assert fake.last.headers["Host"] == f"{NAME}:{port}"


async def test_a_refusing_or_missing_proxy_is_a_502_naming_it(
    gateway: Any, aiohttp_server: Any, trusted: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Proxy("user:secret") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)  # no credentials: 407
        client = await gateway(openai_backend(f"https://{NAME}:1/v1"))
        resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
        error = (await resp.json())["error"]
        assert resp.status == 502 and "refused the tunnel" in error["message"] and "407" in error["message"]
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)  # closed now
    client = await gateway(openai_backend(f"https://{NAME}:1/v1"))
    resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
    assert resp.status == 502 and "cannot reach the proxy" in (await resp.json())["error"]["message"]


async def test_no_proxy_and_loopback_upstreams_go_direct(
    gateway: Any, aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = OpenAIUpstream()
    async with serving(aiohttp_server, fake.app, None) as port, Proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        direct = await gateway(openai_backend(f"http://127.0.0.1:{port}/v1"))
        resp = await direct.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
        assert resp.status == 200
        monkeypatch.setenv("NO_PROXY", f"localhost,{NAME}")
        bypassed = await gateway(openai_backend(f"http://{NAME}:{port}/v1"))
        resp = await bypassed.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": MESSAGES})
        assert resp.status == 502 and "unreachable" in (await resp.json())["error"]["message"]  # no DNS name
    assert proxy.seen == []


# aiohttp's client (http_template, anthropic, sourcegraph) --------------------------------------------


@pytest.mark.parametrize("https", [True, False])
async def test_aiohttp_backends_go_through_the_proxy(
    gateway: Any, aiohttp_server: Any, trusted: ssl.SSLContext, monkeypatch: pytest.MonkeyPatch, https: bool
) -> None:
    api = ChatAPI()
    async with serving(aiohttp_server, api.app, trusted if https else None) as port, Proxy("u:p") as proxy:
        monkeypatch.setenv("HTTPS_PROXY" if https else "HTTP_PROXY", proxy.url.replace("://", "://u:p@"))
        scheme = "https" if https else "http"
        client = await gateway(template_backend(f"{scheme}://{NAME}:{port}/chatting"))
        resp = await client.post("/v1/chat/completions", json={"model": "custom-chat", "messages": MESSAGES})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["choices"][0]["message"]["content"] == "You said: through the proxy"
    expected = f"CONNECT {NAME}:{port} HTTP/1.1" if https else f"POST http://{NAME}:{port}/chatting HTTP/1.1"
    assert proxy.seen == [expected]
    assert proxy.authorizations == ["Basic " + base64.b64encode(b"u:p").decode()]
