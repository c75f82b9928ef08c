"""The default router: strategies, draining, aliases, patterns, the response's model name, /info, and
the routing hook called again after a failed attempt (a plugin sees ``ctx.attempts``)."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from openai import AsyncOpenAI

from gateway import Deployment, hookimpl
from gateway.context import RequestContext
from gateway.testing import RecordingPlugin, make_app, recorded
from tests.upstreams.openai import OpenAIUpstream

MESSAGES = [{"role": "user", "content": "Hi"}]


def mocks(*names: str, **options: Any) -> list[dict[str, Any]]:
    return [{"name": name, "type": "mock", "models": ["m"], **options.get(name, {})} for name in names]


def model(*deployments: dict[str, Any], **route: Any) -> dict[str, Any]:
    return {"name": "m", "deployments": list(deployments), **route}


async def ask(client: TestClient, name: str = "m", stream: bool = False) -> Any:
    resp = await client.post("/v1/chat/completions", json={"model": name, "messages": MESSAGES, "stream": stream})
    return resp


async def served(client: TestClient, times: int, name: str = "m") -> list[str]:
    names = []
    for _ in range(times):
        resp = await ask(client, name)
        assert resp.status == 200, await resp.text()
        names.append(resp.headers["x-gateway-backend"])
    return names


async def test_weighted_round_robin_is_smooth_and_proportional(gateway: Any) -> None:
    config = {"backends": mocks("a", "b"), "models": [model({"backend": "a", "weight": 3}, {"backend": "b"})]}
    client = await gateway(config)
    assert await served(client, 8) == ["a", "a", "b", "a"] * 2


async def test_weight_zero_drains_a_deployment(gateway: Any) -> None:
    config = {"backends": mocks("a", "b"), "models": [model({"backend": "a", "weight": 0}, {"backend": "b"})]}
    client = await gateway(config)
    assert await served(client, 4) == ["b"] * 4


async def test_a_model_with_every_deployment_drained_is_a_503(gateway: Any) -> None:
    client = await gateway({"backends": mocks("a"), "models": [model({"backend": "a", "weight": 0})]})
    resp = await ask(client)
    assert resp.status == 503 and "Retry-After" not in resp.headers
    assert (await resp.json())["error"]["code"] == "no_deployment_available"


async def test_failover_prefers_the_first_deployment_and_retries_on_the_next(gateway: Any) -> None:
    backends = mocks("a", "b", a={"failure": {"mode": "error", "status": 500}})
    route = model({"backend": "a"}, {"backend": "b"}, strategy="failover", retry={"attempts": 2, "backoff": 0})
    client = await gateway({"backends": backends, "models": [route]})
    for _ in range(3):
        resp = await ask(client)
        assert (resp.headers["x-gateway-backend"], resp.headers["x-gateway-attempts"]) == ("b", "2")


async def test_least_in_flight_avoids_a_busy_deployment(gateway: Any) -> None:
    backends = mocks("a", "b", a={"chunk_delay": 0.05}, b={"chunk_delay": 0.05})
    client = await gateway(
        {"backends": backends, "models": [model({"backend": "a"}, {"backend": "b"}, strategy="least_in_flight")]}
    )
    busy = await ask(client, stream=True)  # a: held open while it streams
    assert busy.headers["x-gateway-backend"] == "a"
    assert await served(client, 2) == ["b", "b"]
    await busy.read()
    assert await served(client, 1) == ["a"]


async def test_lowest_latency_measures_each_deployment_then_prefers_the_fastest(gateway: Any) -> None:
    backends = mocks("slow", "fast", slow={"first_chunk_delay": 0.05})
    route = model({"backend": "slow"}, {"backend": "fast"}, strategy="lowest_latency")
    client = await gateway({"backends": backends, "models": [route]})
    assert await served(client, 10) == ["slow", "fast"] + ["fast"] * 8
    info = await (await client.get("/info")).json()
    assert info["deployments"]["slow"]["ttfb_ms"] >= 50 > info["deployments"]["fast"]["ttfb_ms"]


async def test_aliases_route_and_list_and_responses_show_the_name_asked_for(aiohttp_client: Any) -> None:
    config = {
        "backends": [{"name": "rec", "type": "recording", "models": ["canonical"]}],
        "models": [{"name": "canonical", "aliases": ["nickname"], "backend": "rec"}],
    }
    app = make_app(config, plugins=[RecordingPlugin()])
    client = await aiohttp_client(app)
    resp = await ask(client, "nickname")
    assert (await resp.json())["model"] == "nickname"
    assert recorded(app, "rec")[0].model == "canonical"  # the backend is asked for the model, not the alias
    listed = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listed["data"]] == ["canonical", "nickname"]
    assert (await client.get("/v1/models/nickname")).status == 200


async def test_the_response_model_name_can_be_configured(gateway: Any) -> None:
    route = model({"backend": "a"}, response_model="house-model")
    client = await gateway({"backends": mocks("a"), "models": [route]})
    assert (await (await ask(client)).json())["model"] == "house-model"


async def test_a_pattern_with_deployments_asks_each_for_the_requested_name(aiohttp_client: Any) -> None:
    config = {
        "backends": [
            {"name": "r1", "type": "recording", "models": ["team/x"]},
            {"name": "r2", "type": "recording", "models": ["team/x"]},
        ],
        "models": [{"name": "team/*", "deployments": [{"backend": "r1"}, {"backend": "r2"}], "strip_prefix": False}],
    }
    app = make_app(config, plugins=[RecordingPlugin()])
    client = await aiohttp_client(app)
    assert await served(client, 2, "team/x") == ["r1", "r2"]
    assert [c.model for c in recorded(app, "r1") + recorded(app, "r2")] == ["team/x", "team/x"]


async def test_info_shows_models_and_the_state_of_each_tracked_deployment(gateway: Any) -> None:
    route = model({"backend": "a", "name": "east"}, {"backend": "b", "name": "west"}, circuit={"failures": 3})
    client = await gateway({"backends": mocks("a", "b"), "models": [route]})
    await served(client, 2)
    info = await (await client.get("/info")).json()
    assert info["models"] == [
        {
            "name": "m",
            "deployments": [{"backend": "a", "name": "east"}, {"backend": "b", "name": "west"}],
            "circuit": {"failures": 3},
        }
    ]
    assert info["deployments"] == {
        "east": {
            "in_flight": 0,
            "ttfb_ms": info["deployments"]["east"]["ttfb_ms"],
            "circuit": {"state": "closed", "recent_failures": 0},
        },
        "west": {
            "in_flight": 0,
            "ttfb_ms": info["deployments"]["west"]["ttfb_ms"],
            "circuit": {"state": "closed", "recent_failures": 0},
        },
    }


class Watcher:
    """Sees every call of the routing hook and leaves the choice to the default router."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    @hookimpl(tryfirst=True)
    def gateway_select_backend(self, ctx: RequestContext, backends: Any) -> Deployment | None:
        self.calls.append([(a.deployment.name, type(a.error).__name__) for a in ctx.attempts])
        return None


