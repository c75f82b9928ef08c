"""Attempts at a backend's first output, one after the other: the outcome of one attempt, and the
loop that retries and falls back (the routing hook is called again with ``ctx.attempts`` after each
failure and picks the next deployment). Hedged requests build on the same steps (``hedging``)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from gateway.context import Attempt, Deployment, RequestContext
from gateway.errors import GatewayError, InternalError, ServiceUnavailableError, UpstreamError, UpstreamTimeoutError
from gateway.keys import lifecycle_key
from gateway.lifecycle import SHUTTING_DOWN
from gateway.model_table import ModelRoute, RetryConfig
from gateway.resilience.retry import backoff, retry_after, verdict
from gateway.resilience.timeouts import retry_deadline, silence
from gateway.resilience.watchdog import Watchdog

if TYPE_CHECKING:
    from gateway.backend import Backend

BACKEND_HEADER = "X-Gateway-Backend"
ATTEMPTS_HEADER = "X-Gateway-Attempts"

Call = Callable[["Backend", RequestContext], AsyncIterator[Any]]
Select = Callable[[RequestContext], Deployment | None]

_DEFAULT_RETRY = RetryConfig()


#: Exceptions that are the gateway's own fault (a bug, a body it cannot encode, memory), not the
#: upstream's: 500, never retried, never counted against a deployment's health or circuit.
OWN_FAULTS = (TypeError, AttributeError, NameError, ArithmeticError, AssertionError, RecursionError, MemoryError)


def backend_failure(ctx: RequestContext, exc: Exception) -> GatewayError:
    """What the client sees for an exception out of a backend: a ``GatewayError`` as it is, a timeout
    as 504, anything else as 502 (the details go to the log, where secrets are redacted)."""
    ctx.upstream_errors.append(type(exc).__name__)
    if isinstance(exc, GatewayError):
        return exc
    name = ctx.backend.name if ctx.backend else "?"
    if isinstance(exc, TimeoutError):
        return UpstreamTimeoutError(f"Backend {name!r} timed out.")
    ctx.log.error("backend failed", backend=name, exc_info=exc)
    if isinstance(exc, OWN_FAULTS):
        return InternalError(f"The gateway failed while calling backend {name!r} ({type(exc).__name__}).")
    return UpstreamError(f"Backend {name!r} failed ({type(exc).__name__}).")


def interrupted(ctx: RequestContext, watchdog: Watchdog) -> GatewayError | None:
    """After a ``CancelledError``: the error to answer with when the gateway caused it itself (the
    backend's silence, the request's time limit, the end of the shutdown grace period); None when the
    client left."""
    if watchdog.expired():
        ctx.upstream_errors.append(UpstreamTimeoutError.__name__)
        name = ctx.backend.name if ctx.backend else "?"
        if watchdog.reason == "deadline":
            return UpstreamTimeoutError(f"Backend {name!r} did not finish within the request's time limit.")
        return UpstreamTimeoutError(f"Backend {name!r} did not respond within {watchdog.timeout:g} seconds.")
    if ctx.request.app[lifecycle_key].ended_by_shutdown():
        return ServiceUnavailableError(SHUTTING_DOWN)
    return None


@contextlib.contextmanager
def waiting(ctx: RequestContext, watchdog: Watchdog) -> Iterator[None]:
    """Count the block's time as waiting for upstreams (``ctx.upstream_wait``); a cancellation the
    gateway caused itself leaves it as that error (``interrupted``)."""
    start = watchdog.loop.time()
    try:
        yield
    except asyncio.CancelledError:
        error = interrupted(ctx, watchdog)
        if error is not None:
            raise error from None
        raise
    finally:
        ctx.upstream_wait += watchdog.loop.time() - start


async def close(chunks: AsyncIterator[Any] | None) -> None:
    """Close a backend's iterator (an async generator ends its upstream call here)."""
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


