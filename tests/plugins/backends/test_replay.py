"""The replay backend: record a real upstream on 127.0.0.1 (which counts its calls), replay with it
stopped, 404 for the unrecorded, nothing for a cut stream, no secret in any cassette."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
import yaml

from gateway.config import ConfigError
from gateway.formats.request_key import request_key
from gateway.loading import load
from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

KEY = "sk-upstream-secret-1234567890"
USERINFO = "hunter2pass"
MESSAGES = [{"role": "user", "content": "Hi"}]
STREAM: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True}


def replay_config(base_url: str, directory: Path, mode: str, **options: Any) -> dict[str, Any]:
    base = base_url.replace("http://", f"http://user:{USERINFO}@")
    return {
        "backends": [
            {"name": "up", "type": "openai_compat", "base_url": base, "api_key": KEY, "timeout": 2},
            {"name": "rec", "type": "replay", "target": "up", "mode": mode, "dir": str(directory), **options},
        ],
        "models": [{"name": "gpt-4o-mini", "backend": "rec"}],
    }


def files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def all_text(directory: Path) -> str:
    return "".join(p.read_text() for p in directory.rglob("*") if p.is_file())


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}


async def test_record_then_replay_with_the_upstream_stopped(gateway: Any, upstream: Any, tmp_path: Path) -> None:
    upstream.reply(Reply(content="one two three"), Reply(content="streamed answer here"))
    recorder = await gateway(replay_config(upstream.base_url, tmp_path, "record"))
    first = await (await recorder.post("/v1/chat/completions", json=chat())).json()
    resp = await recorder.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    recorded_stream = await resp.read()
    assert len(upstream.requests) == 2
    recorded = files(tmp_path)
    assert [f.stem for f in recorded] == [request_key("chat.completions", chat(), "gpt-4o-mini")]
    cassette = orjson.loads(recorded[0].read_bytes())
    assert cassette["request"]["body"]["messages"] == MESSAGES
    assert set(cassette["answers"]) == {"json", "stream"}
    text = all_text(tmp_path)
    assert KEY not in text and USERINFO not in text and "Authorization" not in text
    await upstream.server.close()

    player = await gateway(replay_config(upstream.base_url, tmp_path, "replay"))
    again = await (await player.post("/v1/chat/completions", json=chat(temperature=None) | {"user": "x"})).json()
    assert again == first
    replayed = await player.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert replayed.status == 200 and await replayed.read() == recorded_stream
    assert len(upstream.requests) == 2


async def test_unrecorded_request_in_replay_mode_is_a_404_naming_key_and_dir(
    gateway: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await gateway(replay_config(upstream.base_url, tmp_path, "replay"))
    resp = await client.post("/v1/chat/completions", json=chat())
    body = await resp.json()
    assert resp.status == 404 and body["error"]["code"] == "cassette_not_found"
    key = request_key("chat.completions", chat(), "gpt-4o-mini")
    assert key in body["error"]["message"] and str(tmp_path) in body["error"]["message"]
    assert upstream.requests == []


async def test_auto_records_once_and_a_non_stream_recording_streams(
    gateway: Any, upstream: Any, tmp_path: Path
) -> None:
    client = await gateway(replay_config(upstream.base_url, tmp_path, "auto"))
    one = await (await client.post("/v1/chat/completions", json=chat())).json()
    two = await (await client.post("/v1/chat/completions", json=chat())).json()
    assert one == two and len(upstream.requests) == 1
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n") and b"Hello" in raw and len(upstream.requests) == 1


async def test_a_cut_stream_records_nothing(gateway: Any, upstream: Any, tmp_path: Path) -> None:
    upstream.reply(Reply(content="a b c d e f", die_after=2))
    client = await gateway(replay_config(upstream.base_url, tmp_path, "record"))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert b'"error"' in await resp.read()
    assert files(tmp_path) == []


async def test_recorded_timing_is_replayed(gateway: Any, upstream: Any, tmp_path: Path) -> None:
    upstream.reply(Reply(content="a b c", chunk_delay=0.05))
    client = await gateway(replay_config(upstream.base_url, tmp_path, "record"))
    await (await client.post("/v1/chat/completions", json=chat(stream=True))).read()
    player = await gateway(replay_config(upstream.base_url, tmp_path, "replay", replay_timing="recorded"))
    start = time.monotonic()
    await (await player.post("/v1/chat/completions", json=chat(stream=True))).read()
    assert time.monotonic() - start >= 0.1


def test_the_example_config_with_the_openai_sdk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = OpenAIUpstream()
    example = Path(__file__).parents[3] / "config" / "examples" / "replay.yaml"
    with ServerThread(fake.app) as up:
        monkeypatch.setenv("OPENAI_API_BASE", up.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        monkeypatch.setenv("OPENAI_MODEL", "gpt-4o-mini")
        monkeypatch.setenv("REPLAY_DIR", str(tmp_path))
        monkeypatch.setenv("REPLAY_MODE", "record")
        with ServerThread(make_app(load(str(example)))) as gw:
            sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
            recorded = sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
            streamed = [
                c.model_dump() for c in sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
            ]
    monkeypatch.setenv("REPLAY_MODE", "replay")
    monkeypatch.delenv("OPENAI_API_KEY")
    with ServerThread(make_app(load(str(example)))) as gw:
        sdk = openai.OpenAI(base_url=gw.url + "/v1", api_key="unused")
        assert sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES) == recorded
        again = [
            c.model_dump() for c in sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)
        ]
        assert again == streamed
        with pytest.raises(openai.NotFoundError):
            sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "new"}])
    assert len(fake.requests) == 2
    assert KEY not in all_text(tmp_path)


async def test_a_recorded_stream_answers_a_non_stream_request_and_vice_versa(
    gateway: Any, upstream: Any, tmp_path: Path
) -> None:
    upstream.reply(Reply(content="streamed once"), Reply(content="answered once"))
    recorder = await gateway(replay_config(upstream.base_url, tmp_path, "record"))
    streamed = await (await recorder.post("/v1/chat/completions", json=chat(stream=True))).read()
    other = chat(messages=[{"role": "user", "content": "other"}])
    answered = await (await recorder.post("/v1/chat/completions", json=other)).json()
    assert b"streamed" in streamed and len(upstream.requests) == 2
    await upstream.server.close()

    player = await gateway(replay_config(upstream.base_url, tmp_path, "replay"))
    async with openai.AsyncOpenAI(base_url=str(player.make_url("/v1")), api_key="unused") as sdk:
        joined = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        assert joined.choices[0].message.content == "streamed once" and joined.choices[0].finish_reason == "stop"
        assert joined.usage is not None and joined.usage.total_tokens > 0
        chunks = [
            c
            async for c in await sdk.chat.completions.create(
                model="gpt-4o-mini", messages=other["messages"], stream=True
            )
        ]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answered["choices"][0]["message"]["content"] == "answered once"
    assert len(upstream.requests) == 2


@pytest.mark.parametrize(("target", "problem"), [("opnai", "no backend named 'opnai'"), ("rec", "is this backend")])
def test_the_target_is_checked_at_start_up(tmp_path: Path, target: str, problem: str) -> None:
    path = tmp_path / "replay.yaml"
    config = replay_config("http://127.0.0.1:9/v1", tmp_path, "replay")
    config["backends"][1]["target"] = target
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError) as caught:
        load(str(path))
    assert re.match(rf"{re.escape(str(path))}(:\d+)?: backends\[1\]\.target: ", str(caught.value))
    assert problem in str(caught.value)
    assert "(configured: up)" in str(caught.value)
