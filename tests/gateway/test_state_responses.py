"""Stored responses (``gateway.state.responses``) in the memory store and in a real Redis: kept per
caller with a TTL, bounded in number and bytes (oldest evicted first), and shared by every gateway
pointed at one Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml
from openai import OpenAI

from gateway.config import ConfigError
from gateway.loading import load
from gateway.state.responses import INDEX, ResponsesConfig, StoredResponses
from gateway.testing import ServerThread, make_app, mock_config
from tests.gateway import test_state

store = test_state.store  # the fixture: the memory store, then a real Redis


def record(text: str) -> dict[str, Any]:
    return {"response": {"id": text}, "messages": [{"role": "user", "content": text}]}


async def test_put_get_delete_per_caller(store: Any) -> None:
    a, b = (StoredResponses(store, ResponsesConfig(), caller) for caller in ("key:a", "key:b"))
    assert await a.put("resp_1", record("one"))
    assert await a.get("resp_1") == record("one")
    assert await b.get("resp_1") is None  # another caller's
    assert not await b.delete("resp_1")
    assert await a.delete("resp_1")
    assert await a.get("resp_1") is None
    assert not await a.delete("resp_1")


async def test_the_oldest_are_evicted_past_max_stored(store: Any) -> None:
    kept = StoredResponses(store, ResponsesConfig(max_stored=2), "key:a")
    for i in range(3):
        await kept.put(f"resp_{i}", record(str(i)))
    assert await kept.get("resp_0") is None
    assert await kept.get("resp_1") == record("1") and await kept.get("resp_2") == record("2")


async def test_the_oldest_are_evicted_past_max_bytes(store: Any) -> None:
    size = len(b'{"response":{"id":"0"},"messages":[{"role":"user","content":"0"}]}')
    kept = StoredResponses(store, ResponsesConfig(max_bytes=size * 2, max_response_bytes=size), "key:a")
    for i in range(3):
        assert await kept.put(f"resp_{i}", record(str(i)))
    assert [await kept.get(f"resp_{i}") is not None for i in range(3)] == [False, True, True]
    await kept.delete("resp_1")  # frees its bytes: one more fits without evicting
    await kept.put("resp_3", record("3"))
    assert await kept.get("resp_2") == record("2") and await kept.get("resp_3") == record("3")


async def test_a_response_over_max_response_bytes_is_not_kept(store: Any) -> None:
    kept = StoredResponses(store, ResponsesConfig(max_response_bytes=50), "key:a")
    assert not await kept.put("resp_big", record("x" * 100))
    assert await kept.get("resp_big") is None


async def test_records_expire_after_ttl(store: Any) -> None:
    kept = StoredResponses(store, ResponsesConfig(ttl_s=0.05), "key:a")
    await kept.put("resp_1", record("one"))
    assert await kept.get("resp_1") is not None
    await asyncio.sleep(0.08)
    assert await kept.get("resp_1") is None
    await kept.put("resp_2", record("two"))  # sweeps the expired one out of the index
    if store.kind == "redis":
        assert await store.client.zcard(store.key(INDEX)) == 1
        assert 0 < await store.client.pttl(store.key(INDEX)) <= 50


@pytest.mark.parametrize(
    ("responses", "path", "problem"),
    [
        ({"ttl_s": 0}, "responses.ttl_s", "greater than 0"),
        ({"max_stored": 0}, "responses.max_stored", "greater than or equal to 1"),
        ({"max_bytes": 10, "max_response_bytes": 20}, "responses", "max_response_bytes must not be larger"),
        ({"max_count": 3}, "responses.max_count", "unknown key"),
    ],
)
def test_bad_responses_config_fails_at_start_up(responses: Any, path: str, problem: str, tmp_path: Path) -> None:
    config_file = tmp_path / "gateway.yaml"
    config_file.write_text(yaml.safe_dump({**mock_config(), "responses": responses}))
    with pytest.raises(ConfigError) as exc_info:
        load(config_file)
    message = str(exc_info.value)
    assert str(config_file) in message and f"{path}: " in message and problem in message, message


def test_a_response_stored_by_one_gateway_is_read_and_continued_by_another(redis_url: str) -> None:
    config = {**mock_config(), "state": {"store": "redis", "url": redis_url, "timeout_ms": 3000}}
    with ServerThread(make_app(config)) as one, ServerThread(make_app(config)) as two:
        first = OpenAI(base_url=one.url + "/v1", api_key="sk-a", max_retries=0)
        second = OpenAI(base_url=two.url + "/v1", api_key="sk-a", max_retries=0)
        created = first.responses.create(model="mock-gpt-model", input="one two", stream=False)
        assert second.responses.retrieve(created.id).output_text == created.output_text
        continued = second.responses.create(model="mock-gpt-model", input="three", previous_response_id=created.id)
        assert continued.usage is not None and created.usage is not None
        assert continued.usage.input_tokens > created.usage.input_tokens
        second.responses.delete(created.id)
        with pytest.raises(Exception, match="not found"):
            first.responses.retrieve(created.id)
        first.close()
        second.close()


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_an_unreachable_store(on_error: str) -> None:
    """``allow``: the answer goes out unstored (what needs a stored response is a 503 either way);
    ``deny``: a request to store is a 503, and a stream ends with an ``error`` event."""
    from tests.upstreams.redis_server import free_port

    state = {"store": "redis", "url": f"redis://127.0.0.1:{free_port()}/0", "timeout_ms": 50, "on_error": on_error}
    with ServerThread(make_app({**mock_config(), "state": state})) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="sk-a", max_retries=0)
        if on_error == "allow":
            response = client.responses.create(model="mock-gpt-model", input="hi")
            assert response.output_text == "hi"
        else:
            with pytest.raises(openai.InternalServerError) as caught:
                client.responses.create(model="mock-gpt-model", input="hi")
            assert caught.value.status_code == 503
            events = list(client.responses.create(model="mock-gpt-model", input="hi", stream=True))
            assert events[-1].type == "error" and events[-1].code == "state_store_unavailable"  # type: ignore[union-attr]
        assert client.responses.create(model="mock-gpt-model", input="hi", store=False).output_text == "hi"
        with pytest.raises(openai.InternalServerError) as caught:
            client.responses.create(model="mock-gpt-model", input="hi", previous_response_id="resp_1")
        assert caught.value.status_code == 503
        with pytest.raises(openai.InternalServerError):
            client.responses.retrieve("resp_1")
        client.close()
