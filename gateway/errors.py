"""Errors a client can see, rendered as OpenAI error objects.

Each class carries its HTTP status, OpenAI ``type`` and default ``code``; raise one anywhere in the
pipeline (plugins and backends included) and the client gets ``{"error": {...}}`` with that status.
A front door in another API's dialect shows the same error in that API's shape: ``DialectError``
(the ``error_renderer`` plugin chooses the dialect by endpoint).
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    """Base class: an error with an HTTP status and an OpenAI-shaped body."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = None
    #: The HTTP status the upstream answered with, when this error is its answer (retry ``on_status``).
    upstream_status: int | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        """The body sent to the client."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequestError(GatewayError):
    status = 400
    type = "invalid_request_error"


class ContentPolicyError(InvalidRequestError):
    """A request refused by the gateway's content policy (400, like OpenAI's own policy refusals)."""

    code = "content_policy"


class AuthenticationError(InvalidRequestError):
    status = 401
    code = "invalid_api_key"


class PermissionDeniedError(InvalidRequestError):
    status = 403
    code = "permission_denied"


class NotFoundError(InvalidRequestError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, model: str, **kwargs: Any) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", **kwargs)


class UnsupportedEndpointError(NotFoundError):
    """The model's backend cannot serve this endpoint (as OpenAI answers a chat model on
    ``/v1/completions``: 404, ``param: model``)."""

    code = "unsupported_endpoint"

    def __init__(self, model: str, backend: str, endpoint: str, hint: str = "", **kwargs: Any) -> None:
        kwargs.setdefault("param", "model")
        message = f"The model `{model}` (backend '{backend}') does not support the {endpoint} endpoint."
        super().__init__(f"{message} {hint}" if hint else message, **kwargs)


class MethodNotAllowedError(InvalidRequestError):
    status = 405
    code = "method_not_allowed"


class RequestTimeoutError(InvalidRequestError):
    """The client was too slow sending its request (``server.header_timeout``, ``server.body_timeout``)."""

    status = 408
    code = "request_timeout"


class WriteTimeoutError(RequestTimeoutError):
    """The client accepted no part of the response within ``server.write_timeout`` (logged; the
    connection is dropped, so no client sees it)."""

    code = "write_timeout"


class PayloadTooLargeError(InvalidRequestError):
    status = 413
    code = "request_too_large"


class RateLimitError(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class InternalError(GatewayError):
    """An unexpected failure inside the gateway; the details go to the log, not the client."""

    status = 500
    type = "server_error"
    code = "internal_error"


class ServiceUnavailableError(GatewayError):
    """The gateway cannot serve the request now (it is shutting down)."""

    status = 503
    type = "server_error"
    code = "service_unavailable"


class UpstreamError(GatewayError):
    """A backend failed (bad status, refused or broken connection)."""

    status = 502
    type = "upstream_error"
    code = "bad_gateway"


class UpstreamTimeoutError(UpstreamError):
    status = 504
    code = "upstream_timeout"


class DialectError(GatewayError):
    """A gateway error shown in another API's error shape (``/v1/messages``: Anthropic's), with the
    same status, param, code and headers: subclass it and override ``to_dict``. The ``error_renderer``
    plugin wraps the error of a front door's request in its dialect's subclass; a plugin that adds a
    front door in another dialect does the same in its own ``gateway_handle_error``."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message, param=error.param, code=error.code, status=error.status, headers=error.headers)
        self.type = error.type  # type: ignore[misc]
