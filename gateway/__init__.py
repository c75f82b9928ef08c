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
from gateway.lifecycle import in_flight
from gateway.streaming import ChunkFilter

#: The public surface: the modules a plugin or backend may import (docs/plugins.md, "Public surface",
#: says what each offers). Everything else under ``gateway`` is the core's and may change without
#: notice; tests/test_plugin_surface.py holds every module under plugins/ to this list.
PUBLIC_MODULES = frozenset(
    {
        "gateway",  # hookimpl, Backend, RequestContext, the errors, ChunkFilter, in_flight(app)
        "gateway.app",  # create_app: the app built from a config (tests, embedding)
        "gateway.backend",  # Backend, BackendConfig, BackendRegistry, model_object
        "gateway.config",  # GatewayConfig, ConfigError: the validated config a hook receives
        "gateway.context",  # RequestContext, Principal, Deployment, Attempt
        "gateway.endpoints",  # CHAT, COMPLETIONS, EMBEDDINGS and the names ctx.endpoint takes
        "gateway.errors",  # the OpenAI error classes
        "gateway.formats",  # chat, completions, embeddings, requests, response_models, json_schema, request_key
        "gateway.keys",  # typed app/request keys: ctx_key, backends_key, state_store_key
        "gateway.limits",  # Limits: a principal's rate limits
        "gateway.log",  # redact, is_secret_key, json_needs_redaction, REDACTED, write_event
        "gateway.model_table",  # ModelRoute, DeploymentConfig: the ``models`` table's types
        "gateway.openapi",  # operation(): document a route a plugin adds; build_document
        "gateway.replies",  # json_response: a JSON answer from a plugin's own route
        "gateway.resilience.retry",  # RetryBudget, verdict: for a routing plugin
        "gateway.resilience.stats",  # DeploymentStats: per-deployment health, for a routing plugin
        "gateway.state",  # the shared state store (memory or Redis)
        "gateway.streaming",  # ChunkFilter, encode_event, decode_items: SSE items
        "gateway.testing",  # make_app, run_in_thread, RecordingBackend: for plugins' tests
        "gateway.upstream",  # errors (upstream error mapping), http_client, sse (iter_sse)
    }
)


def is_public(module: str) -> bool:
    """Whether a plugin may import ``module``: it is in ``PUBLIC_MODULES`` or inside a public package
    (``gateway.formats``, ``gateway.upstream``: every module in them)."""
    return any(module == name or (name != "gateway" and module.startswith(name + ".")) for name in PUBLIC_MODULES)


__all__ = [
    "PUBLIC_MODULES",
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
    "in_flight",
    "is_public",
    "model_object",
]
