"""Hot reload: a valid config is swapped in for new requests while requests in flight finish on
theirs; an invalid one changes nothing; backends no longer used close once drained; SIGHUP and a
watched config file trigger it; 200 streams in flight during reloads all complete."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
import yaml
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from gateway.keys import backends_key, generations_key
from gateway.testing import mock_config
from tests.gateway.test_cli import Server, free_port, servers, wait_for  # noqa: F401 (servers: a fixture)
from tests.upstreams.openai import OpenAIUpstream, Reply

WORDS = " ".join(f"w{i}" for i in range(10))


def mock(*models: str, **options: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "mock", "type": "mock", "models": list(models), **options}],
        "models": [{"name": m, "backend": "mock"} for m in models],
    }


def compat(base_url: str, *models: str, **options: Any) -> dict[str, Any]:
    backend = {"name": "up", "type": "openai_compat", "base_url": base_url, "timeout": 5, **options}
    return {"backends": [backend], "models": [{"name": m, "backend": "up"} for m in models]}


async def chat(client: TestClient, model: str, stream: bool = False) -> aiohttp.ClientResponse:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}
    return await client.post("/v1/chat/completions", json=body)


@pytest.fixture
def upstream(upstream: OpenAIUpstream) -> OpenAIUpstream:
    """The shared upstream, streaming slowly enough for a reload to land mid-stream."""
    upstream.default = Reply(content=WORDS, chunk_delay=0.02)
    return upstream


async def test_a_valid_config_serves_new_requests(gateway: Any) -> None:
    client = await gateway(mock("one"))
    generations = client.server.app[generations_key]
    assert await generations.reload(mock("two"))
    assert (await chat(client, "two")).status == 200
    assert (await chat(client, "one")).status == 404
    models = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in models["data"]] == ["two"]
    info = await (await client.get("/info")).json()
    assert info["config_generation"] == 2 and [m["name"] for m in info["models"]] == ["two"]


async def test_plugin_settings_read_per_request_reload(gateway: Any) -> None:
    client = await gateway(mock_config())
    assert (await chat(client, "mock-gpt-model")).status == 200
    keyed = {**mock_config(), "plugins": {"auth_api_keys": {"keys": [{"name": "team", "key": "gw-team-key"}]}}}
    assert await client.server.app[generations_key].reload(keyed)
    assert (await chat(client, "mock-gpt-model")).status == 401
    body = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}]}
    resp = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer gw-team-key"})
    assert resp.status == 200


async def test_a_plugin_idle_under_a_config_wakes_with_the_reload_that_configures_it(gateway: Any) -> None:
    """``gateway_idle``: transforms without rules is not called on requests; a reload with a rule
    makes it work again (a request is refused by it), and a reload without rules idles it again."""
    client = await gateway(mock_config())
    generations = client.server.app[generations_key]
    assert "transforms" in generations.current.hooks.idle
    assert (await chat(client, "mock-gpt-model")).status == 200
    refusing = {**mock_config(), "plugins": {"transforms": {"rules": [{"refuse": ["hi"]}]}}}
    assert await generations.reload(refusing)
    assert "transforms" not in generations.current.hooks.idle
    refused = await chat(client, "mock-gpt-model")
    assert refused.status == 400 and (await refused.json())["error"]["code"] == "content_policy"
    assert await generations.reload(mock_config())
    assert "transforms" in generations.current.hooks.idle and (await chat(client, "mock-gpt-model")).status == 200


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"backends": [{"name": "b", "type": "warp_drive"}]}, "backends[0].type: unknown backend type"),
        ({**mock_config(), "models": [{"name": "m", "backend": "nope"}]}, "models[0].backend: no backend named"),
        ({**mock_config(), "plugins": {"disabled": ["cors"]}}, "cannot change without a restart"),
        ({**mock_config(), "state": {"key_prefix": "other:"}}, "the state section cannot change without a restart"),
    ],
)
async def test_an_invalid_config_is_logged_and_changes_nothing(
    gateway: Any, config: dict[str, Any], reason: str
) -> None:
    client = await gateway(mock_config())
    with capture_logs() as logs:
        assert not await client.server.app[generations_key].reload(config)
    [entry] = [e for e in logs if e["log_level"] == "error"]
    assert "keeping the current config" in entry["event"] and reason in entry["error"]
    assert (await chat(client, "mock-gpt-model")).status == 200
    assert (await (await client.get("/info")).json())["config_generation"] == 1


async def test_streams_in_flight_finish_on_their_config_and_its_backend_closes_after(
    gateway: Any, upstream: OpenAIUpstream
) -> None:
    client = await gateway(compat(upstream.base_url, "gpt-4o"))
    app = client.server.app
    old = app[backends_key]["up"]
    resp = await chat(client, "gpt-4o", stream=True)
    await resp.content.readuntil(b"\n\n")  # the stream is under way

    assert await app[generations_key].reload(compat(upstream.base_url, "gpt-4o-mini", timeout=6))
    new = app[backends_key]["up"]
    assert new is not old and not old.client.closed  # the stream still uses it
    assert (await chat(client, "gpt-4o-mini")).status == 200  # new requests: the new config
    assert (await chat(client, "gpt-4o")).status == 404

    rest = await resp.read()
    assert rest.endswith(b"data: [DONE]\n\n") and b"w9" in rest
    await asyncio.sleep(0.05)
    assert old.client.closed and not new.client.closed


async def test_a_backend_whose_settings_did_not_change_is_kept(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await gateway(compat(upstream.base_url, "gpt-4o"))
    app = client.server.app
    old = app[backends_key]["up"]
    assert await app[generations_key].reload(compat(upstream.base_url, "gpt-4o", "gpt-4o-mini"))
    await asyncio.sleep(0.05)
    assert app[backends_key]["up"] is old and not old.client.closed
    assert (await chat(client, "gpt-4o-mini")).status == 200


async def test_a_reload_under_200_concurrent_streams_loses_none(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await gateway(compat(upstream.base_url, "gpt-4o"))
    app = client.server.app
    first = app[backends_key]["up"]
    url = client.make_url("/v1/chat/completions")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def stream(session: aiohttp.ClientSession) -> bytes:
        async with session.post(url, json=body) as resp:
            assert resp.status == 200
            return await resp.read()

    generations = app[generations_key]
    gate = asyncio.Event()
    upstream.default = Reply(content=WORDS, gate=gate)  # every stream sends one chunk, then waits for the gate

    async def under_way(count: int) -> None:  # until that many streams are under way on the current config
        deadline = time.monotonic() + 10
        while generations.current.active < count or upstream.active < count:
            assert time.monotonic() < deadline, f"only {generations.current.active} streams started"
            await asyncio.sleep(0.01)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        streams = [asyncio.ensure_future(stream(session)) for _ in range(200)]
        await under_way(200)
        for timeout, in_flight in ((6, 200), (7, 10)):  # each reload replaces the backend (new settings)
            replaced = generations.current
            assert await generations.reload(compat(upstream.base_url, "gpt-4o", timeout=timeout))
            assert replaced.active == in_flight  # the streams started on the config just replaced
            streams += [asyncio.ensure_future(stream(session)) for _ in range(10)]
            await under_way(10)
        assert not first.client.closed  # 200 streams still use it
        gate.set()
        bodies = await asyncio.gather(*streams)

    assert len(bodies) == 220
    for raw in bodies:
        assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b'"content"') == 11 and b"error" not in raw
    assert upstream.finished == 220
    await asyncio.sleep(0.05)
    assert first.client.closed and not app[backends_key]["up"].client.closed


async def test_the_config_file_is_reloaded_when_it_changes(aiohttp_client: Any, tmp_path: Path) -> None:
    from gateway.testing import make_app

    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump({**mock("one"), "server": {"watch_config": 0.05}}))
    client = await aiohttp_client(make_app(str(path)))
    assert (await chat(client, "one")).status == 200
    path.write_text(yaml.safe_dump({**mock("one", "two"), "server": {"watch_config": 0.05}}))
    deadline = time.monotonic() + 3
    while (await chat(client, "two")).status != 200:
        assert time.monotonic() < deadline, "the change was not picked up"
        await asyncio.sleep(0.05)
    path.write_text("backends: [")  # broken: logged, and the last good config stays
    await asyncio.sleep(0.2)
    assert (await chat(client, "two")).status == 200


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sighup_reloads_gateway_serve(tmp_path: Path, servers: list[Server]) -> None:  # noqa: F811
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(mock("one")))
    port = free_port()
    server = Server(["--config", str(path), "--port", str(port)], {})
    servers.append(server)
    url = server.wait_up(port)

    def models() -> list[str]:
        return [m["id"] for m in requests.get(url + "/v1/models", timeout=5).json()["data"]]

    path.write_text(yaml.safe_dump(mock("one", "two")))
    server.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: models() == ["one", "two"], timeout=5)
    path.write_text("models: [{name: x, backend: nowhere}]")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert models() == ["one", "two"]
    assert server.terminate_and_wait() == 0
    assert "config reload failed" in server.output and "Traceback" not in server.output
