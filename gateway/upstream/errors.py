"""Calling an HTTP upstream: one pooled session per backend, and every way an upstream can fail
mapped to the OpenAI error object a client can act on.

- a 4xx keeps its status and the upstream's own message, type, param and code, but for a 401 or 403
  refusing the gateway's own credentials for the upstream (its configured key, not a key the client
  sent and the backend forwarded): 502 ``upstream_auth_error`` naming the backend's credentials, so
  a client never reads it as its own key being wrong (``invalid_api_key``);
- a 429 stays a 429 with the upstream's ``Retry-After``;
- a status the backend names ``overloaded`` (Anthropic's 529: up, but without capacity now) -> 503
  ``upstream_overloaded`` with the upstream's ``Retry-After``, as OpenAI answers when it is overloaded;
- any other 5xx, a refused or reset connection, or a broken stream -> 502 ``bad_gateway``;
- a timeout -> 504 ``upstream_timeout``.

Every message names the backend that failed; configured secrets are scrubbed from whatever the
upstream said before a client or a log line sees it.

``ModelCache`` keeps a backend's model list from its upstream: fetched by one caller at a time, within
``MODELS_TIMEOUT`` seconds, kept ``ttl`` seconds; a failure is remembered ``MODELS_RETRY`` seconds, the
last list served meanwhile, so a down upstream neither slows nor empties ``/v1/models``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import Awaitable, Callable, Container, Iterable, Mapping
from typing import Annotated, Any

import aiohttp
import orjson
import structlog
import yarl
from pydantic import AfterValidator, BeforeValidator, SecretStr

from gateway.errors import GatewayError, RateLimitError, UpstreamError, UpstreamTimeoutError
from gateway.log import is_secret_key
from gateway.upstream.http_client import UpstreamConnectError
from gateway.upstream.proxy import proxy_for

#: Most of an error body read from an upstream, and of its message shown to the client.
MAX_ERROR_BODY = 64 * 1024
MAX_ERROR_MESSAGE = 1000
#: Response headers of an upstream worth passing on to the client.
FORWARDED_HEADER_PREFIXES = ("x-ratelimit-", "x-request-id")
_X = ("x-", "X-")  # how their names start, in either case: the others are not lowered
#: Seconds a model listing may take at most (the backend's ``timeout`` bounds it too), and seconds
#: before a failed listing, or a refresh for a name the list lacks, may ask the upstream again.
MODELS_TIMEOUT = 10.0
MODELS_RETRY = 10.0

log = structlog.get_logger("gateway")


def _header_value(value: str) -> str:
    """A header value as sent: without surrounding whitespace; a control character (a line break
    from a key file or a CRLF .env) is an error at start-up, not a failure of every request."""
    value = value.strip()
    if any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in value):
        raise ValueError("must not contain control characters such as line breaks")
    return value


def _credential(value: Any) -> Any:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    return _header_value(value) if isinstance(value, str) else value


def _url(value: str) -> str:
    """An http(s) URL with a host, checked at start-up rather than failing every request."""
    try:
        url = yarl.URL(value)
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or " " in url.host:
        raise ValueError("must start with http:// or https:// and name a host")
    return value


def _base_url(value: str) -> str:
    """An API root that paths are appended to: no query or fragment, no trailing slash."""
    if "?" in _url(value) or "#" in value:
        raise ValueError("must have no query or fragment (paths are appended to it)")
    return value.rstrip("/")


#: Config types for what a backend sends in headers: a key (``SecretStr``), any other value.
Credential = Annotated[SecretStr, BeforeValidator(_credential)]
HeaderValue = Annotated[str, AfterValidator(_header_value)]
#: Config types for an upstream's URL: one called as it is (``Url``), an API root (``BaseUrl``).
Url = Annotated[str, AfterValidator(_url)]
BaseUrl = Annotated[str, AfterValidator(_base_url)]


class UpstreamClientError(GatewayError):
    """A 4xx the upstream answered, passed on with its status and OpenAI-shaped details."""

    def __init__(self, message: str, *, status: int, type: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, status=status, **kwargs)
        self.type = type or "invalid_request_error"  # type: ignore[misc]


class UpstreamAuthError(UpstreamError):
    """The upstream refused the gateway's own credentials for it (a 401 or 403): the gateway's
    configuration is wrong, not the client's key."""

    code = "upstream_auth_error"


class UpstreamOverloadedError(UpstreamError):
    """The upstream is up but has no capacity now (Anthropic's 529): worth a retry later."""

    status = 503
    code = "upstream_overloaded"