def report(deployment: Deployment, error: GatewayError) -> None:
    """Count an attempt's failure: against the deployment when it is the upstream's; as neither a
    success nor a failure when it is the gateway's own (``InternalError``)."""
    stats = deployment.stats
    if stats is None:
        return
    if isinstance(error, InternalError):
        stats.dropped()
    elif verdict(error) == "retry":
        stats.failed()
    else:
        stats.refused()


@dataclasses.dataclass(slots=True, eq=False)
class Served:
    """The attempt that produced the first output. ``leg`` is the context its backend writes to:
    ``ctx``, or the copy a hedged request's second leg ran with."""

    deployment: Deployment
    chunks: AsyncIterator[Any]
    first: Any
    watchdog: Watchdog
    leg: RequestContext

    async def close(self, ctx: RequestContext) -> None:
        """The response is over: stop the watchdog, close the backend's iterator, count it done."""
        self.watchdog.stop()
        try:
            await close(self.chunks)
        finally:
            if self.deployment.stats is not None:
                self.deployment.stats.end()
            if self.leg is not ctx:
                ctx.usage = self.leg.usage or ctx.usage


@dataclasses.dataclass(slots=True, eq=False)
class Retrying:
    """What the attempts of one resilient request share, sequential or hedged: how to call a backend
    and pick the next deployment, the watchdog, the client's timeout limits, the response headers as
    they were before any attempt and the time after which no retry starts."""

    ctx: RequestContext
    call: Call
    select: Select
    watchdog: Watchdog
    limits: dict[str, float] | None
    base_headers: dict[str, str]
    last_call: float | None

    @classmethod
    def start(
        cls,
        ctx: RequestContext,
        call: Call,
        select: Select,
        deployment: Deployment,
        watchdog: Watchdog,
        limits: dict[str, float] | None,
    ) -> Retrying:
        """Before the first attempt at ``deployment``."""
        retry = deployment.route.retry if deployment.route else None
        last_call = retry_deadline(ctx, retry, watchdog.deadline, watchdog.loop.time())
        return cls(ctx, call, select, watchdog, limits, dict(ctx.response_headers), last_call)

    async def next(self, error: GatewayError, route: ModelRoute | None) -> Deployment:
        """The deployment to try after ``error`` (see ``next_attempt``)."""
        return await next_attempt(self.ctx, self.select, self.watchdog, self.last_call, error, route)


async def sequential(run: Retrying, deployment: Deployment) -> Served:
    """Attempts one after the other (a resilient model without hedging) until one gives a first output."""
    ctx = run.ctx
    while True:
        result = await attempt(ctx, run.call, deployment, run.watchdog)
        if isinstance(result, Served):
            return result
        ctx.attempts.append(Attempt(deployment, result))
        nxt = await run.next(result, deployment.route)
        ctx.response_headers.clear()
        ctx.response_headers.update(run.base_headers)
        run.watchdog.limit(*silence(nxt, run.limits))
        deployment = nxt


async def next_attempt(
    ctx: RequestContext,
    select: Select,
    watchdog: Watchdog,
    last_call: float | None,
    error: GatewayError,
    route: ModelRoute | None,
) -> Deployment:
    """The deployment to try after ``error``, counted as a retry (and as a fallback when it serves
    another model than ``route``); raise ``error`` when it is final or nothing is left to try."""
    if verdict(error, route.retry.on_status if route else None) == "final":
        raise error
    nxt = await next_deployment(ctx, select, watchdog, last_call)
    if nxt is None:
        raise error
    if nxt.route is not route:
        ctx.fallbacks += 1
    ctx.retries += 1
    return nxt


async def first_of(
    ctx: RequestContext, call: Call, deployment: Deployment
) -> tuple[AsyncIterator[Any], Any, None] | tuple[None, None, GatewayError]:
    """Call ``deployment``'s backend and await its first output: ``(chunks, first, None)``, or
    ``(None, None, error)`` when it failed or returned nothing (its iterator closed). A cancellation
    closes the iterator and propagates."""
    try:
        chunks = call(deployment.backend, ctx)
    except Exception as exc:
        return None, None, backend_failure(ctx, exc)
    try:
        first = await anext(chunks)
    except StopAsyncIteration:
        error: GatewayError = UpstreamError(f"Backend {deployment.backend.name!r} returned no response.")
    except Exception as exc:
        error = backend_failure(ctx, exc)
    except BaseException:
        await close(chunks)
        raise
    else:
        return chunks, first, None
    await close(chunks)
    return None, None, error


