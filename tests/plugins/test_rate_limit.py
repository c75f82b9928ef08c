"""The ``rate_limit`` plugin: the in-memory store against a controllable clock, OpenAI's headers and
429s through the HTTP API (raw and through the openai SDK), per-key limits from the auth plugin,
per-model budgets, tokens estimated then corrected, and concurrency under many simultaneous streams,
a slot freed when its client leaves."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI, OpenAI

from gateway import hookimpl
from gateway.config import ConfigError
from gateway.context import RequestContext
from gateway.keys import generations_key
from gateway.loading import load
from gateway.testing import MOCK_MODEL, Finished, ServerThread, make_app, mock_config
from gateway_plugins.rate_limit import Charge, MemoryStore, duration, store_key
from tests.upstreams.openai import OpenAIUpstream, Reply

LARGE = "mock-gpt-large"
ADMIN_KEY = "gw-admin-7f3a9c2e5b1d4a6f"
TEAM_KEY = "gw-team-4e8b1a6c0d2f9e3b"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
CHAT = {"model": MOCK_MODEL, "messages": MESSAGES}
TIMEOUT = 10.0


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def limits_config(
    rate_limit: Any = None, keys: Any = None, models: Any = (MOCK_MODEL, LARGE), **mock: Any
) -> dict[str, Any]:
    """The mock backend (``mock`` options) behind ``rate_limit``; with ``keys``, behind auth too."""
    plugins: dict[str, Any] = {"rate_limit": rate_limit or {}}
    if keys is not None:
        plugins["auth_api_keys"] = {"keys": keys}
    return {**mock_config(models=models, **mock), "plugins": plugins}


def keys(**limits: Any) -> list[dict[str, Any]]:
    """``admin`` (no limits of its own) and ``team`` (with ``limits``)."""
    return [{"name": "admin", "key": ADMIN_KEY}, {"name": "team", "key": TEAM_KEY, "limits": limits}]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def app_with_clock(config: dict[str, Any], clock: Clock, plugins: Any = ()) -> web.Application:
    app = make_app(config, plugins=plugins)
    app[store_key] = MemoryStore(clock)
    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def start(aiohttp_client: Any, clock: Clock) -> Any:
    """``client = await start(config, plugins=())``: a gateway whose limits follow ``clock``."""

    async def go(config: dict[str, Any], plugins: Any = ()) -> TestClient:
        return await aiohttp_client(app_with_clock(config, clock, plugins))

    return go


def ratelimit_headers(response: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers.items() if k.lower().startswith("x-ratelimit-")}


# OpenAI's duration format ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        *[(0, "0s"), (0.0004, "1ms"), (0.017, "17ms"), (1, "1s"), (59.5, "59.5s"), (60, "1m0s"), (360, "6m0s")],
        *[(179.56, "2m59.56s"), (3723.5, "1h2m3.5s"), (7200, "2h0m0s")],
    ],
)
def test_durations_are_written_as_openai_writes_them(seconds: float, text: str) -> None:
    assert duration(seconds) == text


# The store ------------------------------------------------------------------------------------


async def test_a_window_slides_over_the_last_minute(clock: Clock) -> None:
    store = MemoryStore(clock)
    charge = [Charge("k", limit=3)]
    for remaining in (2, 1, 0):
        grant = await store.acquire(charge)
        assert grant.granted
        assert (grant.quotas[0].remaining, grant.quotas[0].reset, grant.quotas[0].wait) == (remaining, 60.0, 0.0)
        clock.advance(10)
    refused = await store.acquire(charge)  # at +30: the first charge leaves the window at +60
    assert not refused.granted
    assert (refused.quotas[0].remaining, refused.quotas[0].wait, refused.quotas[0].reset) == (0, 30.0, 50.0)
    clock.advance(29.9)
    assert not (await store.acquire(charge)).granted
    clock.advance(0.1)
    assert (await store.acquire(charge)).granted


async def test_charges_are_all_or_nothing(clock: Clock) -> None:
    store = MemoryStore(clock)
    both = [Charge("requests", limit=5), Charge("tokens", limit=100, amount=80)]
    assert (await store.acquire(both)).granted
    refused = await store.acquire(both)
    assert not refused.granted
    assert [q.wait for q in refused.quotas] == [0.0, 60.0]
    assert (await store.acquire([Charge("requests", limit=5)])).quotas[0].remaining == 3  # 1 + this one


async def test_a_charge_larger_than_the_limit_never_fits(clock: Clock) -> None:
    grant = await MemoryStore(clock).acquire([Charge("tokens", limit=100, amount=101)])
    assert not grant.granted
    assert grant.quotas[0].wait == math.inf


async def test_settle_replaces_the_estimate_while_it_counts(clock: Clock) -> None:
    store = MemoryStore(clock)
    grant = await store.acquire([Charge("tokens", limit=100, amount=40)])
    await store.settle(grant.receipts[0], 70)
    assert (await store.acquire([Charge("tokens", limit=100, amount=0)])).quotas[0].remaining == 30
    clock.advance(61)
    await store.settle(grant.receipts[0], 90)  # already out of the window: nothing changes
    assert (await store.acquire([Charge("tokens", limit=100, amount=0)])).quotas[0].remaining == 100


async def test_settle_finds_its_charge_after_older_ones_left_the_window(clock: Clock) -> None:
    store = MemoryStore(clock)
    tokens = [Charge("tokens", limit=100, amount=30)]
    await store.acquire(tokens)
    clock.advance(30)
    grant = await store.acquire(tokens)
    clock.advance(31)  # the first charge leaves the window
    assert (await store.acquire([Charge("tokens", limit=100, amount=0)])).quotas[0].remaining == 70
    await store.settle(grant.receipts[0], 50)
    assert (await store.acquire([Charge("tokens", limit=100, amount=0)])).quotas[0].remaining == 50


async def test_concurrency_slots_are_held_until_released(clock: Clock) -> None:
    store = MemoryStore(clock)
    slot = [Charge("c", limit=2, window=None)]
    first, second = await store.acquire(slot), await store.acquire(slot)
    assert first.granted and second.granted and second.quotas[0].remaining == 0
    clock.advance(3600)  # time does not free a slot
    refused = await store.acquire(slot)
    assert not refused.granted and refused.quotas[0].wait is None
    await store.release(first.receipts[0])
    assert (await store.acquire(slot)).granted


async def test_empty_windows_are_swept(clock: Clock) -> None:
    store = MemoryStore(clock)
    store.SWEEP_EVERY = 3
    await store.acquire([Charge("a", limit=1)])
    await store.acquire([Charge("b", limit=1)])
    clock.advance(61)
    await store.acquire([Charge("c", limit=1)])
    assert set(store._windows) == {"c"}


# Requests per minute through the API ------------------------------------------------------------


async def test_a_keys_requests_per_minute(start: Any, clock: Clock) -> None:
    client = await start(limits_config(keys=keys(requests_per_minute=3)))
    for remaining in ("2", "1", "0"):
        response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
        assert response.status == 200
        assert ratelimit_headers(response) == {
            "x-ratelimit-limit-requests": "3",
            "x-ratelimit-remaining-requests": remaining,
            "x-ratelimit-reset-requests": "1m0s",
        }
        clock.advance(10)
    refused = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "30"
    assert ratelimit_headers(refused) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "50s",
    }
    assert await refused.json() == {
        "error": {
            "message": "Rate limit reached for mock-gpt-model for key `team` on requests per min (RPM): "
            "Limit 3, Used 3, Requested 1. Please try again in 30s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    # another key has its own budget (here none: no headers)
    admin = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_KEY))
    assert admin.status == 200
    assert ratelimit_headers(admin) == {}
    clock.advance(30)
    again = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(TEAM_KEY))
    assert again.status == 200
    assert again.headers["x-ratelimit-remaining-requests"] == "0"  # the ones of +10 and +20 still count
    assert (await again.read()).endswith(b"data: [DONE]\n\n")


async def test_a_reload_applies_its_limits_at_once(start: Any) -> None:
    """What a key is charged is worked out once per config: a reload's limits count from the next
    request on (over the same counters), and a refusal names the model each request asked for."""
    client = await start(limits_config(keys=keys(requests_per_minute=1)))
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200
    refused = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    assert refused.status == 429
    assert (await refused.json())["error"]["message"].startswith(f"Rate limit reached for {LARGE} for key `team` ")
    assert await client.server.app[generations_key].reload(limits_config(keys=keys(requests_per_minute=3)))
    again = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
    assert again.status == 200
    assert ratelimit_headers(again)["x-ratelimit-limit-requests"] == "3"
    assert ratelimit_headers(again)["x-ratelimit-remaining-requests"] == "1"  # the first request still counts


async def test_model_listings_and_refused_callers_do_not_count(start: Any) -> None:
    client = await start(
        limits_config(keys=[{**keys()[1], "models": [MOCK_MODEL], "limits": {"requests_per_minute": 1}}])
    )
    assert (await client.get("/v1/models", headers=bearer(TEAM_KEY))).status == 200
    assert (await client.get(f"/v1/models/{MOCK_MODEL}", headers=bearer(TEAM_KEY))).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer("wrong-key-123456"))).status == 401
    forbidden = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    assert forbidden.status == 403
    assert "x-ratelimit-limit-requests" not in forbidden.headers
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 429


async def test_a_keys_own_limits_override_the_default_field_by_field(start: Any) -> None:
    config = limits_config(
        {"default": {"requests_per_minute": 1, "tokens_per_minute": 1000}}, keys(requests_per_minute=5)
    )
    client = await start(config)
    team = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
    admin = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_KEY))
    assert team.headers["x-ratelimit-limit-requests"] == "5"
    assert admin.headers["x-ratelimit-limit-requests"] == "1"
    assert team.headers["x-ratelimit-limit-tokens"] == admin.headers["x-ratelimit-limit-tokens"] == "1000"
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(ADMIN_KEY))).status == 429
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200


async def test_callers_without_a_key_share_the_default(start: Any) -> None:
    client = await start(limits_config({"default": {"requests_per_minute": 2}}))
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await client.post("/chat/completions", json={**CHAT, "model": LARGE})).status == 200
    refused = await client.post("/v1/chat/completions", json=CHAT)
    assert refused.status == 429
    assert "for callers without a key" in (await refused.json())["error"]["message"]


async def test_a_models_budget_is_shared_by_every_key(start: Any) -> None:
    client = await start(limits_config({"models": {"mock-gpt-l*": {"requests_per_minute": 1}}}, keys()))
    first = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(ADMIN_KEY))
    assert first.status == 200
    assert first.headers["x-ratelimit-remaining-requests"] == "0"
    refused = await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE}, headers=bearer(TEAM_KEY))
    assert refused.status == 429
    assert (await refused.json())["error"]["message"].startswith(
        "Rate limit reached for mock-gpt-large on requests per min (RPM): Limit 1, Used 1, Requested 1."
    )
    other = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
    assert other.status == 200
    assert ratelimit_headers(other) == {}


async def test_a_models_budget_counts_requests_that_reach_it_through_an_alias(start: Any) -> None:
    config = limits_config({"models": {LARGE: {"requests_per_minute": 1}}})
    config["plugins"]["transforms"] = {"rules": [{"aliases": {"fast": LARGE}}]}
    client = await start(config)
    aliased = await client.post("/v1/chat/completions", json={**CHAT, "model": "fast"})
    assert aliased.status == 200
    assert aliased.headers["x-ratelimit-remaining-requests"] == "0"
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": LARGE})).status == 429
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "fast"})).status == 429


UPSTREAM_LIMITS = {
    "X-RateLimit-Limit-Requests": "10000",  # a name in another case than the gateway's is still replaced
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
}


@pytest.mark.parametrize("stream", [False, True])
async def test_the_callers_limits_replace_the_upstreams_headers(aiohttp_server: Any, start: Any, stream: bool) -> None:
    """An OpenAI upstream's ``x-ratelimit-*`` describe the provider account; the caller is told its own."""
    upstream = OpenAIUpstream()
    upstream.default = Reply(headers=UPSTREAM_LIMITS)
    url = str((await aiohttp_server(upstream.app)).make_url("/v1"))
    config = {
        "backends": [{"name": "up", "type": "openai_compat", "base_url": url, "api_key": "sk-upstream-0123456789"}],
        "models": [{"name": "*", "backend": "up"}],
        "plugins": {"auth_api_keys": {"keys": keys(requests_per_minute=3)}},
    }
    client = await start(config)
    body = {"model": "gpt-4o", "messages": MESSAGES, "stream": stream}
    team = await client.post("/v1/chat/completions", json=body, headers=bearer(TEAM_KEY))
    await team.read()
    assert ratelimit_headers(team) == {
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert len(team.headers.getall("x-ratelimit-limit-requests")) == 1
    admin = await client.post("/v1/chat/completions", json=body, headers=bearer(ADMIN_KEY))  # no limits: passed on
    await admin.read()
    assert ratelimit_headers(admin) == {name.lower(): value for name, value in UPSTREAM_LIMITS.items()}


# Tokens per minute ----------------------------------------------------------------------------


async def test_tokens_are_estimated_before_and_corrected_after(start: Any) -> None:
    finished = Finished()
    client = await start(limits_config({"default": {"tokens_per_minute": 1000}}), [finished])
    first = await client.post("/v1/chat/completions", json=CHAT)
    usage = (await first.json())["usage"]
    estimate = usage["prompt_tokens"]  # the mock's prompt count is the gateway's estimate
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - estimate)
    assert first.headers["x-ratelimit-reset-tokens"] == "1m0s"
    await finished.wait(1)
    second = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert second.status == 200
    # the first request now counts with its actual total (prompt + completion), the second with its estimate
    assert second.headers["x-ratelimit-remaining-tokens"] == str(1000 - usage["total_tokens"] - estimate)
    assert "x-ratelimit-limit-requests" not in second.headers
    await second.read()


