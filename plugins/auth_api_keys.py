"""API keys: who may call the gateway, and which models each key may use.

Off unless the ``auth_api_keys`` section lists keys (or sets ``mode: passthrough``), so the default
config stays keyless. A key comes as ``Authorization: Bearer <key>`` (any case; ``bearer<key>``
with no space too, as the seeds' clients send it) or as ``x-api-key: <key>``, and is compared in
constant time against the sha256 of every configured key (a configured key found once is then
looked up in a dict: ``AuthConfig.find``).

- ``required``: every API call needs a configured key (401 ``invalid_api_key`` otherwise).
- ``optional``: a call without a key passes anonymously; a key that is sent must be a configured one.
- ``passthrough``: the gateway refuses nothing; the client's key goes to the upstream unchanged
  (seed 001). A configured key still gets its name, allowlist and limits.

The API (every endpoint that calls ``gateway_authenticate`` but ``/info``) is guarded; the paths in
``protect`` (default ``/info`` and ``/metrics``) are guarded by a middleware, whatever serves them,
and need one of the ``keys`` in every mode (with no keys they stay open); ``/`` and ``/health`` stay
open, and CORS preflights need no key. A key with ``metrics_only: true`` opens ``/metrics`` and
nothing else (403 elsewhere, in every mode): the credential a Prometheus scraper gets.
The caller becomes ``ctx.principal`` (key name, metadata,
and the key's ``limits`` as ``Principal.limits``, a ``gateway.limits.Limits``, for a rate
limiter); in ``required``/``optional`` mode a gateway key is taken off ``ctx.client_key`` so it
never goes upstream.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from gateway import hookimpl
from gateway.config import GatewayConfig
from gateway.context import Principal, RequestContext
from gateway.endpoints import HEALTH, INFO, MODELS_LIST, MODELS_RETRIEVE, OPENAPI
from gateway.errors import AuthenticationError, ModelNotFoundError, PermissionDeniedError
from gateway.keys import ctx_key
from gateway.limits import Limits
from gateway.openapi import require_key

SECTION = "auth_api_keys"
#: Endpoints that ask ``gateway_authenticate`` but are guarded only when their path is in ``protect``.
OPEN_ENDPOINTS = frozenset({HEALTH, INFO})
ALWAYS_OPEN_PATHS = frozenset({"/", "/health"})
METRICS_PATH = "/metrics"  # the one path a ``metrics_only`` key opens
MAX_SEEN = 10_000  # keys remembered by ``AuthConfig.find`` (a key may come in several spellings)

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or in an x-api-key header. "
    "You can obtain an API key from the administrator of this gateway."
)
INCORRECT_KEY = "Incorrect API key provided: {key}. You can obtain an API key from the administrator of this gateway."


class ApiKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="who the key belongs to: logs and limits show this, never the key")
    key: SecretStr | None = Field(None, description="the key itself, usually `${VAR}`")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="or only the hex sha256 of the key")
    models: list[str] | None = Field(
        None, min_length=1, description="models the key may use (globs such as `gpt-*`); default: all"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="handed to later plugins on ctx.principal")
    limits: Limits | None = Field(None, description="this key's rate limits (read by the rate_limit plugin)")
    metrics_only: bool = Field(False, description="the key opens GET /metrics and nothing else (for a scraper)")

    @model_validator(mode="after")
    def _one_secret(self) -> ApiKey:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` and `sha256`")
        if self.key is not None and not self.key.get_secret_value():
            raise ValueError("`key` is empty")
        if "limits" in self.metadata:
            raise ValueError("`metadata.limits` is reserved: write the key's `limits` beside `metadata`")
        return self

    @property
    def digest(self) -> bytes:
        if self.key is not None:
            return hashlib.sha256(self.key.get_secret_value().encode()).digest()
        assert self.sha256 is not None
        return bytes.fromhex(self.sha256)


@dataclass(slots=True, eq=False)
class Caller:
    """A configured key as requests read it (what ``AuthConfig.find`` gives): plain attributes, as
    each read of a pydantic model's goes through its ``__getattr__`` hook."""

    name: str
    metadata: dict[str, Any]
    limits: Limits | None
    models: list[str] | None
    metrics_only: bool

    @classmethod
    def of(cls, key: ApiKey) -> Caller:
        return cls(key.name, key.metadata, key.limits, key.models, key.metrics_only)

    def allows(self, model: str) -> bool:
        return self.models is None or any(fnmatchcase(model, pattern) for pattern in self.models)

    def principal(self) -> Principal:
        """A new principal per request (later plugins may edit its metadata)."""
        return Principal(self.name, copy.deepcopy(self.metadata) if self.metadata else {}, self.limits)


class AuthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["required", "optional", "passthrough"] = Field(
        "required", description="required | optional (no key: anonymous) | passthrough (key goes upstream)"
    )
    keys: list[ApiKey] = Field(default_factory=list, description="no keys (and no mode): auth is off")
    hide_forbidden_models: bool = Field(False, description="a model the key may not use is 404, not 403")
    protect: list[str] = Field(
        default_factory=lambda: ["/info", "/metrics"],
        description="paths besides the API that need one of the `keys`, in every mode",
    )

    _digests: list[tuple[bytes, Caller]] = PrivateAttr(default_factory=list)

    def shared_state(self) -> str | None:
        """What of this section must be shared between processes (``gateway.state``): keys' limits."""
        limited = [key.name for key in self.keys if key.limits is not None]
        return f"the limits of keys {', '.join(limited)}" if limited else None

    @model_validator(mode="after")
    def _check(self) -> AuthConfig:
        if not self.keys and self.mode != "passthrough" and "mode" in self.model_fields_set:
            raise ValueError(f"mode {self.mode} needs at least one entry in `keys`")
        for path in self.protect:
            if not path.startswith("/") or path in ALWAYS_OPEN_PATHS:
                raise ValueError(f"protect: {path!r} cannot be protected (paths start with /; / and /health stay open)")
        if self.protect and not self.keys and "protect" in self.model_fields_set:
            raise ValueError("protect needs at least one entry in `keys` (only a configured key opens those paths)")
        names: dict[str, int] = {}
        digests: dict[bytes, int] = {}
        for i, entry in enumerate(self.keys):
            if entry.name in names:
                raise ValueError(f"keys[{i}]: the name {entry.name!r} is taken by keys[{names[entry.name]}]")
            if entry.digest in digests:
                raise ValueError(f"keys[{i}]: the same key as keys[{digests[entry.digest]}]")
            names[entry.name], digests[entry.digest] = i, i
        self._digests = [(entry.digest, Caller.of(entry)) for entry in self.keys]
        return self

    @functools.cached_property
    def active(self) -> bool:
        return bool(self.keys) or self.mode == "passthrough"

    @functools.cached_property
    def guarded(self) -> frozenset[str]:
        """The ``protect`` paths, when there are keys to open them (with none they stay open)."""
        return frozenset(self.protect) if self.keys else frozenset()

    @functools.cached_property
    def seen(self) -> dict[str, Caller]:
        """The keys ``find`` has found, as clients sent them (only configured ones: a few entries)."""
        return {}

    def find(self, key: str) -> Caller | None:
        """The entry of ``key``. A key found before is looked up in ``seen`` (a dict: its time tells
        found or not, which the answer tells anyway, and nothing of how close a wrong key is); any
        other is hashed and compared with every configured digest, in constant time, whatever matches."""
        found = self.seen.get(key)
        if found is not None:
            return found
        digest = hashlib.sha256(key.encode(errors="surrogateescape")).digest()  # not UTF-8: matches none
        for candidate, entry in self._digests:
            if hmac.compare_digest(digest, candidate) and found is None:
                found = entry
        if found is not None and len(self.seen) < MAX_SEEN:
            self.seen[key] = found
        return found


def masked(key: str) -> str:
    """A key as an error message may show it: its ends at most, never the whole."""
    return f"{key[:3]}***{key[-3:]}" if len(key) >= 12 else "***"


