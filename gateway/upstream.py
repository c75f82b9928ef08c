"""Calling an HTTP upstream: one pooled session per backend, and every way an upstream can fail
mapped to the OpenAI error object a client can act on.

- a 4xx keeps its status and the upstream's own message, type, param and code;
- a 429 stays a 429 with the upstream's ``Retry-After``;
- a status the backend names ``overloaded`` (Anthropic's 529: up, but without capacity now) -> 503
  ``upstream_overloaded`` with the upstream's ``Retry-After``, as OpenAI answers when it is overloaded;
- any other 5xx, a refused or reset connection, or a broken stream -> 502 ``bad_gateway``;
- a timeout -> 504 ``upstream_timeout``.

Every message names the backend that failed; configured secrets are scrubbed from whatever the
upstream said before a client or a log line sees it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Container, Iterable, Iterator, Mapping
from typing import Any

import aiohttp
import orjson

from gateway.errors import GatewayError, RateLimitError, UpstreamError, UpstreamTimeoutError

#: Most of an error body read from an upstream, and of its message shown to the client.
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 1000
#: Response headers of an upstream worth passing on to the client.
FORWARDED_HEADER_PREFIXES = ("x-ratelimit-", "x-request-id")


class UpstreamClientError(GatewayError):
    """A 4xx the upstream answered, passed on with its status and OpenAI-shaped details."""

    def __init__(self, message: str, *, status: int, type: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, status=status, **kwargs)
        self.type = type or "invalid_request_error"  # type: ignore[misc]


class UpstreamOverloadedError(UpstreamError):
    """The upstream is up but has no capacity now (Anthropic's 529): worth a retry later."""

    status = 503
    code = "upstream_overloaded"


def client_session(
    *, connect_timeout: float, headers: Mapping[str, str] | None = None, max_connections: int = 0
) -> aiohttp.ClientSession:
    """The one pooled session a backend keeps for the app's life. Only connecting is timed here:
    the gateway's watchdog bounds the wait for the first byte and between chunks."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300, enable_cleanup_closed=True),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout),
        headers=dict(headers or {}),
        skip_auto_headers=("User-Agent",),
    )


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every non-empty secret in it replaced by ``***``."""
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, "***")
    return text


def error_details(body: bytes) -> dict[str, Any]:
    """The message, type, param and code of an upstream error body: OpenAI's ``{"error": {...}}``,
    ``{"error": "..."}``, ``{"message": ...}``, ``{"detail": ...}`` (FastAPI), or plain text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {"message": body.decode("utf-8", "replace").strip()}
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            message = error.get("message") or error.get("detail") or error.get("error")
            found = {"message": message if isinstance(message, str) else orjson.dumps(message or error).decode()}
            for key in ("type", "param", "code"):
                if isinstance(error.get(key), str | int) and not isinstance(error.get(key), bool):
                    found[key] = str(error[key])
            return found
        if isinstance(error, str):
            return {"message": error}
    return {"message": body.decode("utf-8", "replace").strip()}


def http_error(
    backend: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
    overloaded: Container[int] = (),
) -> GatewayError:
    """The error a client sees for an upstream's error answer (see the module docstring);
    ``overloaded``: the statuses by which this upstream says it is overloaded."""
    details = error_details(body)
    message = scrub(details.get("message") or "", secrets)[:MAX_ERROR_MESSAGE]
    headers = headers or {}
    retry = {"Retry-After": headers["Retry-After"]} if "Retry-After" in headers else {}
    if status == 429:
        return RateLimitError(
            f"Backend {backend!r} is rate limited: {message or 'too many requests'}",
            code=details.get("code") or RateLimitError.code,
            headers=retry,
        )
    if 400 <= status < 500:
        return UpstreamClientError(
            message or f"Backend {backend!r} refused the request (HTTP {status}).",
            status=status,
            type=details.get("type"),
            param=details.get("param"),
            code=details.get("code"),
        )
    said = f": {message}" if message else ""
    if status in overloaded:
        return UpstreamOverloadedError(f"Backend {backend!r} is overloaded{said}", headers=retry)
    return UpstreamError(f"Backend {backend!r} failed with HTTP {status}{said}")


async def raise_for_status(
    response: aiohttp.ClientResponse,
    backend: str,
    secrets: Iterable[str | None] = (),
    overloaded: Container[int] = (),
) -> None:
    """Raise ``http_error`` for an upstream response with an error status."""
    if response.status < 400:
        return
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    raise http_error(backend, response.status, body, response.headers, secrets, overloaded)


@contextlib.contextmanager
def transport_errors(backend: str, secrets: Iterable[str | None] = ()) -> Iterator[None]:
    """Map aiohttp's connection and transport failures inside the block to gateway errors."""
    try:
        yield
    except GatewayError:
        raise
    except aiohttp.ClientConnectorError as exc:
        reason = unreachable_reason(exc.os_error)
        raise UpstreamError(f"Backend {backend!r} is unreachable: {reason.lower()}.") from None
    except (TimeoutError, aiohttp.ServerTimeoutError):
        raise UpstreamTimeoutError(f"Backend {backend!r} timed out.") from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError) as exc:
        raise UpstreamError(f"Backend {backend!r} broke the connection ({type(exc).__name__}).") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"Backend {backend!r} failed: {scrub(str(exc), secrets)}") from None


def unreachable_reason(error: OSError) -> str:
    """Why a connection failed, in words: "connection refused" rather than asyncio's "connect call
    failed ('127.0.0.1', 8000)", a resolver's own message for a name that does not resolve."""
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's ``x-ratelimit-*`` headers and ``x-request-id``, for the client's response (the
    core keeps a request id the client sent itself; the gateway's own is ``x-gateway-request-id``)."""
    return {k: v for k, v in headers.items() if k.lower().startswith(FORWARDED_HEADER_PREFIXES)}