def client_session(
    *, url: str, connect_timeout: float, headers: Mapping[str, str] | None = None, max_connections: int = 0
) -> aiohttp.ClientSession:
    """The one pooled session a backend keeps for the app's life, for the upstream at ``url``
    (through the proxy the environment names for it, ``gateway.upstream.proxy``; TLS verified
    with the system's CAs as they are at start-up, ``SSL_CERT_FILE`` included, as the lean client).
    Only connecting is timed here: the gateway's watchdog bounds the wait for the first byte and
    between chunks."""
    proxy = proxy_for(url)
    connector = aiohttp.TCPConnector(
        limit=max_connections, ttl_dns_cache=300, enable_cleanup_closed=True, ssl=ssl.create_default_context()
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, connect=connect_timeout),
        headers=dict(headers or {}),
        skip_auto_headers=("User-Agent",),
        proxy=proxy.url_with_credentials if proxy is not None else None,  # aiohttp sends them as Proxy-Authorization
    )


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The credentials among configured ``headers`` (by name: ``api-key``, ``X-Api-Key``,
    ``Authorization``...), to ``scrub``: each value, and its part after a scheme (``Bearer <key>``)."""
    return [part for name, value in headers.items() if is_secret_key(name) for part in (value, value.split(" ", 1)[-1])]


def url_secrets(url: str) -> list[str]:
    """The credentials in a configured URL, to ``scrub``: its secret-named query parameters' values
    (``?key=``, as Google's APIs take it) and the password of its user info."""
    parsed = yarl.URL(url)
    return [v for k, v in parsed.query.items() if is_secret_key(k) and v] + (
        [parsed.password] if parsed.password else []
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
    own_key: bool = True,
) -> GatewayError:
    """The error a client sees for an upstream's error answer (see the module docstring), with the
    upstream's ``status`` as ``upstream_status``; ``overloaded``: the statuses by which this upstream
    says it is overloaded; ``own_key``: the request carried the gateway's own credentials (False: the
    client's, forwarded)."""
    error = _http_error(backend, status, body, headers, secrets, overloaded, own_key)
    error.upstream_status = status
    return error


def _http_error(
    backend: str,
    status: int,
    body: bytes,
    headers: Mapping[str, str] | None,
    secrets: Iterable[str | None],
    overloaded: Container[int],
    own_key: bool,
) -> GatewayError:
    details = error_details(body)
    message = scrub(details.get("message") or "", secrets)[:MAX_ERROR_MESSAGE]
    headers = headers or {}
    if own_key and status in (401, 403):
        return credentials_refused(backend, status, message)
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


def credentials_refused(backend: str, status: int, said: str = "") -> UpstreamAuthError:
    """The error for an upstream's 401 or 403 to the gateway's own credentials (``said``: its words, scrubbed)."""
    return UpstreamAuthError(
        f"Backend {backend!r} refused the gateway's credentials for it (HTTP {status}): check the backend's "
        f"configured key or token" + (f"; the upstream said: {said}" if said else ".")
    )


async def raise_for_status(
    response: aiohttp.ClientResponse,
    backend: str,
    secrets: Iterable[str | None] = (),
    overloaded: Container[int] = (),
    own_key: bool = True,
) -> None:
    """Raise ``http_error`` for an upstream response with an error status."""
    if response.status < 400:
        return
    try:
        body = await response.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        body = b""
    raise http_error(backend, response.status, body, response.headers, secrets, overloaded, own_key)


class transport_errors:  # a context manager used as a function: ``with transport_errors(name):``
    """Map the connection and transport failures inside the block (aiohttp's, ``gateway.upstream.http_client``'s)
    to gateway errors. (A class: a generator-based context manager costs microseconds per call.)"""

    __slots__ = ("backend", "secrets")

    def __init__(self, backend: str, secrets: Iterable[str | None] = ()) -> None:
        self.backend, self.secrets = backend, secrets

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, traceback: Any) -> bool:
        if exc is None or not isinstance(exc, Exception) or isinstance(exc, GatewayError):
            return False  # nothing, a generator's close or a cancellation, or mapped already
        backend = self.backend
        if isinstance(exc, aiohttp.ClientConnectorError | UpstreamConnectError):
            reason = unreachable_reason(exc.os_error)
            raise UpstreamError(f"Backend {backend!r} is unreachable: {reason.lower()}.") from None
        if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
            raise UpstreamTimeoutError(f"Backend {backend!r} timed out.") from None
        if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError | aiohttp.ClientOSError):
            raise UpstreamError(f"Backend {backend!r} broke the connection ({type(exc).__name__}).") from None
        if isinstance(exc, aiohttp.ClientError):
            raise UpstreamError(f"Backend {backend!r} failed: {scrub(str(exc), self.secrets)}") from None
        return False


