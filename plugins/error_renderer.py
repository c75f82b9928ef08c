"""The default error rendering: gateway errors as they are, HTTP errors mapped, anything else a
logged 500 that tells the client only the request id; in the dialect of the front door the request
came through (``DIALECTS``: Anthropic's shape on ``/v1/messages``), OpenAI's everywhere else.

Another dialect is added the same way, by a plugin: its own ``gateway_handle_error`` returns its
``gateway.errors.DialectError`` subclass for its endpoint's requests."""

from __future__ import annotations

from aiohttp import web

from gateway import hookimpl
from gateway.context import RequestContext
from gateway.errors import (
    DialectError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    NotFoundError,
)
from gateway.formats.messages import AnthropicError

#: Front doors in another dialect: (``ctx.endpoint`` prefix, path prefix, the error shape). The path
#: covers a request the gateway could not name an endpoint for (``/v1/messages/nope``: 404).
DIALECTS: tuple[tuple[str, str, type[DialectError]], ...] = (("messages", "/v1/messages", AnthropicError),)


@hookimpl(trylast=True)
def gateway_handle_error(ctx: RequestContext, error: BaseException) -> GatewayError:
    """Render ``error`` for the client, in the dialect of the endpoint."""
    rendered = as_gateway_error(ctx, error)
    for endpoint, path, shape in DIALECTS:
        if ctx.endpoint.startswith(endpoint) or ctx.request.path.startswith(path):
            return rendered if isinstance(rendered, shape) else shape(rendered)
    return rendered


def as_gateway_error(ctx: RequestContext, error: BaseException) -> GatewayError:
    """``error`` as the ``GatewayError`` the client sees (OpenAI's shape)."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, web.HTTPException):
        return from_http_exception(ctx, error)
    ctx.log.error("unexpected error", path=ctx.request.path, exc_info=error)
    return InternalError(
        f"The server had an error while processing your request (request id {ctx.request_id}). "
        "Retry, and report the request id if the error persists."
    )


def from_http_exception(ctx: RequestContext, error: web.HTTPException) -> GatewayError:
    request = ctx.request
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = sorted(error.allowed_methods)
        return MethodNotAllowedError(
            f"Method {request.method} is not allowed for {request.path}; use {', '.join(allowed)}.",
            headers={"Allow": ", ".join(allowed)},
        )
    if isinstance(error, web.HTTPNotFound):
        return NotFoundError(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
    kind = InvalidRequestError if error.status < 500 else GatewayError
    return kind(error.text or error.reason, status=error.status, code=None)