async def test_too_many_tokens_is_a_429_of_type_tokens(start: Any, clock: Clock) -> None:
    client = await start(limits_config({"default": {"tokens_per_minute": 30}}))
    statuses = []
    for _ in range(4):
        response = await client.post("/v1/chat/completions", json=CHAT)
        statuses.append(response.status)
        clock.advance(1)
    assert statuses[:2] == [200, 200] and statuses[-1] == 429
    error = (await response.json())["error"]
    assert error["type"] == "tokens"
    assert error["code"] == "rate_limit_exceeded"
    assert "on tokens per min (TPM): Limit 30, Used" in error["message"]
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert response.headers["x-ratelimit-limit-tokens"] == "30"


async def test_a_request_larger_than_the_token_limit_can_never_pass(start: Any) -> None:
    client = await start(limits_config({"default": {"tokens_per_minute": 5}}))
    refused = await client.post("/v1/chat/completions", json=CHAT)
    assert refused.status == 429
    assert "Retry-After" not in refused.headers  # waiting does not help
    error = (await refused.json())["error"]
    assert error["type"] == "tokens"
    assert error["message"].startswith("Request too large for mock-gpt-model for callers without a key on tokens per")
    assert "must be reduced" in error["message"]


@pytest.mark.parametrize(("path", "field"), [("/v1/completions", "prompt"), ("/v1/embeddings", "input")])
async def test_completions_and_embeddings_are_charged_with_their_input(start: Any, path: str, field: str) -> None:
    client = await start(limits_config({"default": {"tokens_per_minute": 100}}))
    small = await client.post(path, json={"model": MOCK_MODEL, field: "word " * 40})  # 200 characters: 50 tokens
    assert small.status == 200
    assert small.headers["x-ratelimit-remaining-tokens"] == "50"
    refused = await client.post(path, json={"model": MOCK_MODEL, field: ["word " * 40, "word " * 40, "word"]})
    assert refused.status == 429
    assert "Request too large" in (await refused.json())["error"]["message"]  # 101 tokens: never fits


