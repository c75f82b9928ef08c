"""The state store: one contract, kept by the memory store and by a real redis-server; the Redis
store's faults (timeouts, breaker, recovery, NOSCRIPT) and the ``state:`` section's validation."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
import yaml

from gateway.config import ConfigError
from gateway.loading import load
from gateway.state import Script, StateConfig, StoreUnavailable, open_store
from gateway.testing import mock_config
from tests.conftest import GatewayClient
from tests.upstreams.redis_server import RedisServer, free_port


def _count(data: dict[str, Any], keys: list[str], args: list[Any], now: float) -> int:
    data[keys[0]] = data.get(keys[0], 0) + int(args[0])
    return data[keys[0]]


COUNT = Script(
    "test_count.v1",
    "local t = redis.call('TIME') return redis.call('INCRBY', KEYS[1], ARGV[1])",
    _count,
)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> Any:
    if request.param == "redis":
        config = StateConfig(store="redis", url=request.getfixturevalue("redis_url"), timeout_ms=3000)
    else:
        config = StateConfig()
    store = open_store(config)
    yield store
    await store.close()


async def test_get_set_ttl_delete(store: Any) -> None:
    assert await store.get("a") is None
    assert await store.set("a", "one")
    assert await store.get("a") == b"one"
    assert not await store.set("a", b"two", only_new=True)
    assert await store.get("a") == b"one"
    await store.set("short", b"x", ttl=0.05)
    assert await store.get("short") == b"x"
    await asyncio.sleep(0.08)
    assert await store.get("short") is None
    await store.delete("a")
    assert await store.get("a") is None


async def test_scripts_are_atomic_steps(store: Any) -> None:
    results = await asyncio.gather(*(store.run(COUNT, ["{t}:n"], [2]) for _ in range(20)))
    assert sorted(results) == list(range(2, 42, 2))


async def test_run_many_runs_each_script_in_one_round_trip(store: Any) -> None:
    results = await store.run_many([(COUNT, ["{a}:n"], [1]), (COUNT, ["{b}:n"], [5]), (COUNT, ["{a}:n"], [1])])
    assert results == [1, 5, 2]


async def test_lock_is_exclusive_and_released(store: Any) -> None:
    async with store.lock("job", ttl=5) as held:
        assert held
        async with store.lock("job", ttl=5) as again:
            assert not again
    async with store.lock("job", ttl=5) as held:
        assert held


async def test_lock_expires_when_its_holder_never_releases(store: Any) -> None:
    assert await store.set("lock:stale", b"someone", ttl=0.05, only_new=True)
    await asyncio.sleep(0.08)
    async with store.lock("lock:stale", ttl=5) as held:
        assert held


async def test_keys_carry_the_prefix(redis_url: str) -> None:
    store = open_store(StateConfig(store="redis", url=redis_url, key_prefix="pre:"))
    try:
        await store.set("k", b"v")
        assert await store.client.get("pre:k") == b"v"
    finally:
        await store.close()


BIG = Script("test_big.v1", "return string.rep('x', tonumber(ARGV[1]))", _count)


async def test_replies_split_over_many_reads_and_many_callers_in_order(redis_url: str) -> None:
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=2000))
    try:
        sizes = [1, 300_000, 7, 65_537, 0]  # a large bulk string arrives in pieces
        results = await asyncio.gather(*(store.run(BIG, ["{t}:big"], [n]) for n in sizes * 20))
        assert [len(r) for r in results] == sizes * 20
    finally:
        await store.close()


ECHO = Script("test_echo.v1", "return {KEYS[1], ARGV[1]}", _count)


async def test_concurrent_scripts_go_out_together_each_with_its_own_reply(redis_url: str) -> None:
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=2000))
    try:
        await store.run(ECHO, ["{t}:warm"], [0])  # connected, the script loaded
        protocol = store.lean._protocol
        writes = protocol.writes
        calls = [store.run(ECHO, [f"{{t{n}}}:e"], [n]) for n in range(200)]
        calls += [store.run_many([(ECHO, ["{a}:x"], ["é"]), (ECHO, ["{b}:x"], [b"raw"])])]
        results = await asyncio.gather(*calls)
        assert results[:200] == [[f"gw:{{t{n}}}:e".encode(), str(n).encode()] for n in range(200)]
        assert results[200] == [[b"gw:{a}:x", "é".encode()], [b"gw:{b}:x", b"raw"]]
        assert protocol.writes - writes == 1  # one event-loop iteration: one write for all 201 calls
        assert store.lean._protocol is protocol and not protocol.waiters
    finally:
        await store.close()


async def test_remembered_commands_keep_equal_numbers_of_other_types_apart(redis_url: str) -> None:
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=2000))
    try:
        for _ in range(2):  # packed, then from the store's memory
            for arg, sent in ((1, b"1"), (1.0, b"1.0"), (True, b"True"), ("1", b"1"), (b"1", b"1")):
                assert await store.run(ECHO, ["{t}:n"], [arg]) == [b"gw:{t}:n", sent]
    finally:
        await store.close()


async def test_a_cancelled_caller_in_a_batch_leaves_the_others_their_replies(redis_url: str) -> None:
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=2000))
    try:
        tasks = [asyncio.ensure_future(store.run(ECHO, ["{t}:c"], [n])) for n in range(20)]
        await asyncio.sleep(0)  # sent
        tasks[7].cancel()
        done = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(done[7], asyncio.CancelledError)
        assert [r[1] for i, r in enumerate(done) if i != 7] == [str(n).encode() for n in range(20) if n != 7]
        assert await store.run(ECHO, ["{t}:c"], ["next"]) == [b"gw:{t}:c", b"next"]  # its reply was skipped
    finally:
        await store.close()


BUSY = """local t = redis.call('TIME')
while (redis.call('TIME')[1] - t[1]) * 1e6 + redis.call('TIME')[2] - t[2] < 300000 do end
return 1"""


async def test_a_timeout_in_a_batch_fails_the_calls_on_that_connection_then_it_recovers() -> None:
    server = RedisServer().start()  # its own: the busy script blocks it
    store = open_store(StateConfig(store="redis", url=server.url, timeout_ms=50, breaker_s=0.1))
    busy = Script("test_busy.v1", BUSY, _count)
    try:
        await store.run(ECHO, ["{t}:w"], [0])
        with pytest.raises(StoreUnavailable):  # loaded and run once: its 300 ms are past the timeout
            await store.run(busy, ["{t}:b"], [])
        await asyncio.sleep(0.4)
        started = time.monotonic()
        calls = [store.run(busy, ["{t}:b"], [])] + [store.run(ECHO, ["{t}:e"], [n]) for n in range(10)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert time.monotonic() - started < 0.25  # each call bounded by timeout_ms: no hang behind the busy one
        assert all(isinstance(r, StoreUnavailable) for r in results)  # queued behind it on the dropped connection
        assert store.errors >= 1 and store.describe()["connected"] is False
        await asyncio.sleep(0.4)  # Redis free again, the breaker's period over
        assert await store.run(ECHO, ["{t}:e"], ["back"]) == [b"gw:{t}:e", b"back"]  # a new connection
        assert store.describe()["connected"] is True
    finally:
        await store.close()
        server.stop()


async def test_scripts_authenticate_and_select_the_urls_database() -> None:
    server = RedisServer(password="s3cret-pw").start()
    try:
        store = open_store(StateConfig(store="redis", url=server.url.replace("/0", "/2"), timeout_ms=1000))
        try:
            assert await store.run(COUNT, ["{t}:n"], [4]) == 4
        finally:
            await store.close()
        other = redis.asyncio.Redis.from_url(server.url.replace("/0", "/2"))
        assert await other.get("gw:{t}:n") == b"4"  # in database 2
        await other.aclose()
        wrong = open_store(StateConfig(store="redis", url=server.url.replace("s3cret-pw", "nope"), timeout_ms=1000))
        try:
            with pytest.raises(StoreUnavailable):
                await wrong.run(COUNT, ["{t}:n"], [1])
            assert wrong.errors == 1
        finally:
            await wrong.close()
    finally:
        server.stop()


async def test_script_reloaded_after_a_flush() -> None:
    server = RedisServer().start()
    store = open_store(StateConfig(store="redis", url=server.url, timeout_ms=3000))
    try:
        assert await store.run(COUNT, ["{t}:n"], [1]) == 1
        await store.client.script_flush()
        assert await store.run(COUNT, ["{t}:n"], [1]) == 2
        await store.client.script_flush()  # a pipeline: only the scripts that did not run run again
        assert await store.run_many([(COUNT, ["{t}:n"], [1]), (COUNT, ["{u}:n"], [1])]) == [3, 1]
    finally:
        await store.close()
        server.stop()


async def test_redis_down_costs_one_timeout_per_breaker_period_then_recovers() -> None:
    server = RedisServer()
    store = open_store(StateConfig(store="redis", url=server.url, timeout_ms=100, breaker_s=0.2))
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        assert time.monotonic() - started < 1
        started = time.monotonic()
        for _ in range(100):  # the breaker is open: no call reaches the network
            with pytest.raises(StoreUnavailable):
                await store.get("k")
        assert time.monotonic() - started < 0.05
        assert store.describe()["connected"] is False
        assert store.errors == 1
        server.start()
        await asyncio.sleep(0.25)
        assert await store.set("k", b"v")
        assert store.describe()["connected"] is True
        server.stop()  # an established pool whose server dies
        with pytest.raises(StoreUnavailable):
            await store.get("k")
        server.start()
        await asyncio.sleep(0.25)
        assert await store.get("k") is None  # a fresh server, no persistence
    finally:
        await store.close()
        server.stop()


SLOW = "local t = redis.call('TIME') while redis.call('TIME')[1] - t[1] < 2 do end return 1"


async def test_a_slow_redis_times_out() -> None:
    server = RedisServer().start()  # its own: the busy script blocks it
    store = open_store(StateConfig(store="redis", url=server.url, timeout_ms=50))
    slow = Script("test_slow.v1", SLOW, _count)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await store.run(slow, ["{t}:slow"], [])
        assert time.monotonic() - started < 0.5
    finally:
        await store.close()
        server.stop()


@pytest.mark.parametrize(
    ("state", "path", "problem"),
    [
        ({"store": "redis"}, "state", "url is required"),
        ({"store": "redis", "url": "http://localhost:6379"}, "state.url", "url must start with one of"),
        ({"store": "redis", "url": "redis://localhost:port"}, "state.url", "invalid port"),
        ({"store": "redis", "url": "redis://:6379"}, "state.url", "names no host"),
        ({"store": "redis", "url": "redis://h", "timeout_ms": 0}, "state.timeout_ms", "greater than or equal to 1"),
        ({"store": "memcached"}, "state.store", "'memory' or 'redis'"),
        ({"on_error": "ignore"}, "state.on_error", "'allow' or 'deny'"),
        ({"key_prefix": "gw{x}:"}, "state.key_prefix", "must not contain { or }"),
    ],
)
def test_bad_state_config_fails_at_start_up(state: dict[str, Any], path: str, problem: str, tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({**mock_config(), "state": state}))
    with pytest.raises(ConfigError) as exc_info:
        load(config_file)
    message = str(exc_info.value)
    assert str(config_file) in message
    assert f"{path}: " in message and problem in message, message


async def test_starts_with_redis_down_health_up_info_shows_the_store(gateway: GatewayClient) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    client = await gateway({**mock_config(), "state": {"store": "redis", "url": "redis://u:hunter2@" + url[8:]}})
    assert (await client.get("/health")).status == 200
    info = await (await client.get("/info")).json()
    assert info["state"]["store"] == "redis"
    assert "hunter2" not in str(info)


async def test_info_shows_redis_connected(gateway: GatewayClient, redis_url: str) -> None:
    client = await gateway({**mock_config(), "state": {"store": "redis", "url": redis_url}})
    info = await (await client.get("/info")).json()
    assert info["state"]["connected"] is True
    assert info["state"]["errors"] == 0


def test_the_memory_store_needs_no_redis_package() -> None:
    code = (
        "import sys; from gateway.testing import make_app; app = make_app();"
        "from gateway.keys import state_store_key; assert app[state_store_key].kind == 'memory';"
        "assert 'redis' not in sys.modules, 'redis imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


async def test_metrics_show_the_store(gateway: GatewayClient, redis_url: str) -> None:
    chat = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}]}
    limited = {**mock_config(), "state": {"store": "redis", "url": redis_url}}
    limited["plugins"] = {"rate_limit": {"default": {"requests_per_minute": 5}}}
    client = await gateway(limited)
    assert (await client.post("/v1/chat/completions", json=chat)).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'gateway_state_store_connected{store="redis"} 1.0' in text
    assert 'gateway_state_store_errors_total{store="redis"} 0.0' in text
    assert 'gateway_state_store_latency_seconds_count{store="redis"} 1.0' in text
