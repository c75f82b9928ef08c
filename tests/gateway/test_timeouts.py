"""The ``X-Gateway-Timeout`` header and the limits of each attempt, then the deadlines
(first byte, idle, total) through the HTTP API over two deployments."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest

from gateway.context import Deployment
from gateway.errors import InvalidRequestError
from gateway.loading import load
from gateway.resilience.timeouts import client_limits, silence
from tests.gateway.two_deployments import (
    MESSAGES,
    both,
    events,
    post,
    sdk,
    served_by,
    setup,
    until,
)
from tests.upstreams.openai import OpenAIUpstream, Reply


def test_client_limits() -> None:
    assert client_limits({}) is None
    assert client_limits({"X-Gateway-Timeout": "2.5"}) == {"total": 2.5}
    assert client_limits({"X-Gateway-Timeout": "first_byte=1, idle = 2,total=9"}) == {
        "first_byte": 1.0,
        "idle": 2.0,
        "total": 9.0,
    }


@pytest.mark.parametrize("value", ["", "soon", "0", "-1", "inf", "nan", "connect=1", "total=1,total=2", "idle=", "=3"])
def test_malformed_limits_are_a_400(value: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        client_limits({"X-Gateway-Timeout": value})
    assert info.value.code == "invalid_header" and "X-Gateway-Timeout" in info.value.message


def test_silence_comes_from_the_model_else_the_backend_and_clients_only_lower_it() -> None:
    loaded = load(
        {
            "backends": [{"name": "mock", "type": "mock", "timeout": 7}],
            "models": [
                {"name": "plain", "backend": "mock"},
                {"name": "tight", "backend": "mock", "timeouts": {"first_byte": 2, "idle": 3}},
            ],
        }
    )
    [backend] = loaded.backends
    plain, tight = (Deployment(backend, "x", route=route) for route in loaded.config.models)
    assert silence(plain, None) == (7, 7)
    assert silence(tight, None) == (2, 3)
    assert silence(tight, {"first_byte": 0.5, "idle": 60}) == (0.5, 3)
    assert silence(Deployment(backend, "x"), {"idle": 1}) == (7, 1)


# Timeouts ----------------------------------------------------------------------------------------


async def test_a_silent_upstream_falls_back_after_the_first_byte_timeout(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(timeouts={"first_byte": 0.2})))
    primary.reply(Reply(hang=True))
    started = time.monotonic()
    async with sdk(client) as oai:
        raw = await oai.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=True)
        chunks = [c async for c in raw.parse()]
    assert served_by(raw) == ("secondary", "2")
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from upstream"
    assert 0.2 <= time.monotonic() - started < 1.5
    await until(lambda: primary.disconnects == 1)  # the silent call was dropped


@pytest.mark.parametrize(
    ("reply", "code"),
    [(Reply(hang_after=2), "upstream_timeout"), (Reply(die_after=2), "bad_gateway")],
    ids=["hangs", "dies"],
)
async def test_a_failure_after_the_first_byte_ends_the_stream_with_an_error_event(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream, reply: Reply, code: str
) -> None:
    client = await gateway(setup(primary, secondary, both(timeouts={"idle": 0.2})))
    primary.reply(reply)
    started = time.monotonic()
    resp = await post(client, stream=True)
    assert resp.status == 200
    got = events(await resp.read())
    assert time.monotonic() - started < 1  # the idle limit, not the backend's timeout of 2 s
    assert b"[DONE]" not in got
    assert orjson.loads(got[-1])["error"]["code"] == code
    assert orjson.loads(got[0])["choices"][0]["delta"]["role"] == "assistant"
    assert not secondary.requests  # bytes were sent: no retry


async def test_the_total_timeout_ends_a_slow_stream(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(timeouts={"total": 0.4})))
    primary.reply(Reply(content=" ".join(["word"] * 30), chunk_delay=0.05))
    started = time.monotonic()
    resp = await post(client, stream=True)
    got = events(await resp.read())
    assert time.monotonic() - started < 1
    error = orjson.loads(got[-1])["error"]
    assert error["code"] == "upstream_timeout" and "time limit" in error["message"]
    assert b"[DONE]" not in got


async def test_the_total_timeout_bounds_retries_too(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both(timeouts={"total": 0.3, "first_byte": 1})))
    primary.reply(Reply(hang=True))
    secondary.reply(Reply(hang=True))
    started = time.monotonic()
    resp = await post(client)
    assert resp.status == 504 and served_by(resp) == ("primary", "1")
    assert time.monotonic() - started < 0.8
    assert not secondary.requests


async def test_clients_lower_timeouts_with_a_header(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both()))
    primary.reply(Reply(delay=1))
    started = time.monotonic()
    resp = await post(client, **{"X-Gateway-Timeout": "first_byte=0.2"})
    assert resp.status == 200 and served_by(resp) == ("secondary", "2")
    assert time.monotonic() - started < 0.8

    primary.reply(Reply(delay=1))
    resp = await post(client, **{"X-Gateway-Timeout": "0.2"})  # the total
    assert resp.status == 504 and served_by(resp) == ("primary", "1")

    resp = await post(client, **{"X-Gateway-Timeout": "whenever"})
    assert resp.status == 400 and (await resp.json())["error"]["code"] == "invalid_header"


async def test_clients_cannot_raise_timeouts(gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream) -> None:
    single = {"name": "m", "backend": "primary", "timeouts": {"first_byte": 0.2}}
    client = await gateway(setup(primary, secondary, single))
    primary.reply(Reply(delay=1))
    started = time.monotonic()
    resp = await post(client, **{"X-Gateway-Timeout": "first_byte=30, total=60"})
    assert resp.status == 504 and time.monotonic() - started < 0.8
    assert "0.2 seconds" in (await resp.json())["error"]["message"]


def test_by_default_a_silent_upstream_gets_a_minute_to_start_and_between_chunks_and_no_total() -> None:
    loaded = load({"backends": [{"name": "mock", "type": "mock"}], "models": [{"name": "m", "backend": "mock"}]})
    [backend] = loaded.backends
    [route] = loaded.config.models
    deployment = Deployment(backend, "m", route=route)
    assert silence(deployment, None) == (60, 60)
    assert silence(deployment, client_limits({"X-Gateway-Timeout": "first_byte=5"})) == (5, 60)
    assert route.timeouts is None or route.timeouts.total is None
