"""The example plugin of docs/plugins.md, loaded from its YAML the way a user would load it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.app import create_app

EXAMPLES = Path(__file__).parents[1] / "docs" / "examples"
SIGNATURE = " (signed by the example plugin)"


@pytest.fixture
async def client(aiohttp_client: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return await aiohttp_client(create_app(EXAMPLES / "example_plugin.yaml"))


def body(content: str, **extra: Any) -> dict[str, Any]:
    return {"model": "mock-gpt-model", "messages": [{"role": "user", "content": content}], **extra}


async def test_rewrites_the_request_and_signs_the_reply(client: Any) -> None:
    resp = await client.post("/v1/chat/completions", json=body("my Password is hunter2"))
    assert resp.status == 200
    assert (await resp.json())["choices"][0]["message"]["content"] == "my ******** is hunter2" + SIGNATURE


async def test_filters_the_stream(client: Any) -> None:
    resp = await client.post("/v1/chat/completions", json=body("say password twice: password", stream=True))
    events = (await resp.read()).split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-2]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "say ******** twice: ********" + SIGNATURE
    assert chunks[-2]["choices"][0]["delta"] == {"content": SIGNATURE}  # just before the finish chunk
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_is_listed_as_a_plugin(client: Any) -> None:
    info = await (await client.get("/info")).json()
    plugin = next(p for p in info["plugins"] if p["name"] == "example_plugin")
    assert plugin["hooks"] == [
        "gateway_process_request",
        "gateway_process_response",
        "gateway_register_config",
        "gateway_stream_filter",
    ]