async def test_the_routing_hook_is_called_again_with_the_failed_attempts(gateway: Any) -> None:
    backends = mocks("a", "b", a={"failure": {"mode": "error", "status": 503}})
    route = model({"backend": "a"}, {"backend": "b"}, strategy="failover", retry={"attempts": 2, "backoff": 0})
    watcher = Watcher()
    client = await gateway({"backends": backends, "models": [route]}, plugins=[watcher])
    assert (await ask(client)).headers["x-gateway-backend"] == "b"
    assert watcher.calls == [[], [("a", "UpstreamError")]]


class Replacement:
    """A router of its own: every request to backend ``b``, whatever the table says."""

    @hookimpl
    def gateway_select_backend(self, ctx: RequestContext, backends: Any) -> Deployment | None:
        return Deployment(backends["b"], "m")


async def test_a_plugin_can_replace_the_router(gateway: Any) -> None:
    client = await gateway({"backends": mocks("a", "b"), "models": [model({"backend": "a"})]}, plugins=[Replacement()])
    resp = await ask(client)
    assert (resp.headers["x-gateway-backend"], resp.headers["x-gateway-attempts"]) == ("b", "1")


@pytest.mark.parametrize("stream", [False, True])
async def test_every_model_response_names_its_deployment(gateway: Any, stream: bool) -> None:
    client = await gateway({"backends": mocks("a"), "models": [{"name": "m", "backend": "a"}]})
    resp = await ask(client, stream=stream)
    await resp.read()
    assert resp.headers["x-gateway-backend"] == "a" and resp.headers["x-gateway-attempts"] == "1"
    assert float(resp.headers["x-gateway-overhead-ms"]) >= 0
    other = await client.get("/v1/models")
    assert "x-gateway-backend" not in other.headers and "x-gateway-overhead-ms" not in other.headers


# Provider wildcards ------------------------------------------------------------------------------


@pytest.fixture
async def openai_upstream(aiohttp_server: Any) -> OpenAIUpstream:
    return await OpenAIUpstream().serve(aiohttp_server)


def wildcard(upstream: OpenAIUpstream, **route: Any) -> dict[str, Any]:
    backend = {"name": "openai", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up"}
    return {"backends": [backend], "models": [{"name": "openai/*", "backend": "openai", **route}]}


@pytest.mark.parametrize("stream", [False, True])
async def test_a_provider_wildcard_strips_its_prefix_on_the_way_up(
    gateway: Any, openai_upstream: OpenAIUpstream, stream: bool
) -> None:
    client = await gateway(wildcard(openai_upstream))
    async with AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0) as oai:
        if stream:
            chunks = [
                c
                async for c in await oai.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES, stream=True)
            ]
            assert {c.model for c in chunks} == {"openai/gpt-4o"}
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello from upstream"
        else:
            answer = await oai.chat.completions.create(model="openai/gpt-4o", messages=MESSAGES)
            assert answer.model == "openai/gpt-4o"  # the client's own name
            assert answer.choices[0].message.content == "Hello from upstream"
    assert openai_upstream.last.body["model"] == "gpt-4o"


async def test_a_provider_wildcard_lists_its_backends_models_under_its_prefix(
    gateway: Any, openai_upstream: OpenAIUpstream
) -> None:
    client = await gateway(wildcard(openai_upstream))
    listed = [m["id"] for m in (await (await client.get("/v1/models")).json())["data"]]
    assert sorted(listed) == ["openai/gpt-4o", "openai/gpt-4o-mini", "openai/text-embedding-3-small"]
    retrieved = await client.get("/v1/models/openai/gpt-4o")
    assert retrieved.status == 200 and (await retrieved.json())["id"] == "openai/gpt-4o"


async def test_strip_prefix_false_asks_for_the_name_as_requested(gateway: Any, openai_upstream: OpenAIUpstream) -> None:
    client = await gateway(wildcard(openai_upstream, strip_prefix=False))
    assert (await ask(client, "openai/gpt-4o")).status == 200
    assert openai_upstream.last.body["model"] == "openai/gpt-4o"