def served(
    ctx: RequestContext,
    deployment: Deployment,
    chunks: AsyncIterator[Any],
    first: Any,
    watchdog: Watchdog,
    waited: float,
    leg: RequestContext,
) -> Served:
    """The attempt that gave the first output after ``waited`` seconds: recorded, and the stream's
    watchdog switched from the first-byte timeout to the gaps between chunks."""
    watchdog.started()
    ctx.first_byte = time.perf_counter()
    if deployment.stats is not None:
        deployment.stats.succeeded(waited)
    return Served(deployment, chunks, first, watchdog, leg)


async def attempt(ctx: RequestContext, call: Call, deployment: Deployment, watchdog: Watchdog) -> Served | GatewayError:
    """One attempt: the deployment's first output, or the error it failed with. A cancellation that
    is not a timeout (the client left, shutdown) propagates."""
    ctx.deployment = deployment
    headers = ctx.response_headers
    headers[BACKEND_HEADER] = deployment.name
    ctx.attempt_count = len(ctx.attempts) + 1
    headers[ATTEMPTS_HEADER] = str(ctx.attempt_count)
    stats = deployment.stats
    if stats is not None:
        stats.begin()
    loop = watchdog.loop
    since = loop.time()
    watchdog.since = since  # waiting
    try:
        chunks, first, error = await first_of(ctx, call, deployment)
    except BaseException as exc:  # the iterator is closed
        ctx.upstream_wait += loop.time() - since
        watchdog.idle()
        silent = watchdog.fired and watchdog.reason == "silence"
        gateway_error = interrupted(ctx, watchdog) if isinstance(exc, asyncio.CancelledError) else None
        if gateway_error is None or not silent:  # the client left, a limit or shutdown: no retry
            if stats is not None:
                stats.dropped()
            if gateway_error is not None:
                raise gateway_error from None
            raise
        error = gateway_error
    else:
        waited = loop.time() - since
        ctx.upstream_wait += waited
        if error is None:
            return served(ctx, deployment, chunks, first, watchdog, waited, ctx)
        watchdog.idle()
    report(deployment, error)
    return error


async def next_deployment(
    ctx: RequestContext, select: Select, watchdog: Watchdog, last_call: float | None
) -> Deployment | None:
    """The deployment for the next attempt (after its back-off), or None to give up."""
    loop = watchdog.loop
    if last_call is not None and loop.time() >= last_call:
        return None
    nxt = select(ctx)
    if nxt is None:
        return None
    wait = _pause(ctx.attempts, nxt)
    if wait is None or (last_call is not None and loop.time() + wait >= last_call):
        unused(nxt)
        return None
    if wait > 0:
        try:
            with waiting(ctx, watchdog):
                await asyncio.sleep(wait)
        except BaseException:
            unused(nxt)
            raise
    return nxt


def _pause(attempts: list[Attempt], nxt: Deployment) -> float | None:
    """Seconds to wait before trying ``nxt``: none for a deployment not tried yet; the upstream's
    ``Retry-After`` (None: longer than the model allows) or a jittered back-off for one that failed."""
    failed = [a for a in attempts if a.error is not None and same(a.deployment, nxt)]
    if not failed:
        return 0.0
    config = nxt.route.retry if nxt.route is not None else _DEFAULT_RETRY
    after = retry_after(failed[-1].error)  # type: ignore[arg-type]
    if after is not None:
        return after if after <= config.max_retry_after else None
    return backoff(config, len(failed))


def same(a: Deployment, b: Deployment) -> bool:
    return a.name == b.name and a.backend is b.backend


def unused(deployment: Deployment) -> None:
    """The router picked ``deployment`` but it will not be tried: a probe slot it took is given back."""
    if deployment.stats is not None:
        deployment.stats.release()
