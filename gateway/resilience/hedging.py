"""Hedged requests (a model's ``hedge`` setting): when the first deployment has sent nothing after
the hedge delay (fixed, or a percentile of its measured time to first byte), the same request starts
on a second deployment; the first output wins and the other leg is cancelled, as are both when the
client leaves. When every leg failed, retries and fallbacks go on as in ``attempts.sequential``."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from gateway.context import Attempt, Deployment, RequestContext
from gateway.errors import GatewayError, UpstreamTimeoutError
from gateway.model_table import HedgeConfig
from gateway.resilience.attempts import (
    ATTEMPTS_HEADER,
    BACKEND_HEADER,
    Call,
    Retrying,
    Served,
    close,
    first_of,
    report,
    same,
    served,
    unused,
    waiting,
)
from gateway.resilience.timeouts import silence
from gateway.resilience.watchdog import Watchdog


@dataclasses.dataclass(slots=True, eq=False)
class _Leg:
    deployment: Deployment
    ctx: RequestContext
    attempt: Attempt


async def _lead(call: Call, deployment: Deployment, ctx: RequestContext, limit: float) -> tuple[Any, Any, Any, float]:
    """One leg of a hedged request: ``(chunks, first, None, seconds)`` or ``(None, None, error, seconds)``."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        async with asyncio.timeout(limit):
            chunks, first, error = await first_of(ctx, call, deployment)
    except TimeoutError:
        ctx.upstream_errors.append(UpstreamTimeoutError.__name__)
        chunks, first = None, None
        error = UpstreamTimeoutError(f"Backend {deployment.backend.name!r} did not respond within {limit:g} seconds.")
    return chunks, first, error, loop.time() - start


def _hedge_delay(deployment: Deployment, hedge: HedgeConfig) -> float:
    """Seconds before the second leg: fixed, or a percentile of the deployment's first-byte times."""
    percentile = hedge.percentile
    if percentile is None:
        return float(hedge.delay)
    stats = deployment.stats
    if stats is None or stats.latency.count < hedge.min_samples:
        return hedge.initial_delay
    return max(hedge.min_delay, stats.latency.percentile(percentile) or 0.0)


async def hedged(run: Retrying, deployment: Deployment, hedge: HedgeConfig) -> Served:
    """Attempts as legs running side by side: after the hedge delay without a first output, a second
    deployment gets the same request; the first output wins and the other leg is cancelled. When
    every leg failed, retries and fallbacks go on as in the sequential case, one leg at a time."""
    ctx, watchdog, limits = run.ctx, run.watchdog, run.limits
    loop = watchdog.loop
    legs: dict[asyncio.Task[tuple[Any, Any, Any, float]], _Leg] = {}
    launched = 0

    def launch(target: Deployment, leg_ctx: RequestContext) -> None:
        nonlocal launched
        launched += 1
        leg_ctx.deployment = target
        ctx.response_headers[BACKEND_HEADER] = target.name
        if target.stats is not None:
            target.stats.begin()
        attempt = Attempt(target)
        ctx.attempts.append(attempt)
        task = loop.create_task(_lead(run.call, target, leg_ctx, silence(target, limits)[0]))
        legs[task] = _Leg(target, leg_ctx, attempt)

    launch(deployment, ctx)
    ctx.deployment = deployment
    hedge_at: float | None = loop.time() + _hedge_delay(deployment, hedge)
    last: GatewayError | None = None
    try:
        with waiting(ctx, watchdog):
            while True:
                timeout = None if hedge_at is None else max(0.0, hedge_at - loop.time())
                done, _ = await asyncio.wait(legs, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if not done:  # the hedge delay is over
                    hedge_at = None
                    nxt = run.select(ctx)
                    if nxt is not None and any(same(leg.deployment, nxt) for leg in legs.values()):
                        unused(nxt)  # hedging is across deployments only
                    elif nxt is not None:
                        launch(nxt, _leg_context(ctx, run.base_headers))
                    continue
                winner = None
                for task in done:
                    leg = legs.pop(task)
                    chunks, first, error, waited = task.result()
                    if error is None and winner is None:
                        winner = (leg, chunks, first, waited)
                    elif error is None:  # two answered at once: the other one is not needed
                        await close(chunks)
                        if leg.deployment.stats is not None:
                            leg.deployment.stats.succeeded(waited)
                            leg.deployment.stats.end()
                    else:
                        leg.attempt.error = last = error
                        report(leg.deployment, error)
                if winner is not None:
                    return _won(ctx, winner, watchdog, limits)
                if legs:
                    continue
                assert last is not None
                nxt = await run.next(last, deployment.route)
                launch(nxt, _leg_context(ctx, run.base_headers))
                if hedge_at is not None:  # not hedged yet: the new leg may be
                    hedge_at = loop.time() + _hedge_delay(nxt, hedge)
    finally:
        ctx.attempt_count = launched
        ctx.response_headers[ATTEMPTS_HEADER] = str(launched)
        await _abandon(legs)


def _leg_context(ctx: RequestContext, base_headers: dict[str, str]) -> RequestContext:
    """The context of a leg after the first: the request's, with headers of its own."""
    return dataclasses.replace(ctx, response_headers=dict(base_headers))


def _won(
    ctx: RequestContext,
    winner: tuple[_Leg, Any, Any, float],
    watchdog: Watchdog,
    limits: dict[str, float] | None,
) -> Served:
    leg, chunks, first, waited = winner
    ctx.attempts.remove(leg.attempt)  # ctx.attempts: the deployments tried besides the one that served
    ctx.deployment = leg.deployment
    if leg.ctx is not ctx:
        ctx.response_headers.clear()
        ctx.response_headers.update(leg.ctx.response_headers)
    ctx.response_headers[BACKEND_HEADER] = leg.deployment.name
    watchdog.limit(*silence(leg.deployment, limits))
    return served(ctx, leg.deployment, chunks, first, watchdog, waited, leg.ctx)


async def _abandon(legs: dict[asyncio.Task[tuple[Any, Any, Any, float]], _Leg]) -> None:
    """Cancel the legs still running (the other leg won, the client left, a limit passed) and wait
    until each has closed its upstream call."""
    if not legs:
        return
    for task in legs:
        task.cancel()
    await asyncio.wait(legs)
    for task, leg in legs.items():
        if not task.cancelled() and task.exception() is None:  # it had answered in the same instant
            await close(task.result()[0])
        if leg.deployment.stats is not None:
            leg.deployment.stats.dropped()
    legs.clear()
