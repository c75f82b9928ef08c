"""The response cache in Redis (``state.store: redis``): TWO gateway instances (two apps, each with
its own state and Redis pool) and a real redis-server, in front of one fake OpenAI upstream on
127.0.0.1 that counts its calls."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import openai
import orjson

from gateway.state import StateConfig, open_store
from gateway_plugins.cache.shared import CLAIM, EXTEND, IDEM_CLAIM, IDEM_SETTLE, RELEASE, STORE, SharedCache
from tests.upstreams.openai import OpenAIUpstream, Reply
from tests.upstreams.redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "Hi"}]
URL = "/v1/chat/completions"


def calls(upstream: OpenAIUpstream) -> int:
    return sum(r.path.endswith("/chat/completions") for r in upstream.requests)


def config(upstream: Any, redis_url: str, state: Any = None, **cache: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up"}],
        "models": [{"name": "*", "backend": "up"}],
        "plugins": {"cache": {"enabled": True, **cache}},
        "state": {"store": "redis", "url": redis_url, "timeout_ms": 3000, **(state or {})},
    }


async def two(gateway: Any, cfg: dict[str, Any]) -> tuple[Any, Any]:
    return await gateway(cfg), await gateway(cfg)


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}


async def post(client: Any, body: dict[str, Any], **headers: str) -> tuple[Any, Any]:
    resp = await client.post(URL, json=body, headers=headers)
    return resp, (await resp.read() if body.get("stream") else await resp.json())


def streamed_text(raw: bytes) -> str:
    events = [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ") and line != b"data: [DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in map(orjson.loads, events) if c["choices"])


async def test_a_hit_stored_by_one_instance_is_served_by_the_other(gateway: Any, upstream: Any, redis_url: str) -> None:
    a, b = await two(gateway, config(upstream, redis_url))
    first, one = await post(a, chat())
    second, two_ = await post(b, chat())
    assert (first.headers["X-Gateway-Cache"], second.headers["X-Gateway-Cache"]) == ("miss", "hit")
    assert one == two_ and calls(upstream) == 1
    upstream.reply(Reply(content="a streamed answer"))
    body = chat(stream=True, messages=[{"role": "user", "content": "stream"}])
    s1, raw1 = await post(b, body)
    s2, raw2 = await post(a, body)
    assert (s1.headers["X-Gateway-Cache"], s2.headers["X-Gateway-Cache"]) == ("miss", "hit")
    assert streamed_text(raw1) == streamed_text(raw2) == "a streamed answer"
    assert raw2.endswith(b"data: [DONE]\n\n") and calls(upstream) == 2
    resp, joined = await post(b, {**body, "stream": False})  # the stream's entry answers a non-stream request
    assert (
        resp.headers["X-Gateway-Cache"] == "hit" and joined["choices"][0]["message"]["content"] == "a streamed answer"
    )
    assert calls(upstream) == 2


async def test_the_sdk_reads_hits_from_the_other_instance(gateway: Any, upstream: Any, redis_url: str) -> None:
    a, b = await two(gateway, config(upstream, redis_url))
    async with (
        openai.AsyncOpenAI(base_url=str(a.make_url("/v1")), api_key="unused") as sdk_a,
        openai.AsyncOpenAI(base_url=str(b.make_url("/v1")), api_key="unused") as sdk_b,
    ):
        made = await sdk_a.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        stream = await sdk_b.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == made.choices[0].message.content
    assert chunks[-1].usage is not None and made.usage is not None
    assert chunks[-1].usage.total_tokens == made.usage.total_tokens and calls(upstream) == 1


async def test_concurrent_identical_requests_on_both_instances_reach_the_upstream_once(
    gateway: Any, upstream: Any, redis_url: str
) -> None:
    a, b = await two(gateway, config(upstream, redis_url))
    upstream.reply(Reply(content="one two three four", chunk_delay=0.05))
    leader = asyncio.create_task(post(a, chat(stream=True)))
    await asyncio.sleep(0.08)  # the leader's stream is under way: the late ones must get it whole
    late = [post(b, chat(stream=True)), post(b, chat()), post(a, chat(stream=True)), post(b, chat(stream=True))]
    followers = await asyncio.gather(*late)
    _, raw = await leader
    assert calls(upstream) == 1
    assert [r.headers["X-Gateway-Cache"] for r, _ in followers] == ["hit"] * 4
    assert followers[1][1]["choices"][0]["message"]["content"] == "one two three four"
    for _, got in (followers[0], followers[2], followers[3]):
        assert streamed_text(got) == streamed_text(raw) == "one two three four"
        assert got.endswith(b"data: [DONE]\n\n")


async def test_the_lock_is_renewed_while_a_long_answer_runs(gateway: Any, upstream: Any, redis_url: str) -> None:
    a, b = await two(gateway, config(upstream, redis_url, lock_ttl=0.3))
    upstream.reply(Reply(content="slow", delay=1.0))  # three lock lifetimes
    leader = asyncio.create_task(post(a, chat()))
    await asyncio.sleep(0.1)
    resp, body = await post(b, chat())
    await leader
    assert resp.headers["X-Gateway-Cache"] == "hit" and body["choices"][0]["message"]["content"] == "slow"
    assert calls(upstream) == 1


async def test_a_dead_holders_lock_expires_and_a_failed_holder_lets_the_followers_go(
    gateway: Any, upstream: Any, redis_url: str
) -> None:
    cfg = config(upstream, redis_url, lock_ttl=0.3)
    a, b = await two(gateway, cfg)
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=1000))
    try:  # an instance that took the lock and died: nobody renews it
        key = SharedCache.keys(_cache_key(a, chat()))[1]
        assert await store.set(key, b"dead-holder", 0.3, only_new=True)
    finally:
        await store.close()
    started = time.monotonic()
    resp, _ = await post(b, chat())
    assert resp.status == 200 and resp.headers["X-Gateway-Cache"] == "miss"
    assert 0.2 <= time.monotonic() - started < 2 and calls(upstream) == 1
    other = chat(messages=[{"role": "user", "content": "fails"}])
    upstream.reply(Reply(status=400, delay=0.2), Reply(content="second try"))
    leader = asyncio.create_task(post(a, other))
    await asyncio.sleep(0.05)
    resp, body = await post(b, other)  # waits for the leader, which fails: goes upstream itself
    assert (await leader)[0].status == 400 and calls(upstream) == 3
    assert resp.status == 200 and body["choices"][0]["message"]["content"] == "second try"


def _cache_key(client: Any, body: dict[str, Any]) -> str:
    from gateway.formats.request_key import request_key

    return request_key("chat.completions", body, body["model"], "anonymous")


async def test_idempotency_key_across_instances(gateway: Any, upstream: Any, redis_url: str) -> None:
    a, b = await two(gateway, config(upstream, redis_url, enabled=False))
    headers = {"Idempotency-Key": "retry-1", "Cache-Control": "no-store"}
    upstream.reply(Reply(content="first answer", delay=0.2), Reply(content="second answer"))
    first = asyncio.create_task(post(a, chat(), **headers))
    await asyncio.sleep(0.05)
    waiting = await post(b, chat(), **headers)  # while the first runs on the other instance: waits
    _, first_body = await first
    assert calls(upstream) == 1 and waiting[1] == first_body
    assert waiting[0].headers["Idempotent-Replayed"] == "true"
    _, raw = await post(b, chat(stream=True), **headers)
    assert streamed_text(raw) == "first answer" and raw.endswith(b"data: [DONE]\n\n") and calls(upstream) == 1
    resp, body = await post(a, chat(messages=[{"role": "user", "content": "other"}]), **headers)
    assert resp.status == 409 and body["error"]["code"] == "idempotency_key_reused"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    await post(b, chat(), **{"Idempotency-Key": "retry-2"})
    assert calls(upstream) == 2
    keyed = {"keys": [{"name": "t1", "key": "sk-tenant-1"}, {"name": "t2", "key": "sk-tenant-2"}]}
    cfg = config(upstream, redis_url, enabled=False)
    cfg["plugins"]["auth_api_keys"] = keyed
    c, d = await two(gateway, cfg)  # scoped by API key: another tenant's same key is its own
    await post(c, chat(), Authorization="Bearer sk-tenant-1", **headers)
    resp, _ = await post(d, chat(), Authorization="Bearer sk-tenant-2", **headers)
    assert resp.status == 200 and "Idempotent-Replayed" not in resp.headers and calls(upstream) == 4


async def test_the_entry_lives_its_ttl_in_redis_and_large_answers_are_not_stored(
    gateway: Any, upstream: Any, redis_url: str
) -> None:
    a, b = await two(gateway, config(upstream, redis_url, ttl=0.3, max_entry_bytes=2000))
    await post(a, chat())
    store = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=1000))
    try:
        entry = SharedCache.keys(_cache_key(a, chat()))[0]
        assert await store.get(entry) is not None
        ttl_ms = await store.client.pttl(store.key(entry))
        assert 0 < ttl_ms <= 300 and store.key(entry).startswith("gw:cache.v1:{")
    finally:
        await store.close()
    assert (await post(b, chat()))[0].headers["X-Gateway-Cache"] == "hit"
    await asyncio.sleep(0.35)
    assert (await post(b, chat()))[0].headers["X-Gateway-Cache"] == "miss"
    upstream.reply(Reply(content="x" * 3000), Reply(content="x" * 3000))
    big = chat(messages=[{"role": "user", "content": "big"}])
    await post(a, big)
    assert (await post(b, big))[0].headers["X-Gateway-Cache"] == "miss" and calls(upstream) == 4


async def test_redis_stopped_requests_are_served_and_the_cache_recovers_after_a_restart(
    gateway: Any, upstream: Any
) -> None:
    server = RedisServer().start()
    try:
        cfg = config(upstream, server.url, state={"timeout_ms": 100, "breaker_s": 0.2})
        a, b = await two(gateway, cfg)
        await post(a, chat())
        assert (await post(b, chat()))[0].headers["X-Gateway-Cache"] == "hit"
        server.stop()
        for client in (a, b, a):
            resp, body = await post(client, chat())
            assert resp.status == 200 and resp.headers["X-Gateway-Cache"] == "bypass"
            assert body["choices"][0]["message"]["content"]
        resp, _ = await post(a, chat(stream=True))
        assert resp.status == 200 and resp.headers["X-Gateway-Cache"] == "bypass"
        resp, _ = await post(b, chat(), **{"Idempotency-Key": "k-down"})  # on_error: allow
        assert resp.status == 200
        info = await (await a.get("/info")).json()
        assert info["state"]["connected"] is False
        assert calls(upstream) == 6
        server.start()
        await asyncio.sleep(0.25)  # the breaker lets a probe through
        seen = [(await post(c, chat()))[0].headers["X-Gateway-Cache"] for c in (a, b, b, a)]
        assert seen[-2:] == ["hit", "hit"] and "miss" in seen
    finally:
        server.stop()


async def test_on_error_deny_refuses_idempotent_requests_while_redis_is_down(gateway: Any, upstream: Any) -> None:
    server = RedisServer()  # never started
    cfg = config(upstream, server.url, state={"timeout_ms": 100, "on_error": "deny"}, enabled=False)
    client = await gateway(cfg)
    resp, body = await post(client, chat(), **{"Idempotency-Key": "k"})
    assert resp.status == 503 and body["error"]["code"] == "state_store_unavailable" and calls(upstream) == 0
    cfg["plugins"]["cache"]["enabled"] = True
    client = await gateway(cfg)
    resp, _ = await post(client, chat())  # the cache is never a reason to fail: a bypass
    assert resp.status == 200 and resp.headers["X-Gateway-Cache"] == "bypass"


async def test_the_scripts_python_twins_answer_as_redis_does(redis_url: str) -> None:
    """The memory store runs each script's Python twin: same answers, step by step."""
    redis = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=1000))
    memory = open_store(StateConfig())
    k = ["{t}:answer", "{t}:lock"]
    steps: list[tuple[Any, list[str], list[Any]]] = [
        (CLAIM, k, [b"tok", 1000, 1]),
        (CLAIM, k, [b"other", 1000, 1]),
        (EXTEND, k[1:], [b"other", 1000]),
        (EXTEND, k[1:], [b"tok", 1000]),
        (STORE, k, [b"tok", b'{"a":1}', 1000]),
        (CLAIM, k, [b"other", 1000, 1]),
        (CLAIM, k, [b"other", 1000, 0]),
        (RELEASE, k[1:], [b"tok"]),
        (RELEASE, k[1:], [b"other"]),
        (IDEM_CLAIM, ["{i}"], [b"Preq-token", 1000]),
        (IDEM_CLAIM, ["{i}"], [b"Preq-other", 1000]),
        (IDEM_SETTLE, ["{i}"], [b"Preq-other", b"Dreq{}", 1000]),
        (IDEM_SETTLE, ["{i}"], [b"Preq-token", b"Dreq{}", 1000]),
        (IDEM_CLAIM, ["{i}"], [b"Preq-third", 1000]),
    ]
    try:
        for script, keys, args in steps:
            assert await redis.run(script, keys, args) == await memory.run(script, keys, args), script.name
    finally:
        await redis.close()
        await memory.close()


