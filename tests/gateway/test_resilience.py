"""Retries, fallbacks, timeouts, circuit breaking and hedging, through the HTTP API against two fake
OpenAI upstreams (tests/upstreams/openai.py) that fail, rate-limit, hang, die or dawdle on demand."""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.upstreams.openai import OpenAIUpstream, Reply
from tests.upstreams.openai_text import OpenAITextUpstream

KEY = "sk-upstream-key-for-tests"
MESSAGES = [{"role": "user", "content": "Hi"}]
CONTEXT_TOO_LONG = {
    "error": {
        "message": "This model's maximum context length is 8192 tokens.",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


@pytest.fixture
async def primary(aiohttp_server: Any) -> OpenAIUpstream:
    return await OpenAIUpstream().serve(aiohttp_server)


@pytest.fixture
async def secondary(aiohttp_server: Any) -> OpenAIUpstream:
    return await OpenAIUpstream().serve(aiohttp_server)


def backend(name: str, base_url: str, **options: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "openai_compat",
        "base_url": base_url,
        "api_key": KEY,
        "timeout": 2,
        "connect_timeout": 0.5,
        **options,
    }


def both(**route: Any) -> dict[str, Any]:
    """Model ``m``: primary first, secondary when it fails."""
    return {
        "name": "m",
        "deployments": [{"backend": "primary"}, {"backend": "secondary"}],
        "strategy": "failover",
        "retry": {"attempts": 2, "backoff": 0.01},
        **route,
    }


def setup(primary: OpenAIUpstream, secondary: OpenAIUpstream, *models: dict[str, Any], **options: Any) -> Any:
    return {
        "backends": [
            backend("primary", primary.base_url, **options),
            backend("secondary", secondary.base_url, **options),
        ],
        "models": list(models) or [both()],
    }


def sdk(client: TestClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)


async def post(client: TestClient, stream: bool = False, model: str = "m", **headers: str) -> aiohttp.ClientResponse:
    body = {"model": model, "messages": MESSAGES, "stream": stream}
    return await client.post("/v1/chat/completions", json=body, headers=headers)


def events(raw: bytes) -> list[Any]:
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


def served_by(resp: Any) -> tuple[str, str]:
    return resp.headers["x-gateway-backend"], resp.headers["x-gateway-attempts"]


async def until(condition: Any, within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Retries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_deployment_that_fails_twice_is_retried_until_it_answers(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream, stream: bool
) -> None:
    single = {"name": "m", "backend": "primary", "retry": {"attempts": 3, "backoff": 0.01}}
    client = await gateway(setup(primary, secondary, single))
    primary.fail(2, status=503)
    async with sdk(client) as oai:
        raw = await oai.chat.completions.with_raw_response.create(model="m", messages=MESSAGES, stream=stream)
        assert served_by(raw) == ("primary", "3")
        if stream:
            text = "".join([c.choices[0].delta.content or "" async for c in raw.parse() if c.choices])
        else:
            text = raw.parse().choices[0].message.content
    assert text == "Hello from upstream"
    assert len(primary.requests) == 3 and not secondary.requests


async def test_retries_stop_at_the_attempts_and_the_client_sees_the_last_error(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    single = {"name": "m", "backend": "primary", "retry": {"attempts": 2, "backoff": 0.01}}
    client = await gateway(setup(primary, secondary, single))
    primary.fail(5, status=500)
    resp = await post(client)
    assert resp.status == 502 and (await resp.json())["error"]["code"] == "bad_gateway"
    assert served_by(resp) == ("primary", "2") and len(primary.requests) == 2


async def test_without_retry_settings_there_is_one_attempt(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, {"name": "m", "backend": "primary"}))
    primary.fail(1)
    resp = await post(client)
    assert resp.status == 502 and served_by(resp) == ("primary", "1")
    assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
    assert len(primary.requests) == 1


@pytest.mark.parametrize("failure", ["503", "reset", "429", "refused"])
async def test_a_failing_deployment_hands_over_to_the_next_at_once(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream, failure: str
) -> None:
    if failure == "refused":
        primary.base_url = f"http://127.0.0.1:{closed_port()}/v1"
    elif failure == "reset":
        primary.reply(Reply(reset=True))
    elif failure == "429":
        primary.reply(Reply(status=429, headers={"Retry-After": "30"}))
    else:
        primary.fail(1, status=503)
    client = await gateway(setup(primary, secondary, both(retry={"attempts": 2, "backoff": 5})))
    started = time.monotonic()
    resp = await post(client, stream=True)
    assert resp.status == 200 and served_by(resp) == ("secondary", "2")
    assert events(await resp.read())[-1] == b"[DONE]"
    assert time.monotonic() - started < 1  # no back-off, no Retry-After wait: another deployment
    assert len(secondary.requests) == 1


async def test_retry_after_is_honoured_before_trying_the_same_deployment_again(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    single = {"name": "m", "backend": "primary", "retry": {"attempts": 2, "backoff": 0}}
    client = await gateway(setup(primary, secondary, single))
    primary.reply(Reply(status=429, headers={"Retry-After": "0.3"}))
    started = time.monotonic()
    resp = await post(client)
    assert resp.status == 200 and served_by(resp) == ("primary", "2")
    assert time.monotonic() - started >= 0.3


async def test_a_retry_after_longer_than_allowed_goes_back_to_the_client(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    single = {"name": "m", "backend": "primary", "retry": {"attempts": 3, "max_retry_after": 1}}
    client = await gateway(setup(primary, secondary, single))
    primary.reply(Reply(status=429, headers={"Retry-After": "30"}))
    async with sdk(client) as oai:
        with pytest.raises(openai.RateLimitError) as info:
            await oai.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "30"
    assert len(primary.requests) == 1


async def test_client_errors_are_not_retried(gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream) -> None:
    client = await gateway(setup(primary, secondary, both(retry={"attempts": 3})))
    primary.reply(Reply(status=400, error={"error": {"message": "bad top_p", "type": "invalid_request_error"}}))
    resp = await post(client)
    assert resp.status == 400 and (await resp.json())["error"]["message"] == "bad top_p"
    assert served_by(resp) == ("primary", "1") and not secondary.requests


async def test_the_retry_budget_bounds_retries(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    no_budget = {"attempts": 3, "backoff": 0.01, "budget": 0, "min_retries_per_second": 0}
    client = await gateway(setup(primary, secondary, {"name": "m", "backend": "primary", "retry": no_budget}))
    primary.fail(3)
    resp = await post(client)
    assert resp.status == 502 and served_by(resp) == ("primary", "1")


async def test_no_attempt_starts_after_the_retry_deadline(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    slow_retry = {"attempts": 5, "backoff": 0.5, "max_backoff": 0.5, "deadline": 0.2}
    client = await gateway(setup(primary, secondary, {"name": "m", "backend": "primary", "retry": slow_retry}))
    primary.fail(5)
    started = time.monotonic()
    resp = await post(client)
    assert resp.status == 502 and served_by(resp) == ("primary", "1")
    assert time.monotonic() - started < 0.4


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"prompt": "Say this is a test", "stream": True}),
        ("/v1/embeddings", {"input": ["one", "two"]}),
    ],
)
async def test_completions_and_embeddings_fail_over_too(
    gateway: Any, aiohttp_server: Any, path: str, body: dict[str, Any]
) -> None:
    primary = await OpenAITextUpstream().serve(aiohttp_server)
    secondary = await OpenAITextUpstream().serve(aiohttp_server)
    client = await gateway(setup(primary, secondary, both()))
    primary.fail(1, status=503)
    resp = await client.post(path, json={"model": "m", **body})
    assert resp.status == 200 and served_by(resp) == ("secondary", "2")
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n") if body.get("stream") else len(orjson.loads(raw)["data"]) == 2
    assert [r.path for r in primary.requests + secondary.requests] == [path, path]


# Fallbacks ---------------------------------------------------------------------------------------


async def test_context_length_errors_fall_back_to_a_larger_model(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    small = {"name": "small", "backend": "primary", "retry": {"attempts": 3}, "fallbacks": ["large"]}
    large = {"name": "large", "backend": "secondary", "model": "big-context"}
    client = await gateway(setup(primary, secondary, small, large))
    primary.reply(Reply(status=400, error=CONTEXT_TOO_LONG))
    async with sdk(client) as oai:
        raw = await oai.chat.completions.with_raw_response.create(model="small", messages=MESSAGES)
    assert served_by(raw) == ("secondary", "2")
    assert raw.parse().model == "small"  # the name the client asked for
    assert len(primary.requests) == 1  # the same model is not retried: its context is too short
    assert secondary.last.body["model"] == "big-context"


async def test_a_context_length_error_without_a_fallback_reaches_the_client(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both()))
    primary.reply(Reply(status=400, error=CONTEXT_TOO_LONG))
    async with sdk(client) as oai:
        with pytest.raises(openai.BadRequestError) as info:
            await oai.chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.code == "context_length_exceeded"
    assert not secondary.requests


async def test_a_model_whose_deployments_are_exhausted_falls_back(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    first = {"name": "m", "backend": "primary", "fallbacks": ["n"]}
    client = await gateway(setup(primary, secondary, first, {"name": "n", "backend": "secondary"}))
    primary.fail(1, status=502)
    resp = await post(client)
    assert resp.status == 200 and served_by(resp) == ("secondary", "2")
    assert (await resp.json())["model"] == "m"


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


# Circuit breaking --------------------------------------------------------------------------------


async def test_the_circuit_opens_sends_one_probe_after_the_cooldown_and_closes(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    circuit = {"failures": 2, "window": 10, "cooldown": 0.3}
    client = await gateway(setup(primary, secondary, both(circuit=circuit)))
    primary.default = Reply(status=500)
    for _ in range(2):  # primary fails, secondary answers
        assert served_by(await post(client)) == ("secondary", "2")
    info = await (await client.get("/info")).json()
    assert info["deployments"]["primary"]["circuit"]["state"] == "open"
    assert info["deployments"]["secondary"]["circuit"]["state"] == "closed"

    for _ in range(3):  # open: straight to secondary, primary gets nothing
        assert served_by(await post(client)) == ("secondary", "1")
    assert len(primary.requests) == 2

    await asyncio.sleep(0.3)
    primary.default = Reply(delay=0.3)  # healthy again, a little slow: the probe is under way a while
    probe = asyncio.ensure_future(post(client))
    await until(lambda: len(primary.requests) == 3)
    assert served_by(await post(client)) == ("secondary", "1")  # half-open: one probe only
    assert served_by(await probe) == ("primary", "1")
    info = await (await client.get("/info")).json()
    assert info["deployments"]["primary"]["circuit"] == {"state": "closed", "recent_failures": 0}
    assert served_by(await post(client)) == ("primary", "1")


async def test_every_circuit_open_is_a_503_with_retry_after(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    single = {"name": "m", "backend": "primary", "circuit": {"failures": 1, "cooldown": 30}}
    client = await gateway(setup(primary, secondary, single))
    primary.fail(1)
    assert (await post(client)).status == 502
    resp = await post(client)
    assert resp.status == 503 and resp.headers["Retry-After"] in ("29", "30")
    assert (await resp.json())["error"]["code"] == "no_deployment_available"
    assert len(primary.requests) == 1


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


# Response headers --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_the_overhead_header_excludes_the_upstream(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream, stream: bool
) -> None:
    client = await gateway(setup(primary, secondary, {"name": "m", "backend": "primary"}))
    primary.reply(Reply(delay=0.3))
    resp = await post(client, stream=stream)
    await resp.read()
    assert served_by(resp) == ("primary", "1")
    assert 0 <= float(resp.headers["x-gateway-overhead-ms"]) < 150  # the upstream's 300 ms are not in it


async def test_headers_of_a_failed_attempt_do_not_leak_into_the_answer(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(setup(primary, secondary, both()))
    primary.reply(Reply(status=429, headers={"x-ratelimit-remaining-requests": "0", "Retry-After": "9"}))
    resp = await post(client)
    assert served_by(resp) == ("secondary", "2")
    assert "x-ratelimit-remaining-requests" not in resp.headers and "Retry-After" not in resp.headers
    assert resp.headers["x-request-id"] == "req_1"  # the secondary's own
