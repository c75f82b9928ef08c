"""Upstream proxies from the environment, for both upstream clients (the lean ``http_client`` and
aiohttp's, ``gateway.upstream.errors.client_session``).

- ``HTTPS_PROXY`` for ``https://`` upstreams, ``HTTP_PROXY`` for ``http://`` ones (lowercase names win
  over uppercase, as in Python's ``urllib``); an ``http://`` proxy URL (a bare ``host:port`` too),
  credentials in it sent as ``Proxy-Authorization: Basic``. An https upstream is reached through an
  HTTP ``CONNECT`` tunnel (TLS end to end), an http one with absolute-form requests.
- ``NO_PROXY``: host names, domain suffixes (``example.com`` and ``.example.com`` both match
  ``api.example.com``), ``host:port``, or ``*``, comma-separated, matched as ``urllib``'s
  ``proxy_bypass_environment`` does.
- A loopback upstream (``localhost``, ``127.0.0.0/8``, ``::1``) is never proxied: no proxy can reach
  this machine's loopback (so local servers, and the test suite, work whatever the environment says).

The environment is read when a backend starts (and on a reload).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import unquote

import yarl

P = TypeVar("P", bound=asyncio.BaseProtocol)


class ProxyError(OSError):
    """The proxy could not be reached or refused the tunnel."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to reach an upstream through: where it is and how to authenticate to it."""

    url: str  # http://host:port, without credentials (safe to log)
    host: str
    port: int
    user: str | None = None
    password: str | None = None

    @property
    def url_with_credentials(self) -> str:
        """``url`` with the credentials in it, quoted (never to log)."""
        if self.user is None:
            return self.url
        return str(yarl.URL(self.url).with_user(self.user).with_password(self.password))

    @property
    def authorization(self) -> str | None:
        """The ``Proxy-Authorization`` value, when the proxy URL carries credentials."""
        if self.user is None:
            return None
        return "Basic " + base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()


def proxy_for(url: str) -> Proxy | None:
    """The proxy the environment names for ``url`` (see the module docstring), or None."""
    target = yarl.URL(url)
    host = target.raw_host or ""
    if _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    value = proxies.get(target.scheme or "")
    if not value:
        return None
    if urllib.request.proxy_bypass_environment(f"{host}:{target.port}", proxies):
        return None
    return parse(value, f"{target.scheme}_proxy")


def parse(value: str, name: str) -> Proxy:
    """A proxy URL from the environment variable ``name``; ValueError for one neither client speaks."""
    proxy = yarl.URL(value if "://" in value else "http://" + value)
    if proxy.scheme != "http" or not proxy.raw_host:
        raise ValueError(f"{name.upper()}={proxy.with_password(None)!s}: only http:// proxies are supported")
    port = proxy.port or 80
    host = proxy.raw_host
    shown = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    user = unquote(proxy.raw_user) if proxy.raw_user is not None else None
    password = unquote(proxy.raw_password) if proxy.raw_password is not None else None
    return Proxy(shown, host, port, user, password)


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Reply(asyncio.Protocol):
    """Reads the proxy's answer to ``CONNECT`` (its head, up to the blank line)."""

    def __init__(self) -> None:
        self.head = asyncio.get_running_loop().create_future()
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data
        if b"\r\n\r\n" in self.data and not self.head.done():
            self.head.set_result(self.data)
        elif len(self.data) > 64 * 1024 and not self.head.done():
            self.head.set_exception(ProxyError("the proxy's answer to CONNECT has no end"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ProxyError("the proxy closed the connection during CONNECT"))


async def reach(proxy: Proxy, factory: Callable[[], P]) -> tuple[asyncio.Transport, P]:
    """A connection to the proxy itself; ProxyError naming it when it cannot be reached."""
    try:
        return await asyncio.get_running_loop().create_connection(factory, proxy.host, proxy.port)  # type: ignore[return-value]
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else str(exc) or type(exc).__name__
        raise ProxyError(f"cannot reach the proxy {proxy.url}: {reason}") from None


async def tunnel(proxy: Proxy, host: str, port: int) -> asyncio.Transport:
    """A connection through ``proxy`` to ``host:port`` (``CONNECT``), ready for TLS; ProxyError when
    the proxy refuses it (its status in the message), OSError when it cannot be reached."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    transport, reply = await reach(proxy, _Reply)
    head = [f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"]
    if proxy.authorization:
        head.append(f"Proxy-Authorization: {proxy.authorization}\r\n")
    transport.write(("".join(head) + "\r\n").encode("latin-1"))
    try:
        answer = await reply.head
    except BaseException:
        transport.close()
        raise
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].startswith("2"):
        transport.close()
        raise ProxyError(f"the proxy {proxy.url} refused the tunnel to {authority}: {status_line or 'no answer'}")
    return transport  # type: ignore[return-value]
