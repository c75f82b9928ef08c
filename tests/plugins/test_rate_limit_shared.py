"""rate_limit over a real redis-server (``rate_limit.shared``): per-key hash tags and versioned keys,
token reservations settled over streams and released when the client leaves, concurrency slots
released on disconnect, renewed while their request lives and expired after a killed process, the
local cache of over-limit keys (counted with ``INFO commandstats``), no invented headers while Redis
is down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
import requests
import yaml

from gateway.testing import MOCK_MODEL, Finished, make_app, mock_config
from gateway_plugins.rate_limit.shared import ACQUIRE, RELEASE, SETTLE
from tests.gateway.test_cli import Server, free_port
from tests.upstreams.redis_server import RedisServer

KEY = "gw-team-4e8b1a6c0d2f9e3b"
OTHER = "gw-other-9c1d7e3a5b2f4a60"
MESSAGES: Any = [{"role": "user", "content": "hello there"}]
CHAT = {"model": MOCK_MODEL, "messages": MESSAGES}


def config(redis_url: str, limits: dict[str, Any], rate_limit: Any = None, **mock: Any) -> dict[str, Any]:
    keys = [{"name": "team", "key": KEY, "limits": limits}, {"name": "other", "key": OTHER, "limits": limits}]
    return {
        **mock_config(**mock),
        "plugins": {"auth_api_keys": {"keys": keys}, "rate_limit": rate_limit or {}},
        "state": {"store": "redis", "url": redis_url, "timeout_ms": 2000},
    }


def bearer(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def redis(redis_url: str) -> Any:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def gateway(aiohttp_server: Any, redis_url: str) -> Any:
    """``url, finished = await gateway(limits, rate_limit=None, **mock)``: a gateway on a real port."""

    async def start(limits: dict[str, Any], rate_limit: Any = None, **mock: Any) -> tuple[Any, Finished]:
        finished = Finished()
        server = await aiohttp_server(make_app(config(redis_url, limits, rate_limit, **mock), plugins=[finished]))
        return server.make_url("/v1/chat/completions"), finished

    return start


async def evalsha_calls(redis: Any) -> int:
    return (await redis.info("commandstats")).get("cmdstat_evalsha", {}).get("calls", 0)


def remaining_tokens(response: Any) -> int:
    return int(response.headers["x-ratelimit-remaining-tokens"])


# Keys ----------------------------------------------------------------------------------------------


async def test_each_key_has_its_own_hash_tag_and_the_layout_is_versioned(gateway: Any, redis: Any) -> None:
    url, finished = await gateway({"requests_per_minute": 5}, {"models": {MOCK_MODEL: {"requests_per_minute": 9}}})
    async with aiohttp.ClientSession() as session:
        for key in (KEY, OTHER):
            async with session.post(url, json=CHAT, headers=bearer(key)) as response:
                assert response.status == 200
                assert response.headers["x-ratelimit-remaining-requests"] == "4"  # the key's, the lesser
    await finished.wait(2)
    names = sorted(k.decode() for k in await redis.keys("*"))
    assert names == ["gw:{k:other}:rl2:requests", "gw:{k:team}:rl2:requests", f"gw:{{m:{MOCK_MODEL}}}:rl2:requests"]


async def test_a_scope_that_refuses_gives_back_what_the_others_took(gateway: Any, redis: Any) -> None:
    url, _ = await gateway({"requests_per_minute": 5}, {"models": {MOCK_MODEL: {"requests_per_minute": 1}}})
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=CHAT, headers=bearer()) as first:
            assert first.status == 200
        for _ in range(3):  # the model's budget refuses; the key's charge is given back each time
            async with session.post(url, json=CHAT, headers=bearer()) as refused:
                assert refused.status == 429
    tat = float(await redis.get("gw:{k:team}:rl2:requests"))
    seconds, microseconds = await redis.time()
    now = seconds * 1000 + microseconds // 1000
    assert tat - now <= 60_000 / 5 + 50  # one request's worth: the refused ones were given back


# Tokens --------------------------------------------------------------------------------------------


async def test_a_streamed_answers_usage_is_settled_and_decides_the_next_request(gateway: Any) -> None:
    url, finished = await gateway({"tokens_per_minute": 1500}, chunks=4, reply="a b c d")
    body = {**CHAT, "stream": True, "max_tokens": 1000}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body, headers=bearer()) as first:
            assert first.status == 200
            reserved = 1500 - remaining_tokens(first)  # the prompt's estimate + max_tokens
            assert reserved > 1000
            assert (await first.read()).endswith(b"data: [DONE]\n\n")
        await finished.wait(1)
        # settled to the real usage (prompt + 4): a second reservation of as much fits
        async with session.post(url, json=body, headers=bearer()) as second:
            assert second.status == 200
            prompt = reserved - 1000
            assert 1500 - (prompt + 4) - reserved <= remaining_tokens(second) <= 1500 - (prompt + 4) - reserved + 2
            await second.read()
        await finished.wait(2)
        async with session.post(url, json={**body, "max_tokens": 1490}, headers=bearer()) as refused:
            assert refused.status == 429
            error = (await refused.json())["error"]
            assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
            assert int(refused.headers["Retry-After"]) >= 1
        # the default reservation applies to a request without a bound: none configured, the prompt only
        async with session.post(url, json={**CHAT, "stream": True}, headers=bearer()) as unbounded:
            assert unbounded.status == 200
            await unbounded.read()


async def test_a_reservation_is_released_when_the_client_leaves_mid_stream(gateway: Any) -> None:
    url, finished = await gateway({"tokens_per_minute": 1500}, chunks=200, chunk_delay=0.05)
    body = {**CHAT, "stream": True, "max_tokens": 1000}
    async with aiohttp.ClientSession() as session:
        stream = await session.post(url, json=body, headers=bearer())
        assert stream.status == 200
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"data: {")
        async with session.post(url, json=body, headers=bearer()) as held:
            assert held.status == 429  # the first one's 1000 are still reserved
        stream.close()  # the client goes away after one chunk of a ten-second stream
        await finished.wait(2)
        async with session.post(url, json={**body, "stream": False}, headers=bearer()) as after:
            assert after.status == 200  # settled to what was sent, not the reservation


async def test_default_max_tokens_is_reserved_for_requests_without_a_bound(gateway: Any) -> None:
    url, _ = await gateway({"tokens_per_minute": 1000}, {"default_max_tokens": 600})
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=CHAT, headers=bearer()) as first:
            assert first.status == 200
            assert remaining_tokens(first) < 400
        async with session.post(url, json={**CHAT, "max_completion_tokens": 10}, headers=bearer()) as bounded:
            assert bounded.status == 200


# Concurrency slots ---------------------------------------------------------------------------------


async def test_a_slot_is_released_when_the_client_leaves_mid_stream(gateway: Any, redis: Any) -> None:
    url, finished = await gateway({"concurrent_requests": 1}, chunks=200, chunk_delay=0.05)
    async with aiohttp.ClientSession() as session:
        stream = await session.post(url, json={**CHAT, "stream": True}, headers=bearer())
        assert stream.status == 200
        assert (await stream.content.readuntil(b"\n\n")).startswith(b"data: {")
        assert await redis.zcard("gw:{k:team}:rl2:concurrent") == 1
        async with session.post(url, json=CHAT, headers=bearer()) as refused:
            assert refused.status == 429
        stream.close()
        await finished.wait(2)
        assert await redis.zcard("gw:{k:team}:rl2:concurrent") == 0
        async with session.post(url, json=CHAT, headers=bearer()) as again:
            assert again.status == 200


BUSY = "local t = redis.call('TIME') while redis.call('TIME')[1] - t[1] < 2 do end return 1"  # 1 to 2 s


async def test_a_client_that_leaves_while_redis_admits_it_leaves_no_slot_behind(aiohttp_server: Any) -> None:
    redis = RedisServer().start()  # its own: a busy script blocks it
    blocker = aioredis.Redis.from_url(redis.url)
    try:
        settings = config(redis.url, {"concurrent_requests": 1, "tokens_per_minute": 100_000})
        settings["state"]["timeout_ms"] = 5000
        server = await aiohttp_server(make_app(settings))
        url = server.make_url("/v1/chat/completions")
        for script in (ACQUIRE, SETTLE, RELEASE):  # known: the admission runs first once Redis is free
            await blocker.script_load(script.lua)
        busy = asyncio.ensure_future(blocker.eval(BUSY, 0))
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as session:
            with pytest.raises(asyncio.TimeoutError):  # the client leaves while its admission waits on Redis
                await session.post(url, json={**CHAT, "max_tokens": 50_000}, headers=bearer())
        await busy  # then Redis runs the admission: it grants, and the slot and tokens go back (in that order)
        for _ in range(150):
            if not await blocker.zcard("gw:{k:team}:rl2:concurrent"):
                break
            await asyncio.sleep(0.02)
        assert await blocker.zcard("gw:{k:team}:rl2:concurrent") == 0
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json={**CHAT, "max_tokens": 50_000}, headers=bearer()) as again:
                assert again.status == 200
                assert int(again.headers["x-ratelimit-remaining-tokens"]) > 49_000  # the first 50,000 went back
    finally:
        await blocker.aclose()
        redis.stop()


def test_a_slot_is_renewed_while_its_request_lives_and_expires_after_its_process_is_killed(
    redis_url: str, tmp_path: Path
) -> None:
    lease = 1.5
    path = tmp_path / "gateway.yaml"
    settings = config(redis_url, {"concurrent_requests": 1}, {"concurrency_lease_seconds": lease})
    settings["backends"][0].update(chunks=2000, chunk_delay=0.01)  # a 20-second stream
    path.write_text(yaml.safe_dump(settings))
    servers = []
    try:
        urls = []
        for _ in range(2):
            port = free_port()
            servers.append(Server(["--config", str(path), "--port", str(port)], {}))
            urls.append(servers[-1].wait_up(port, timeout=30) + "/v1/chat/completions")
        holder = requests.post(urls[0], json={**CHAT, "stream": True}, headers=bearer(), stream=True, timeout=10)
        assert holder.status_code == 200
        lines = holder.iter_lines()  # kept: a dropped iterator closes the connection
        assert next(lines).startswith(b"data: {")
        time.sleep(lease * 2)  # past the lease: renewed by the live request
        assert requests.post(urls[1], json=CHAT, headers=bearer(), timeout=5).status_code == 429
        servers[0].kill()  # SIGKILL: no release
        killed = time.monotonic()
        assert requests.post(urls[1], json=CHAT, headers=bearer(), timeout=5).status_code == 429
        status = 429
        while status == 429 and time.monotonic() < killed + lease + 3:
            time.sleep(0.1)
            status = requests.post(urls[1], json=CHAT, headers=bearer(), timeout=5).status_code
        assert status == 200
        assert time.monotonic() - killed <= lease + 1.5  # no later than the lease (after one renewal)
        holder.close()
    finally:
        for server in servers:
            server.kill()


# The local cache of refusals -----------------------------------------------------------------------


async def test_a_key_over_its_limit_is_refused_without_a_round_trip(gateway: Any, redis: Any) -> None:
    url, _ = await gateway({"requests_per_minute": 3})
    async with aiohttp.ClientSession() as session:
        before = await evalsha_calls(redis)
        for _ in range(3):  # under the limit: every request asks Redis, once
            async with session.post(url, json=CHAT, headers=bearer()) as response:
                assert response.status == 200
        assert await evalsha_calls(redis) == before + 3
        async with session.post(url, json=CHAT, headers=bearer()) as refused:  # Redis says no, and when
            assert refused.status == 429
        assert await evalsha_calls(redis) == before + 4
        for _ in range(20):
            async with session.post(url, json=CHAT, headers=bearer()) as refused:
                assert refused.status == 429
                assert refused.headers["x-ratelimit-remaining-requests"] == "0"
                assert 1 <= int(refused.headers["Retry-After"]) <= 20
                assert (await refused.json())["error"]["code"] == "rate_limit_exceeded"
        assert await evalsha_calls(redis) == before + 4  # no round trip for those 20
        async with session.post(url, json=CHAT, headers=bearer(OTHER)) as other:
            assert other.status == 200  # another key is not refused by this one's cache
        assert await evalsha_calls(redis) == before + 5


# Redis down ----------------------------------------------------------------------------------------


async def test_no_ratelimit_headers_are_invented_while_redis_is_down(aiohttp_server: Any) -> None:
    redis = RedisServer().start()
    try:
        settings = config(redis.url, {"requests_per_minute": 5, "tokens_per_minute": 1000})
        settings["state"].update(timeout_ms=200, on_error="allow")
        server = await aiohttp_server(make_app(settings))
        url = server.make_url("/v1/chat/completions")
        async with aiohttp.ClientSession() as session:
            async with session.post(url, json=CHAT, headers=bearer()) as up:
                assert up.headers["x-ratelimit-remaining-requests"] == "4"
            redis.stop()
            for _ in range(3):
                async with session.post(url, json=CHAT, headers=bearer()) as down:
                    assert down.status == 200
                    assert not [h for h in down.headers if h.lower().startswith("x-ratelimit-")]
    finally:
        redis.stop()
