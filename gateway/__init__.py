"""An OpenAI-compatible LLM gateway: the public API for plugin and backend authors."""

__version__ = "0.1.0"

from gateway.backend import Backend, BackendConfig, model_object
from gateway.context import Deployment, Principal, RequestContext
from gateway.errors import (
    AuthenticationError,
    ContentPolicyError,
    GatewayError,
    InternalError,
    InvalidRequestError,
    MethodNotAllowedError,
    ModelNotFoundError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    UnsupportedEndpointError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.hookspecs import hookimpl
from gateway.streaming import ChunkFilter

__all__ = [
    "AuthenticationError",
    "Backend",
    "BackendConfig",
    "ChunkFilter",
    "ContentPolicyError",
    "Deployment",
    "GatewayError",
    "InternalError",
    "InvalidRequestError",
    "MethodNotAllowedError",
    "ModelNotFoundError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "Principal",
    "RateLimitError",
    "RequestContext",
    "ServiceUnavailableError",
    "UnsupportedEndpointError",
    "UpstreamError",
    "UpstreamTimeoutError",
    "__version__",
    "hookimpl",
    "model_object",
]
