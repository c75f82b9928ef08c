"""Attempts over two deployments through the HTTP API: retries, failover, fallbacks to another model,
and the headers of the attempt that served."""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import pytest

from gateway.keys import generations_key
from tests.gateway.two_deployments import (
    CONTEXT_TOO_LONG,
    MESSAGES,
    both,
    closed_port,
    events,
    post,
    sdk,
    served_by,
    setup,
)
from tests.upstreams.openai import OpenAIUpstream, Reply
from tests.upstreams.openai_text import OpenAITextUpstream

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


# Router defaults and on_status -------------------------------------------------------------------


def router_setup(primary: OpenAIUpstream, secondary: OpenAIUpstream, router: dict[str, Any]) -> dict[str, Any]:
    """Models ``m`` (primary) and ``spare`` (secondary) with nothing of their own: the router's settings."""
    config = setup(primary, secondary, {"name": "m", "backend": "primary"}, {"name": "spare", "backend": "secondary"})
    return {**config, "router": router}


async def test_on_status_retries_the_listed_statuses_only(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    router = {"retry": {"attempts": 3, "backoff": 0.01, "on_status": [429, 503]}}
    client = await gateway(router_setup(primary, secondary, router))
    primary.fail(1, status=503)
    primary.fail(1, status=429)
    response = await post(client)
    assert response.status == 200 and served_by(response) == ("primary", "3")
    assert len(primary.requests) == 3

    primary.fail(1, status=500)  # not listed: the client gets it at once
    response = await post(client)
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "bad_gateway"
    assert len(primary.requests) == 4


async def test_on_status_may_retry_a_client_error_status(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    router = {"retry": {"attempts": 2, "backoff": 0.01, "on_status": [409]}}
    client = await gateway(router_setup(primary, secondary, router))
    primary.fail(1, status=409)
    response = await post(client)
    assert response.status == 200 and served_by(response) == ("primary", "2")


async def test_models_fall_back_to_the_router_fallbacks_and_an_entry_overrides(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    config = router_setup(primary, secondary, {"fallbacks": ["spare"]})
    config["models"].append({"name": "alone", "backend": "primary", "fallbacks": []})
    client = await gateway(config)
    primary.fail(1, status=500)
    response = await post(client)
    assert response.status == 200 and served_by(response) == ("secondary", "2")
    primary.fail(1, status=500)
    assert (await post(client, model="alone")).status == 502  # its own (empty) list wins
    secondary.fail(1, status=500)
    assert (await post(client, model="spare")).status == 502  # the fallback does not fall back to itself


async def test_a_reload_changes_what_every_model_inherits(
    gateway: Any, primary: OpenAIUpstream, secondary: OpenAIUpstream
) -> None:
    client = await gateway(router_setup(primary, secondary, {}))
    primary.fail(1, status=503)
    assert (await post(client)).status == 502  # no retries by default
    retrying = router_setup(primary, secondary, {"retry": {"attempts": 2, "backoff": 0.01}})
    assert await client.server.app[generations_key].reload(retrying)
    primary.fail(1, status=503)
    response = await post(client)
    assert response.status == 200 and served_by(response) == ("primary", "2")
