"""The answers the core writes itself: JSON bodies and OpenAI error objects."""

from __future__ import annotations

from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway.context import RequestContext
from gateway.errors import GatewayError, InternalError

log = structlog.get_logger("gateway")

CLIENT_CLOSED = 499  # nginx's status for a client that left before the response was complete


async def render_error(ctx: RequestContext, exc: BaseException) -> GatewayError:
    """The ``GatewayError`` a client sees for ``exc`` (``gateway_handle_error``; a 500 if that fails)."""
    try:
        error = await ctx.generation.hooks.first_result("gateway_handle_error", ctx=ctx, error=exc)
    except Exception:
        log.exception("gateway_handle_error failed", error=repr(exc))
        error = None
    if not isinstance(error, GatewayError):
        error = InternalError("The server had an error processing your request.")
    return error


async def error_response(ctx: RequestContext, exc: BaseException) -> web.Response:
    error = await render_error(ctx, exc)
    return json_response(error.to_dict(), status=error.status, headers=error.headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)