# The official openai SDK ------------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[ServerThread]:
    with ServerThread(make_app(limits_config(keys=keys(requests_per_minute=1)))) as s:
        yield s


def test_sync_sdk_raises_rate_limit_error(server: ServerThread) -> None:
    with OpenAI(base_url=server.url + "/v1", api_key=TEAM_KEY, max_retries=0, timeout=TIMEOUT) as client:
        raw = client.chat.completions.with_raw_response.create(model=MOCK_MODEL, messages=MESSAGES)
        assert raw.headers["x-ratelimit-remaining-requests"] == "0"
        assert raw.parse().choices[0].message.content == "hello there"
        with pytest.raises(openai.RateLimitError) as caught:
            client.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
    assert caught.value.status_code == 429
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"
    assert 59 <= int(caught.value.response.headers["retry-after"]) <= 60


async def test_async_sdk_raises_rate_limit_error(start: Any) -> None:
    client = await start(limits_config(keys=keys(requests_per_minute=2)))
    async with AsyncOpenAI(
        base_url=str(client.make_url("/v1")), api_key=TEAM_KEY, max_retries=0, timeout=TIMEOUT
    ) as oai:
        stream = await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES, stream=True)
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == "hello there"
        await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as caught:
            await oai.chat.completions.create(model=MOCK_MODEL, messages=MESSAGES)
    assert caught.value.response.headers["x-ratelimit-limit-requests"] == "2"


