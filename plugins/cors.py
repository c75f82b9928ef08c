"""CORS for every route, streaming included, through aiohttp-cors (headers go out on prepare)."""

from __future__ import annotations

from typing import Annotated, Any

import aiohttp_cors
from aiohttp import hdrs, web
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from gateway import hookimpl
from gateway.config import GatewayConfig


def _split(value: Any) -> Any:
    """Accept a comma-separated string (``ALLOW_ORIGINS=http://a,http://b``) as well as a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


Names = Annotated[list[str], BeforeValidator(_split)]


class CorsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    allow_origins: Names = Field(
        default_factory=lambda: ["*"],
        description="origins allowed; `*` for any; [] turns CORS off (the shipped configs: `${ALLOW_ORIGINS:-*}`)",
    )
    allow_methods: Names = Field(default_factory=lambda: ["*"], description="methods allowed in preflight")
    allow_headers: Names = Field(default_factory=lambda: ["*"], description="request headers allowed")
    expose_headers: Names = Field(default_factory=lambda: ["*"], description="response headers scripts may read")
    allow_credentials: bool = False
    max_age: int | None = Field(None, ge=0, description="seconds a preflight answer may be cached")


@hookimpl
def gateway_register_config(register):  # type: ignore[no-untyped-def]
    """Declare the ``cors`` section."""
    register("cors", CorsConfig)


@hookimpl(trylast=True)
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Apply the CORS policy to every route (trylast: after every plugin added its routes)."""
    cors: CorsConfig = config.plugin_config("cors")
    if not cors.allow_origins:
        return

    def star_or_list(names: list[str]) -> Any:
        return "*" if "*" in names else names

    options = aiohttp_cors.ResourceOptions(
        allow_credentials=cors.allow_credentials,
        expose_headers=star_or_list(cors.expose_headers),
        allow_headers=star_or_list(cors.allow_headers),
        allow_methods=star_or_list(cors.allow_methods),
        max_age=cors.max_age,
    )
    signals = app.on_response_prepare
    before = len(signals)
    setup = aiohttp_cors.setup(app, defaults={origin: options for origin in cors.allow_origins})
    for route in list(app.router.routes()):
        setup.add(route)
    theirs = signals[before:]  # aiohttp-cors's own
    del signals[before:]
    signals.append(_browsers_only([*theirs, _unrouted_responses(cors)]))


def _browsers_only(callbacks: list[Any]) -> Any:
    """All of CORS as one ``on_response_prepare``, skipped for a request without an ``Origin`` header:
    any client but a browser's script needs no CORS headers (and aiohttp-cors resolves every
    response's route before it looks for one)."""

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        if hdrs.ORIGIN in request.headers:
            for callback in callbacks:
                await callback(request, response)

    return on_prepare


def _unrouted_responses(cors: CorsConfig) -> Any:
    """aiohttp-cors answers only for matched routes; give 404/405 errors the same headers so a
    browser shows the gateway's error rather than a CORS failure."""
    any_origin = "*" in cors.allow_origins

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin or hdrs.ACCESS_CONTROL_ALLOW_ORIGIN in response.headers:
            return
        if any_origin or origin in cors.allow_origins:
            response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin  # echoed, as aiohttp-cors does
            response.headers.add(hdrs.VARY, hdrs.ORIGIN)
            if cors.allow_credentials:
                response.headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"

    return on_prepare
