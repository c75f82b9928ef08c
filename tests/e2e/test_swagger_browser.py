"""Swagger UI in a real browser (headless Chromium, driven over the DevTools protocol): the page
renders the gateway's document and its "Try it out" calls the API.

Opt-in, as it needs Chromium (``apt-get install chromium``) and takes seconds:
``GATEWAY_BROWSER_TESTS=1 python3 -m pytest tests/e2e/test_swagger_browser.py``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import tempfile
from typing import Any

import aiohttp
import pytest

from gateway.testing import MOCK_MODEL

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
pytestmark = [
    pytest.mark.skipif(not os.environ.get("GATEWAY_BROWSER_TESTS"), reason="set GATEWAY_BROWSER_TESTS=1 to run"),
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed"),
]

#: In the page: expand an operation, press "Try it out", optionally set the JSON body, press
#: "Execute", and return the status and body Swagger UI shows.
TRY_IT_OUT = """
async (id, body) => {
  const until = async (find) => {
    for (let i = 0; i < 200; i++) {
      const found = find();
      if (found) return found;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error("timed out waiting in the page");
  };
  const op = await until(() => document.getElementById(id));
  op.querySelector(".opblock-summary-control").click();
  (await until(() => op.querySelector(".try-out__btn"))).click();
  if (body !== null) {
    const text = await until(() => op.querySelector("textarea.body-param__text"));
    Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, "value").set.call(text, body);
    text.dispatchEvent(new Event("input", {bubbles: true}));
  }
  (await until(() => op.querySelector("button.execute"))).click();
  const status = await until(() => op.querySelector(".live-responses-table tbody .response-col_status"));
  const shown = await until(() => op.querySelector(".live-responses-table tbody .response-col_description pre"));
  return {status: status.textContent.trim(), body: shown.textContent};
}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Page:
    """One page of a headless Chromium, over the DevTools websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.next_id = ws, 0

    async def evaluate(self, expression: str) -> Any:
        return (await self._evaluate(expression))["result"].get("value")

    async def wait_for(self, condition: str) -> None:
        """Until ``condition`` is true in the page (which may still be loading: its context can go away)."""
        for _ in range(200):
            reply = await self._evaluate(condition, check=False)
            if reply.get("result", {}).get("value") is True:
                return
            await asyncio.sleep(0.05)
        pytest.fail(f"the page never met {condition}")

    async def _evaluate(self, expression: str, check: bool = True) -> dict[str, Any]:
        self.next_id += 1
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        await self.ws.send_json({"id": self.next_id, "method": "Runtime.evaluate", "params": params})
        while True:
            message = await self.ws.receive_json(timeout=20)
            if message.get("id") == self.next_id:
                break
        if check:
            assert "result" in message, message
            assert "exceptionDetails" not in message["result"], message["result"]["exceptionDetails"]
        return message.get("result", {})


async def test_swagger_ui_renders_and_calls_the_api(gateway: Any) -> None:
    client = await gateway()
    port = free_port()
    with tempfile.TemporaryDirectory() as profile:
        args = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}"]
        args += [f"--remote-debugging-port={port}", str(client.make_url("/docs"))]
        browser = await asyncio.create_subprocess_exec(
            CHROMIUM, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )
        try:
            async with aiohttp.ClientSession() as session:
                pages: list[dict[str, Any]] = []
                for _ in range(200):
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/json/list") as response:
                            pages = [p for p in await response.json() if p["type"] == "page"]
                    except aiohttp.ClientConnectionError:
                        pass
                    if pages:
                        break
                    await asyncio.sleep(0.05)
                assert pages, "Chromium did not start"
                async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.wait_for("location.pathname === '/docs' && document.readyState === 'complete'")
                    models = await page.evaluate(f"({TRY_IT_OUT})('operations-models-get_v1_models', null)")
                    assert models["status"] == "200"
                    assert MOCK_MODEL in models["body"]
                    body = json.dumps({"model": MOCK_MODEL, "messages": [{"role": "user", "content": "hi docs"}]})
                    chat = await page.evaluate(
                        f"({TRY_IT_OUT})('operations-chat-post_v1_chat_completions', {json.dumps(body)})"
                    )
                    assert chat["status"] == "200"
                    assert json.loads(chat["body"])["choices"][0]["message"]["content"] == "hi docs"
        finally:
            browser.terminate()
            await browser.wait()
