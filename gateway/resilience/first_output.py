"""The first output of a model request, and all that may happen before it: the deployment chosen by
``gateway_select_backend``, per-attempt timeouts, retries with back-off, fallbacks to other models and
hedged requests. Nothing here runs once the first byte has gone to the client: a failure after it
ends the stream with an error event (``pipeline._stream``).

After a failed attempt the routing hook is called again with ``ctx.attempts`` listing what was
tried; it returns the next deployment (another one of the model, the same one again, or one of a
fallback model) or None when nothing is left, and the client gets the last error. A model without
retries, fallbacks or hedging takes one attempt, with no extra work.
"""

from __future__ import annotations

import asyncio

from gateway.context import RequestContext
from gateway.errors import GatewayError, ModelNotFoundError
from gateway.resilience.attempts import Call, Retrying, Select, Served, attempt, sequential
from gateway.resilience.hedging import hedged
from gateway.resilience.timeouts import TIMEOUT_HEADER, client_limits, request_deadline, silence
from gateway.resilience.watchdog import Watchdog


async def first_output(ctx: RequestContext, call: Call, select: Select) -> Served:
    """Route the request and get its first output, retrying, falling back and hedging as the
    model's settings say; raise the error the client should see when every attempt failed."""
    limits = client_limits(ctx.request.headers) if TIMEOUT_HEADER in ctx.request.headers else None
    deployment = select(ctx)  # from here on, the deployment is tried or given back (a circuit's probe)
    if deployment is None:
        raise ModelNotFoundError(ctx.body["model"] if ctx.body else ctx.model or "")
    loop = asyncio.get_running_loop()
    deadline = request_deadline(ctx, deployment, limits, loop.time())
    writes = ctx.config.server.write_timeout if ctx.stream else None  # a stream's writes are watched
    watchdog = Watchdog(*silence(deployment, limits), deadline, writes, loop)
    try:
        route = deployment.route
        if route is None or not route.resilient:  # one attempt: no retry state to keep
            result = await attempt(ctx, call, deployment, watchdog)
            if isinstance(result, GatewayError):
                raise result
            return result
        run = Retrying.start(ctx, call, select, deployment, watchdog, limits)
        if route.hedge is not None:
            return await hedged(run, deployment, route.hedge)
        return await sequential(run, deployment)
    except BaseException:
        watchdog.stop()
        raise