def unreachable_reason(error: OSError) -> str:
    """Why a connection failed, in words: "connection refused" rather than asyncio's "connect call
    failed ('127.0.0.1', 8000)", a resolver's own message for a name that does not resolve, the
    reason a TLS handshake failed ("certificate verify failed: self-signed certificate")."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {error.verify_message}"
    if isinstance(error, ssl.SSLError):
        return f"TLS handshake failed: {error.reason or error}"
    if error.errno and error.errno > 0:
        return os.strerror(error.errno)
    return error.strerror or str(error) or type(error).__name__


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The upstream's ``x-ratelimit-*`` headers and ``x-request-id``, for the client's response (the
    core keeps a request id the client sent itself; the gateway's own is ``x-gateway-request-id``)."""
    return {k: v for k, v in headers.items() if k[:2] in _X and k.lower().startswith(FORWARDED_HEADER_PREFIXES)}


async def read_body(response: aiohttp.ClientResponse, backend: str, limit: int) -> bytes:
    """The whole body of a non-streamed answer (either client's response), at most ``limit`` bytes
    (the backend's ``max_response_size``): a larger one, declared or found while reading, is a 502,
    its connection closed, and it is never read past the limit."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(response, backend, limit)
    parts, size = [], 0
    while size <= limit:
        part = await response.content.read(limit + 1 - size)
        if not part:
            return b"".join(parts)
        parts.append(part)
        size += len(part)
    raise _too_large(response, backend, limit)


def _too_large(response: Any, backend: str, limit: int) -> UpstreamError:
    response.close()  # not worth draining: the connection goes
    return UpstreamError(f"Backend {backend!r} answered with more than {limit} bytes (its max_response_size).")


async def json_object(response: aiohttp.ClientResponse, backend: str, limit: int) -> dict[str, Any]:
    """The response body (``read_body``: at most ``limit`` bytes) as a JSON object; a 502 naming
    ``backend`` for anything else."""
    try:
        answer = orjson.loads(await read_body(response, backend, limit))
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise UpstreamError(f"Backend {backend!r} answered with something that is not a JSON object.")
    return answer


def listing_seconds(timeout: float) -> float:
    """The seconds a model-listing request may take: ``MODELS_TIMEOUT`` at most, however long the
    backend allows a generation to take."""
    return min(timeout, MODELS_TIMEOUT)


def listing_timeout(timeout: float, connect_timeout: float) -> aiohttp.ClientTimeout:
    """``listing_seconds`` as an aiohttp timeout, with the backend's connect timeout."""
    return aiohttp.ClientTimeout(total=listing_seconds(timeout), connect=connect_timeout, sock_connect=connect_timeout)


class ModelCache:
    """A backend's model list from its upstream (see the module docstring). ``fetch`` raises a
    ``GatewayError`` when the upstream cannot list; ``get`` raises it only while no list is known."""

    def __init__(self, backend: str, fetch: Callable[[], Awaitable[list[dict[str, Any]]]], ttl: float) -> None:
        self.backend, self.fetch, self.ttl = backend, fetch, ttl
        self.models: list[dict[str, Any]] | None = None
        self._fetched = -float("inf")  # loop time of the last successful fetch
        self._until = 0.0  # the list is fresh until then
        self._failure: GatewayError | None = None
        self._failed_at = -float("inf")  # loop time of the last failed fetch
        self._lock = asyncio.Lock()

    async def get(self, refresh: bool = False) -> list[dict[str, Any]]:
        """The list, fetched when it is stale; ``refresh`` (a name the list lacks) refetches a fresh
        list too, unless it was fetched less than ``MODELS_RETRY`` seconds ago."""
        async with self._lock:  # one fetch at a time: concurrent callers get its result
            now = asyncio.get_running_loop().time()
            fresh = self.models is not None and now < self._until
            if fresh and not (refresh and now - self._fetched >= MODELS_RETRY):
                return self.models  # type: ignore[return-value]
            if self._failure is not None and now - self._failed_at < MODELS_RETRY:
                if self.models is not None:
                    return self.models
                raise self._failure.with_traceback(None)
            try:
                models = await self.fetch()
            except GatewayError as exc:
                self._failure, self._failed_at = exc, now
                if self.models is None:
                    raise
                log.warning("listing models failed; serving the cached list", backend=self.backend, error=exc.message)
                return self.models
            self.models, self._failure, self._fetched, self._until = models, None, now, now + self.ttl
            return models