# Concurrent requests --------------------------------------------------------------------------


async def test_concurrency_under_many_simultaneous_streams(start: Any) -> None:
    finished = Finished()
    # each stream takes at least 10 x 0.05 s: the first three are still running when the others arrive
    config = limits_config(keys=keys(concurrent_requests=3), chunks=10, chunk_delay=0.05)
    client = await start(config, [finished])
    body = {**CHAT, "stream": True}
    responses = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=body, headers=bearer(TEAM_KEY)) for _ in range(12))
    )
    admitted = [r for r in responses if r.status == 200]
    refused = [r for r in responses if r.status == 429]
    assert (len(admitted), len(refused)) == (3, 9)
    for response in refused:
        error = (await response.json())["error"]
        assert error["message"] == (
            "Too many concurrent requests for mock-gpt-model for key `team`: Limit 3. Please try again when one ends."
        )
        assert response.headers["Retry-After"] == "1"
    # another key is not held up by this one's streams
    assert (await client.post("/v1/chat/completions", json=body, headers=bearer(ADMIN_KEY))).status == 200
    for response in admitted:
        assert (await response.read()).endswith(b"data: [DONE]\n\n")
    await finished.wait(13)
    again = await asyncio.gather(
        *(client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY)) for _ in range(3))
    )
    assert [r.status for r in again] == [200, 200, 200]


