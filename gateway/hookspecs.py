"""Every hook a plugin can implement, with its contract. Specs only, no logic.

Hooks marked *may be async* accept ``async def`` impls: the host calls each impl in call order
(pluggy's LIFO, changed only by ``tryfirst``/``trylast``) and awaits it before calling the next.
The other hooks are synchronous: an ``async def`` impl of one is rejected when it registers.
Per-request hooks take ``ctx`` (a ``gateway.RequestContext``) and at most one more argument;
an impl may accept fewer arguments than the spec names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from aiohttp import web
    from pydantic import BaseModel

    from gateway.backend import Backend, BackendRegistry
    from gateway.config import GatewayConfig
    from gateway.context import Deployment, Principal, RequestContext
    from gateway.errors import GatewayError
    from gateway.streaming import ChunkFilter

PROJECT = "gateway"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)
"""Marker for hook implementations: ``@hookimpl`` (optionally ``tryfirst=True`` / ``trylast=True``)."""

#: Hooks whose impls may be ``async def``; the host awaits them in call order.
ASYNC_HOOKS = frozenset(
    {
        "gateway_authenticate",
        "gateway_process_request",
        "gateway_process_response",
        "gateway_handle_error",
        "gateway_request_finished",
    }
)

#: Sync hooks called on every request; the host calls their impls directly (``Hooks.call``).
PER_REQUEST_HOOKS = frozenset({"gateway_select_backend", "gateway_stream_filter"})


# Start-up hooks --------------------------------------------------------------------------------


@hookspec
def gateway_register_config(register: Callable[[str, type[BaseModel]], None]) -> None:
    """Declare this plugin's config section, before the YAML is validated.

    Call ``register(section, Model)``: the YAML's ``plugins.<section>`` is validated with the pydantic
    ``Model`` (absent -> ``Model()``), and the result is ``config.plugin_config(section)``.
    Sync; all impls run.
    """


@hookspec
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    """Declare backend types: ``register(type_name, BackendClass)``.

    A YAML ``backends`` entry with ``type: <type_name>`` is validated with ``BackendClass.Config``
    and instantiated with it. Sync; all impls run; a type name registered twice is an error.
    """


@hookspec
def gateway_setup_app(app: web.Application, config: GatewayConfig) -> None:
    """Add routes, middlewares or signals to the app, after the core routes exist.

    Runs in ``create_app``; CORS is ``trylast`` so it sees every route. Sync; all impls run.
    """


@hookspec
def gateway_cleanup_ctx(
    app: web.Application, config: GatewayConfig
) -> Callable[[web.Application], AsyncIterator[None]] | None:
    """Return an async generator function to append to ``app.cleanup_ctx`` (start-up code, ``yield``,
    cleanup code), or None. Sync (it returns the generator function); all non-None results are used.
    """


@hookspec
def gateway_idle(config: GatewayConfig) -> bool | None:
    """True when this plugin has nothing to do on any request under ``config`` (say, its section
    configures nothing): its per-request hooks are then not called while that config serves (a
    reload asks again). Sync; each plugin answers for itself.
    """


# Per-request hooks -----------------------------------------------------------------------------


@hookspec
def gateway_authenticate(ctx: RequestContext) -> Principal | None:
    """Establish who is calling. Runs first for every API request (not for health checks).

    Return a ``Principal``, or None to pass. The first non-None result wins; later impls are not
    called. Raise ``gateway.errors.AuthenticationError`` (401) or ``PermissionDeniedError`` (403)
    to refuse. May be async.
    """


@hookspec
def gateway_process_request(ctx: RequestContext) -> None:
    """Pre-process a request after authentication: edit ``ctx.body`` in place, raise a
    ``GatewayError`` to refuse, or set ``ctx.response`` to a response dict to answer directly
    (no backend is called). All impls run, in call order. May be async.
    """


@hookspec(firstresult=True)
def gateway_select_backend(ctx: RequestContext, backends: BackendRegistry) -> Deployment | None:
    """Choose where a request goes: return a ``Deployment`` (backend + upstream model name; optionally
    its ``name``, the ``route`` whose retry, timeout and hedging settings apply, and its ``stats``).

    Called once per attempt. After an attempt failed before any byte reached the client, it is
    called again with ``ctx.attempts`` listing the deployments tried and why each failed (``error``
    None: still running, the first leg of a hedged request): return the next deployment, or None to
    give up (the client gets the last error). The built-in ``routing`` plugin is the ``trylast``
    default (the YAML ``models`` table: strategies, circuit breakers, retries and fallbacks). The first
    non-None result wins. Raise ``ModelNotFoundError`` for a model nothing serves. Sync.
    """


@hookspec
def gateway_stream_filter(ctx: RequestContext) -> ChunkFilter | None:
    """Once per streamed response, before the first write: return a ``ChunkFilter`` to see every
    chunk, or None. A filter is called with each chunk dict of the endpoint's type
    (``chat.completion.chunk``, or ``text_completion`` on ``/v1/completions``: check
    ``ctx.endpoint``) and returns the chunk (edited or not), None to drop it, or a list of chunks;
    at the end it is called once with None to flush what it held back. Filters apply in call order.
    When no plugin returns one, the backend's bytes pass through untouched. Sync.
    """


@hookspec
def gateway_process_response(ctx: RequestContext, response: dict[str, Any]) -> None:
    """Post-process a non-streamed response dict (chat completion, text completion, embeddings
    list, models list, model, /info, the OpenAPI document of ``/openapi.json``; ``ctx.endpoint``
    says which) in place, before it is serialised. All impls run, in call order. May be async.
    """


@hookspec
def gateway_handle_error(ctx: RequestContext, error: BaseException) -> GatewayError | None:
    """Turn an exception raised while serving a request into the ``GatewayError`` the client sees
    (its status and OpenAI error body; after a stream started, a final SSE error event).

    The first non-None result wins; the built-in ``error_renderer`` is the ``trylast`` default
    (``GatewayError`` as it is, anything else a logged 500; on a front door in another dialect,
    ``/v1/messages``, wrapped in that dialect's ``gateway.errors.DialectError``). May be async.
    """


@hookspec
def gateway_request_finished(ctx: RequestContext, error: BaseException | None) -> None:
    """Observe a finished request: called exactly once per request, after its last byte, with the
    exception that ended it (or None). For access logs, metrics and accounting. All impls run;
    an exception in one is logged and swallowed. May be async.
    """