async def test_a_client_that_leaves_while_the_answer_is_written_to_redis_leaves_nothing_behind(
    gateway: Any, upstream: Any, redis_url: str
) -> None:
    """curl's way: read the whole answer and close the connection at once, while Redis is slow to take
    the answer (the handler is cancelled then): the write still completes, no lock or flight stays."""
    a, b = await two(gateway, config(upstream, redis_url, state={"timeout_ms": 3000}))
    upstream.reply(Reply(content="left early", delay=0.3))
    payload = orjson.dumps(chat())
    reader, writer = await asyncio.open_connection(a.host, a.port)
    head = f"POST {URL} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}"
    writer.write(head.encode() + b"\r\n\r\n" + payload)
    await asyncio.sleep(0.15)  # the lookup is done, the upstream is thinking
    admin = open_store(StateConfig(store="redis", url=redis_url, timeout_ms=3000))
    try:
        await admin.client.execute_command("CLIENT", "PAUSE", "600", "WRITE")  # the STORE waits
        head_in = await reader.readuntil(b"\r\n\r\n")
        length = next(int(h[15:]) for h in head_in.lower().split(b"\r\n") if h.startswith(b"content-length:"))
        await reader.readexactly(length)
        writer.close()
        for client in (a, b, a):
            resp, body = await asyncio.wait_for(post(client, chat()), 5)
            assert resp.headers["X-Gateway-Cache"] == "hit" and body["choices"][0]["message"]["content"] == "left early"
        assert calls(upstream) == 1
        assert not [k for k in await admin.client.keys("*") if k.endswith(b":lock")]
    finally:
        await admin.close()
