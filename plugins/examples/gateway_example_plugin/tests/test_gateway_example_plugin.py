"""The example plugin's tests, as a plugin author writes them: real apps from ``gateway.testing``,
real HTTP (pytest-aiohttp's ``aiohttp_client``), the openai SDK, and the packaging itself."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path
from typing import Any

import gateway_example_plugin
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.config import ConfigError
from gateway.keys import generations_key
from gateway.testing import (
    RecordingPlugin,
    SeenFilters,
    make_app,
    mock_config,
    recorded,
    recording_config,
    run_in_thread,
)

HERE = Path(__file__).parents[1]
SIGNATURE = " (signed by the example plugin)"
CHAT = "/v1/chat/completions"


def settings(config: dict[str, Any], **example_plugin: Any) -> dict[str, Any]:
    return {**config, "plugins": {"example_plugin": example_plugin}}


def ask(content: str, model: str = "mock-gpt-model", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def events(raw: bytes) -> list[dict[str, Any]]:
    parts = raw.split(b"\n\n")
    assert parts[-2:] == [b"data: [DONE]", b""]
    return [orjson.loads(p.removeprefix(b"data: ")) for p in parts[:-2]]


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    """The gateway as example.yaml configures it: the plugin loaded by its module path."""
    return await aiohttp_client(create_app(HERE / "example.yaml"))


async def test_rewrites_the_request_adds_the_header_and_signs_the_reply(client: Any) -> None:
    resp = await client.post(CHAT, json=ask("my Password is hunter2, PASSWORD!"))
    assert resp.status == 200
    assert resp.headers["X-Masked-Words"] == "2"
    reply = await resp.json()
    assert reply["choices"][0]["message"]["content"] == "my ******** is hunter2, ********!" + SIGNATURE


async def test_the_backend_gets_the_rewritten_request(aiohttp_client: Any) -> None:
    config = settings(recording_config(), banned_words=["secret"])
    app = make_app(config, plugins=[gateway_example_plugin, RecordingPlugin()])
    client = await aiohttp_client(app)
    messages = [{"role": "system", "content": "secret rules"}, {"role": "user", "content": "a Secret"}]
    resp = await client.post(CHAT, json={"model": "recorded-model", "messages": messages})
    assert resp.headers["X-Masked-Words"] == "1"
    [call] = recorded(app)
    assert call.body["messages"] == [
        {"role": "system", "content": "secret rules"},
        {"role": "user", "content": "a ******"},
    ]


async def test_filters_the_stream(client: Any) -> None:
    resp = await client.post(CHAT, json=ask("say password twice: password", stream=True, n=2))
    assert resp.headers["X-Masked-Words"] == "2"  # headers go out before the stream
    chunks = events(await resp.read())
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == index]
        assert "".join(c["delta"].get("content") or "" for c in mine) == "say ******** twice: ********" + SIGNATURE
        assert mine[-2]["delta"] == {"content": SIGNATURE}  # just before the finish chunk
        assert [c["finish_reason"] for c in mine].count("stop") == 1 and mine[-1]["finish_reason"] == "stop"


def test_the_filter_signs_every_choice_a_chunk_finishes_after_its_last_text() -> None:
    signer = gateway_example_plugin.Signer(SIGNATURE)
    finish = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [
            {"index": 0, "delta": {"content": "end."}, "finish_reason": "stop"},
            {"index": 1, "delta": {}, "finish_reason": "length"},
        ],
    }
    signed, finished = signer(finish)
    assert [(c["index"], c["delta"], c["finish_reason"]) for c in signed["choices"]] == [
        (0, {"content": "end." + SIGNATURE}, None),
        (1, {"content": SIGNATURE}, None),
    ]
    assert [(c["delta"], c["finish_reason"]) for c in finished["choices"]] == [({}, "stop"), ({}, "length")]
    assert signer(None) is None


async def test_without_settings_it_leaves_everything_alone(aiohttp_client: Any) -> None:
    seen = SeenFilters()
    client = await aiohttp_client(make_app(mock_config(), plugins=[gateway_example_plugin, seen]))
    resp = await client.post(CHAT, json=ask("password", stream=True))
    assert "X-Masked-Words" not in resp.headers
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in events(await resp.read())) == "password"
    assert seen.seen == [[]]  # no filter: the stream passed through untouched


def test_bad_settings_fail_at_start_up() -> None:
    with pytest.raises(ConfigError, match=r"plugins\.example_plugin\.banned_word: unknown key"):
        make_app(settings(mock_config(), banned_word=["x"]), plugins=[gateway_example_plugin])


async def test_is_listed_with_its_hooks(client: Any) -> None:
    info = await (await client.get("/info")).json()
    plugin = next(p for p in info["plugins"] if p["name"] == "gateway_example_plugin")
    assert plugin["hooks"] == [
        "gateway_process_request",
        "gateway_process_response",
        "gateway_register_config",
        "gateway_stream_filter",
    ]


def test_with_the_openai_sdk() -> None:
    config = settings(mock_config(), banned_words=["password"], signature=SIGNATURE)
    with run_in_thread(config, plugins=[gateway_example_plugin]) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=5.0)
        raw = client.chat.completions.with_raw_response.create(
            model="mock-gpt-model", messages=[{"role": "user", "content": "my password"}]
        )
        assert raw.headers["X-Masked-Words"] == "1"
        assert raw.parse().choices[0].message.content == "my ********" + SIGNATURE
        stream = client.chat.completions.create(
            model="mock-gpt-model", messages=[{"role": "user", "content": "a password"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "a ********" + SIGNATURE


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The package's metadata as setuptools builds it from setup.cfg, on ``sys.path`` (what
    installing it does, without copying the module)."""
    subprocess.run(
        [sys.executable, "-c", "from setuptools import setup; setup()", "-q", "egg_info", "--egg-base", str(tmp_path)],
        cwd=HERE,
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(tmp_path))


async def test_the_entry_point_is_declared_and_loads_the_plugin(aiohttp_client: Any, installed: None) -> None:
    """setup.cfg's ``gateway`` entry point is found by the gateway without ``plugins.enabled``, under
    its entry point name."""
    [entry] = [
        ep for ep in importlib.metadata.entry_points(group="gateway") if ep.dist.name == "gateway-example-plugin"
    ]
    assert (entry.name, entry.value) == ("example_plugin", "gateway_example_plugin")
    assert entry.load() is gateway_example_plugin

    app = create_app(settings(mock_config(), banned_words=["password"]))
    assert app[generations_key].current.pm.get_plugin("example_plugin") is gateway_example_plugin
    resp = await (await aiohttp_client(app)).post(CHAT, json=ask("password"))
    assert resp.headers["X-Masked-Words"] == "1"
    disabled = create_app({**mock_config(), "plugins": {"disabled": ["example_plugin"]}})
    assert disabled[generations_key].current.pm.get_plugin("example_plugin") is None
