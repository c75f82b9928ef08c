"""The response cache, single-flight and Idempotency-Key, against a fake OpenAI upstream on 127.0.0.1
that counts its calls (tests/upstreams/openai.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest

from gateway.loading import load
from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

MESSAGES = [{"role": "user", "content": "Hi"}]
URL = "/v1/chat/completions"


def config(upstream: Any, **cache: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up"}],
        "models": [{"name": "*", "backend": "up"}],
        "plugins": {"cache": {"enabled": True, **cache}},
    }


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}


async def post(client: Any, body: dict[str, Any], **headers: str) -> tuple[Any, Any]:
    resp = await client.post(URL, json=body, headers=headers)
    return resp, (await resp.read() if body.get("stream") else await resp.json())


async def test_a_repeat_request_and_a_repeat_stream_reach_the_upstream_once(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    first, one = await post(client, chat())
    second, two = await post(client, chat(user="someone else", stream_options=None))
    assert (first.headers["X-Gateway-Cache"], second.headers["X-Gateway-Cache"]) == ("miss", "hit")
    assert one == two and len(upstream.requests) == 1
    upstream.reply(Reply(content="a streamed answer"))
    body = chat(stream=True, messages=[{"role": "user", "content": "stream"}])
    s1, raw1 = await post(client, body)
    s2, raw2 = await post(client, body)
    assert (s1.headers["X-Gateway-Cache"], s2.headers["X-Gateway-Cache"]) == ("miss", "hit")
    assert b"a streamed answer" not in raw1  # chunked upstream: words arrive apart
    assert raw2.endswith(b"data: [DONE]\n\n") and len(upstream.requests) == 2


def test_the_sdk_reads_stream_from_non_stream_and_non_stream_from_stream_hits() -> None:
    fake = OpenAIUpstream()
    fake.reply(Reply(content="stored as json"), Reply(content="stored as a stream"))
    with ServerThread(fake.app) as up:
        fake.base_url = up.url + "/v1"
        with ServerThread(make_app(config(fake))) as gw:
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
            made = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            chunks = list(
                sdk.chat.completions.create(
                    model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
                )
            )
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            assert text == made.choices[0].message.content == "stored as json"
            assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == made.usage.total_tokens
            other = [{"role": "user", "content": "second"}]
            streamed = list(sdk.chat.completions.create(model="gpt-4o-mini", messages=other, stream=True))
            again = sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=other)
            assert again.headers["x-gateway-cache"] == "hit"
            completion = again.parse()
            assert completion.choices[0].message.content == "".join(
                c.choices[0].delta.content or "" for c in streamed if c.choices
            )
            assert completion.choices[0].finish_reason == "stop" and completion.usage is not None
    assert len(fake.requests) == 2


async def test_no_cache_fetches_afresh_and_no_store_neither_reads_nor_stores(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    await post(client, chat())
    resp, _ = await post(client, chat(), **{"Cache-Control": "no-cache"})
    assert resp.headers["X-Gateway-Cache"] == "miss" and len(upstream.requests) == 2
    resp, _ = await post(client, chat(), **{"Cache-Control": "no-store"})
    assert resp.headers["X-Gateway-Cache"] == "bypass" and len(upstream.requests) == 3
    body = chat(messages=[{"role": "user", "content": "never stored"}])
    await post(client, body, **{"Cache-Control": "no-store"})
    resp, _ = await post(client, body)
    assert resp.headers["X-Gateway-Cache"] == "miss" and len(upstream.requests) == 5


async def test_ttl_expiry(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream, ttl=0.2))
    await post(client, chat())
    assert (await post(client, chat()))[0].headers["X-Gateway-Cache"] == "hit"
    await asyncio.sleep(0.25)
    assert (await post(client, chat()))[0].headers["X-Gateway-Cache"] == "miss"
    assert len(upstream.requests) == 2


async def test_lru_eviction_by_bytes(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream, max_bytes=900))  # one answer is ~400 bytes: two fit
    bodies = [chat(messages=[{"role": "user", "content": f"q{i}"}]) for i in range(3)]
    for body in bodies[:2]:
        await post(client, body)
    await post(client, bodies[0])  # used: q1 is now the least recently used
    await post(client, bodies[2])  # evicts q1
    assert len(upstream.requests) == 3
    assert (await post(client, bodies[0]))[0].headers["X-Gateway-Cache"] == "hit"
    assert (await post(client, bodies[1]))[0].headers["X-Gateway-Cache"] == "miss"


async def test_tenants_never_read_each_others_answers_unless_shared(gateway: Any, upstream: Any) -> None:
    keys = {"keys": [{"name": "a", "key": "sk-tenant-a"}, {"name": "b", "key": "sk-tenant-b"}]}
    for shared, calls in ((False, 2), (True, 1)):
        upstream.requests.clear()
        cfg = config(upstream, shared=shared)
        cfg["plugins"]["auth_api_keys"] = keys
        client = await gateway(cfg)
        await post(client, chat(), Authorization="Bearer sk-tenant-a")
        resp, _ = await post(client, chat(), Authorization="Bearer sk-tenant-b")
        assert len(upstream.requests) == calls
        assert resp.headers["X-Gateway-Cache"] == ("hit" if shared else "miss")


async def test_errors_and_nondeterministic_requests_are_not_cached(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    upstream.fail(1, status=400)
    assert (await post(client, chat()))[0].status == 400
    assert (await post(client, chat()))[0].headers["X-Gateway-Cache"] == "miss"
    resp, _ = await post(client, chat(temperature=0.7))
    assert resp.headers["X-Gateway-Cache"] == "bypass"
    client = await gateway(config(upstream, cache_nondeterministic=True))
    await post(client, chat(temperature=0.7))
    assert (await post(client, chat(temperature=0.7)))[0].headers["X-Gateway-Cache"] == "hit"


async def test_a_cut_stream_stores_nothing(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    upstream.reply(Reply(content="a b c d e f", die_after=2))
    _, raw = await post(client, chat(stream=True))
    assert b'"error"' in raw
    assert (await post(client, chat(stream=True)))[0].headers["X-Gateway-Cache"] == "miss"


async def test_single_flight_a_late_stream_gets_the_whole_answer(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    upstream.reply(Reply(content="one two three four", chunk_delay=0.05))
    leader = asyncio.create_task(post(client, chat(stream=True)))
    await asyncio.sleep(0.08)
    followers = await asyncio.gather(post(client, chat(stream=True)), post(client, chat()))
    _, raw = await leader
    assert len(upstream.requests) == 1
    assert [r.headers["X-Gateway-Cache"] for r, _ in followers] == ["hit", "hit"]
    assert followers[1][1]["choices"][0]["message"]["content"] == "one two three four"
    assert b"one" in followers[0][1] and followers[0][1].endswith(b"data: [DONE]\n\n") and raw


async def test_idempotency_key(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream, enabled=False))
    headers = {"Idempotency-Key": "retry-1", "Cache-Control": "no-store"}
    upstream.reply(Reply(content="first answer", delay=0.1), Reply(content="second answer"))
    first, waiting = await asyncio.gather(post(client, chat(), **headers), post(client, chat(), **headers))
    assert len(upstream.requests) == 1
    assert first[1] == waiting[1] and waiting[0].headers["Idempotent-Replayed"] == "true"
    _, raw = await post(client, chat(stream=True), **headers)
    assert b"first" in raw and raw.endswith(b"data: [DONE]\n\n") and len(upstream.requests) == 1
    resp, body = await post(client, chat(messages=[{"role": "user", "content": "other"}]), **headers)
    assert resp.status == 409 and body["error"]["code"] == "idempotency_key_reused"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    resp, _ = await post(client, chat(), **{"Idempotency-Key": "retry-2"})
    assert len(upstream.requests) == 2


async def test_hits_are_marked_on_metrics_and_not_counted_as_spend(gateway: Any, upstream: Any) -> None:
    client = await gateway(config(upstream))
    await post(client, chat())
    await post(client, chat())
    text = await (await client.get("/metrics")).text()
    assert 'gateway_cache_requests_total{endpoint="chat.completions",result="hit"} 1.0' in text
    assert 'gateway_cache_requests_total{endpoint="chat.completions",result="miss"} 1.0' in text
    assert "gateway_cache_stored_bytes_total" in text
    assert 'type="completion"} 4.0' in text  # the upstream's 4 completion tokens, once


def test_the_example_config(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = OpenAIUpstream()
    example = Path(__file__).parents[2] / "config" / "examples" / "cache.yaml"
    with ServerThread(fake.app) as up:
        monkeypatch.setenv("OPENAI_API_BASE", up.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", "sk-up")
        with ServerThread(make_app(load(str(example)))) as gw:
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
            seen = [sdk.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES) for _ in "ab"]
            assert [r.headers["x-gateway-cache"] for r in seen] == ["miss", "hit"]
            assert len(fake.requests) == 1
            sdk.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers={"Cache-Control": "no-cache"}
            )
            assert len(fake.requests) == 2
            other = [{"role": "user", "content": "a stream"}]
            streams = []
            for _ in "ab":
                with sdk.chat.completions.with_streaming_response.create(
                    model="gpt-4o-mini", messages=other, stream=True
                ) as resp:
                    text = "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
                    streams.append((resp.headers["x-gateway-cache"], text))
            assert [h for h, _ in streams] == ["miss", "hit"] and streams[0][1] == streams[1][1] != ""
            assert len(fake.requests) == 3
            once = {"Idempotency-Key": "pay-once", "Cache-Control": "no-store"}
            asked = [{"role": "user", "content": "idempotent"}]
            answers = [
                sdk.chat.completions.create(model="gpt-4o-mini", messages=asked, extra_headers=once) for _ in "ab"
            ]
            assert answers[0] == answers[1] and len(fake.requests) == 4
            with pytest.raises(openai.ConflictError) as conflict:
                sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_headers=once)
            assert conflict.value.code == "idempotency_key_reused" and len(fake.requests) == 4