async def test_a_client_that_leaves_mid_stream_frees_its_slot(start: Any) -> None:
    finished = Finished()
    config = limits_config(keys=keys(concurrent_requests=1), chunks=200, chunk_delay=0.05)
    client = await start(config, [finished])
    stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=bearer(TEAM_KEY))
    assert stream.status == 200
    assert (await stream.content.readuntil(b"\n\n")).startswith(b"data: {")
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 429
    stream.close()  # the client goes away after one chunk of a ten-second stream
    await finished.wait(2)
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))).status == 200


async def test_a_failed_request_frees_its_slot(start: Any) -> None:
    client = await start(limits_config(keys=keys(concurrent_requests=1), failure={"mode": "error"}))
    for _ in range(3):
        response = await client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_KEY))
        assert response.status == 502


class BlockingObserver:
    """An observer that blocks in ``gateway_request_finished`` until ``gate`` opens (a slow usage
    exporter, say); the client leaving meanwhile cancels it."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()

    @hookimpl
    async def gateway_request_finished(self, ctx: RequestContext) -> None:
        await self.gate.wait()


async def test_a_slot_is_free_before_slower_observers_run(aiohttp_server: Any, clock: Clock) -> None:
    observer = BlockingObserver()
    server = await aiohttp_server(app_with_clock(limits_config(keys=keys(concurrent_requests=1)), clock, [observer]))
    url = server.make_url("/v1/chat/completions")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        for _ in range(3):  # each one's observer still blocks (or was cancelled when its client left)
            async with session.post(url, json=CHAT, headers=bearer(TEAM_KEY)) as response:
                assert response.status == 200, await response.text()
    observer.gate.set()


# Config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "problem"),
    [
        ({"default": {"requests_per_minute": 0}}, "plugins.rate_limit.default.requests_per_minute: Input should be"),
        ({"default": {"rpm": 3}}, "plugins.rate_limit.default.rpm: unknown key"),
        ({"models": {"gpt-*": {"concurrent_requests": -1}}}, "plugins.rate_limit.models.gpt-*.concurrent_requests"),
        ({"store": "redis"}, "plugins.rate_limit.store: unknown key"),
    ],
)
def test_config_problems_name_the_key_path(section: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(limits_config(section))
    assert problem in str(caught.value)


def test_no_limits_no_headers_by_default() -> None:
    settings = load(mock_config()).config.plugin_config("rate_limit")
    assert settings.default.model_dump(exclude_none=True) == {} and settings.models == {}
