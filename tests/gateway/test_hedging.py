"""Hedged requests over two deployments through the HTTP API: the first to answer serves, a failing
leg leaves the other, a leaving client cancels both, the delay follows the measured p95."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest

from tests.gateway.two_deployments import (
    both,
    events,
    post,
    served_by,
    setup,
    until,
)
from tests.upstreams.openai import OpenAIUpstream, Reply

# Hedging -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_hedged_request_is_served_by_the_deployment_that_answers_first(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream, stream: bool
) -> None:
    client = await gateway(setup(primary, secondary, both(hedge={"delay": 0.05})))
    primary.reply(Reply(hang=True))
    started = time.monotonic()
    resp = await post(client, stream=stream)
    assert resp.status == 200 and served_by(resp) == ("secondary", "2")
    body = await resp.read()
    assert time.monotonic() - started < 1
    assert (events(body)[-1] == b"[DONE]") if stream else orjson.loads(body)["usage"]["total_tokens"] == 15
    await until(lambda: primary.disconnects == 1)  # the slower leg was cancelled


async def test_no_hedge_when_the_first_deployment_answers_in_time(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(hedge={"delay": 0.5})))
    resp = await post(client)
    assert served_by(resp) == ("primary", "1") and not secondary.requests


async def test_a_failing_hedge_leaves_the_first_leg_to_answer(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(hedge={"delay": 0.05})))
    primary.reply(Reply(delay=0.3))
    secondary.fail(1)
    resp = await post(client)
    assert resp.status == 200 and served_by(resp) == ("primary", "2")


async def test_a_client_leaving_cancels_both_legs_of_a_hedged_request(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(hedge={"delay": 0.05})))
    primary.reply(Reply(hang=True))
    secondary.reply(Reply(hang=True))
    request = asyncio.ensure_future(post(client, stream=True))
    await until(lambda: len(primary.requests) == len(secondary.requests) == 1)
    request.cancel()  # the client goes away
    with pytest.raises(asyncio.CancelledError):
        await request
    await until(lambda: primary.disconnects == secondary.disconnects == 1)
    assert primary.active == secondary.active == 0


async def test_the_hedge_delay_follows_the_measured_p95(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    hedge = {"delay": "p95", "initial_delay": 5, "min_samples": 3}
    client = await gateway(setup(primary, secondary, both(hedge=hedge)))
    for _ in range(3):
        assert served_by(await post(client)) == ("primary", "1")  # fast answers measured
    primary.reply(Reply(hang=True))
    started = time.monotonic()
    resp = await post(client)
    assert served_by(resp) == ("secondary", "2")
    assert time.monotonic() - started < 1  # hedged after the measured p95, not initial_delay
