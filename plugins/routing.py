"""The default router: the YAML ``models`` table (exact names first, then patterns) -> deployment."""

from __future__ import annotations

from gateway import Deployment, hookimpl
from gateway.backend import BackendRegistry
from gateway.context import RequestContext


@hookimpl(trylast=True)
def gateway_select_backend(ctx: RequestContext, backends: BackendRegistry) -> Deployment | None:
    """Route ``ctx.body["model"]`` through the ``models`` table; None when no entry serves it."""
    model = ctx.body["model"] if ctx.body else ctx.model
    route = ctx.config.find_route(model)
    if route is None:
        return None
    return Deployment(backends[route.backend], route.model or model)