def identify(ctx: RequestContext, settings: AuthConfig, mode: str | None = None) -> Principal | None:
    """The caller of ``ctx`` in ``mode`` (default: the configured one): its key's principal, None for
    an anonymous one, or 401."""
    mode = mode or settings.mode
    key = ctx.client_key or ctx.request.headers.get("x-api-key", "").strip() or None
    entry = None if key is None else settings.seen.get(key) or settings.find(key)
    if mode == "passthrough":
        ctx.client_key = key  # the upstream gets the key as the client sent it
        if entry is None:
            return (
                Principal(f"passthrough-{hashlib.sha256(key.encode(errors='surrogateescape')).hexdigest()[:8]}")
                if key
                else None
            )
    elif key is None:
        if mode == "optional":
            return None
        raise AuthenticationError(MISSING_KEY)
    elif entry is None:
        raise AuthenticationError(INCORRECT_KEY.format(key=masked(key)))
    else:
        ctx.client_key = None  # a gateway key: never sent upstream
    if entry.metrics_only and ctx.request.path != METRICS_PATH:
        raise PermissionDeniedError(f"The API key `{entry.name}` may only scrape {METRICS_PATH}.")
    ctx.state[SECTION] = entry
    return entry.principal()


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``auth_api_keys`` section."""
    register(SECTION, AuthConfig)


@hookimpl
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Guard the ``protect`` paths with a middleware, so that whichever plugin serves them needs no
    hook. It reads the settings of each request's config, so a reload changes who gets in."""
    app.middlewares.append(protect)


@web.middleware
async def protect(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    ctx = request[ctx_key]
    settings: AuthConfig = ctx.config.plugin_config(SECTION)
    if request.path in settings.guarded and request.method != "OPTIONS":  # a preflight has no key
        ctx.principal = identify(ctx, settings, "required")  # whatever the mode: anonymous callers stay out
    return await handler(request)


@hookimpl
def gateway_idle(config: GatewayConfig) -> bool:
    """Idle while auth is off (no keys, not ``passthrough``): no request is checked or filtered."""
    return not config.plugin_config(SECTION).active


@hookimpl
def gateway_authenticate(ctx: RequestContext) -> Principal | None:
    """The caller's principal (401 without a valid key); 403/404 when the key may not use the model."""
    settings: AuthConfig = ctx.config.plugin_config(SECTION)
    if not settings.active or ctx.endpoint in OPEN_ENDPOINTS:
        return ctx.principal  # set by the middleware when the path is protected
    ctx.principal = principal = ctx.principal or identify(ctx, settings)  # a refused caller is named in logs
    entry: Caller | None = ctx.state.get(SECTION)
    if (
        ctx.body is not None
        and entry is not None
        and entry.models is not None
        and ctx.model
        and not entry.allows(ctx.model)
    ):
        if settings.hide_forbidden_models:
            raise ModelNotFoundError(ctx.model)
        raise PermissionDeniedError(
            f"The API key `{entry.name}` is not allowed to use the model `{ctx.model}`.", param="model"
        )
    return principal


@hookimpl(trylast=True)  # after every plugin that adds to the list (transforms' aliases): the key has the last word
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """``/v1/models`` lists only the models the caller's key may use; another one is 404. On
    ``/openapi.json``, the operations that need a key get Swagger UI's lock."""
    if ctx.endpoint == OPENAPI:
        _lock_operations(ctx.config.plugin_config(SECTION), response)
        return
    entry: Caller | None = ctx.state.get(SECTION)
    if entry is None or entry.models is None:
        return
    if ctx.endpoint == MODELS_LIST:
        response["data"] = [model for model in response.get("data", ()) if entry.allows(model.get("id", ""))]
    elif ctx.endpoint == MODELS_RETRIEVE and not entry.allows(str(response.get("id", ""))):
        raise ModelNotFoundError(ctx.model or "")


def _lock_operations(settings: AuthConfig, document: dict[str, Any]) -> None:
    """The API (``/v1/...``) needs a key unless auth is off (``optional``, ``passthrough``: it may take
    one); the ``protect`` paths need one of the keys."""
    if not settings.active:
        return
    guarded = set(settings.protect) if settings.keys else set()
    required = settings.mode == "required"
    require_key(document, lambda path: path in guarded or (required and path.startswith("/v1/")))
    if not required:
        require_key(document, lambda path: path.startswith("/v1/") and path not in guarded, optional=True)
