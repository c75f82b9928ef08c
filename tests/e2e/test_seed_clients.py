"""The streaming clients of seed 002 (the Python ``requests`` one and the JavaScript ``fetch`` one)
against the default config: the model `default`, the seed's headers, real sockets.

The seed's Python client has two bugs the README corrects (it json-parses ``data: [DONE]`` before
checking for it, and indexes ``delta['content']`` on the final empty delta); the JavaScript client
works as written, provided each SSE event reaches it in one network read.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import structlog

from gateway.app import create_app
from gateway.testing import ServerThread, make_app, mock_config

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()
DEFAULT_CONFIG = ROOT / "config" / "gateway.yaml"
SEED_PROMPT = "Tell me a joke"
LONG_PROMPT = "Why did the gateway cross the road? To stream every event in one piece, of course."
TIMEOUT = 10


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread(create_app(DEFAULT_CONFIG)) as s:
        yield s


@pytest.fixture
def slow_server() -> Iterator[ServerThread]:
    """The mock streams with a pause before each chunk: one network read per event."""
    with ServerThread(make_app(mock_config(chunk_delay=0.01))) as s:
        yield s


@pytest.fixture(autouse=True)
def _silent_logs() -> None:
    """The access log must not land in the printed output the tests capture (conftest resets it)."""
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory(), cache_logger_on_first_use=False)


# (a) The Python client --------------------------------------------------------------------------


def seed_stream_chat_completion(base_url, model, messages):  # type: ignore[no-untyped-def]
    """The seed's generator exactly as written (only the URL points at the test server, and a timeout)."""
    url = base_url + "/v1/chat/completions"
    headers = {"Content-Type": "application/json", "Authorization": "beareryour_api_key_here"}
    data = {"model": model, "messages": messages, "stream": True}

    with requests.post(url, json=data, headers=headers, stream=True, timeout=TIMEOUT) as response:
        for line in response.iter_lines():
            if line:
                decoded_line = line.decode("utf-8")
                if decoded_line.startswith("data: "):
                    chunk = json.loads(decoded_line[6:])
                    yield chunk
                elif decoded_line == "data: [DONE]":
                    break


def readme_block(language: str, marker: str) -> str:
    """The README's fenced ``language`` block that contains ``marker``."""
    blocks = README.split(f"```{language}\n")[1:]
    found = [block.split("```", 1)[0] for block in blocks if marker in block]
    assert len(found) == 1, f"the README should show exactly one {language} block with {marker!r}"
    return found[0]


def run_readme_python_client(base_url: str) -> str:
    """The README's corrected client, run as printed (URL replaced); returns what it printed."""
    code = readme_block("python", "def stream_chat_completion")
    assert "http://localhost:8000" in code
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://localhost:8000", base_url), "README.md", "exec"), {})
    return out.getvalue()


def stream_chat_completion(base_url: str, model: str, messages: list[dict[str, Any]]) -> Any:
    """The README's generator, for tests that look at the chunks themselves."""
    namespace: dict[str, Any] = {}
    code = readme_block("python", "def stream_chat_completion").split("# Usage")[0]
    exec(compile(code.replace("http://localhost:8000", base_url), "README.md", "exec"), namespace)
    return namespace["stream_chat_completion"](model, messages)


def test_readme_python_client_prints_the_echoed_prompt(server: ServerThread) -> None:
    assert run_readme_python_client(server.url) == SEED_PROMPT


def test_corrected_python_client_sees_every_chunk_then_stops_at_done(server: ServerThread) -> None:
    messages = [{"role": "user", "content": SEED_PROMPT}]
    chunks = list(stream_chat_completion(server.url, "default", messages))
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["object"] for c in chunks] == ["chat.completion.chunk"] * len(chunks)
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len(chunks) == 1 + len(SEED_PROMPT.split()) + 1  # role, one per word, finish
    assert {c["model"] for c in chunks} == {"mock-gpt-model"}  # `default` resolved by default_model


def test_seed_python_usage_fails_on_the_final_empty_delta(server: ServerThread) -> None:
    """The seed's usage loop as written: KeyError on the last chunk's delta ``{}``."""
    out = io.StringIO()
    with pytest.raises(KeyError, match="content"), contextlib.redirect_stdout(out):
        messages = [{"role": "user", "content": "Tell me a joke"}]
        for chunk in seed_stream_chat_completion(server.url, "default", messages):
            print(chunk["choices"][0]["delta"]["content"], end="", flush=True)
    assert out.getvalue() == SEED_PROMPT  # everything before the final delta did print


def test_seed_python_generator_fails_on_done(server: ServerThread) -> None:
    """The seed's generator json-parses ``[DONE]`` because it checks ``startswith("data: ")`` first."""
    messages = [{"role": "user", "content": SEED_PROMPT}]
    received: list[Any] = []
    with pytest.raises(json.JSONDecodeError):
        for chunk in seed_stream_chat_completion(server.url, "default", messages):
            received.append(chunk)
    assert received[-1]["choices"][0]["finish_reason"] == "stop"  # it failed only on the end marker


def test_stream_ends_with_the_done_marker(server: ServerThread) -> None:
    """The raw stream the seeds parse: ``data: {...}`` events, then exactly one ``data: [DONE]``."""
    body = {"model": "default", "messages": [{"role": "user", "content": SEED_PROMPT}], "stream": True}
    headers = {"Content-Type": "application/json", "Authorization": "beareryour_api_key_here"}
    response = requests.post(server.url + "/v1/chat/completions", json=body, headers=headers, timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    events = response.content.split(b"\n\n")
    assert events[-1] == b""
    assert events[-2] == b"data: [DONE]"
    assert all(e.startswith(b"data: {") and b"\n" not in e for e in events[:-2])


# (b) The JavaScript client ----------------------------------------------------------------------

SEED_JS_FUNCTION = """\
async function streamChatCompletion(model, messages) {
  const response = await fetch('http://localhost:8000/v1/chat/completions', {
    method: 'POST',
    headers: {
      'Content-Type': 'application/json',
      'Authorization': 'beareryour_api_key_here'
    },
    body: JSON.stringify({
      model,
      messages,
      stream: true
    })
  });

  const reader = response.body.getReader();
  const decoder = new TextDecoder();

  while (true) {
    const { value, done } = await reader.read();
    if (done) break;
    
    const chunk = decoder.decode(value);
    const lines = chunk.split('\\n');
    
    for (const line of lines) {
      if (line.startsWith('data: ')) {
        if (line.includes('[DONE]')) break;
        const data = JSON.parse(line.slice(6));
        console.log(data.choices[0].delta.content);
      }
    }
  }
}
"""


def test_readme_shows_the_seed_js_client_verbatim() -> None:
    def lines(code: str) -> list[str]:
        return [line.rstrip() for line in code.strip().split("\n")]

    function = readme_block("javascript", "async function streamChatCompletion").split("// Usage")[0]
    assert lines(function) == lines(SEED_JS_FUNCTION)


def seed_js(url: str, prompt: str) -> str:
    """The seed's script: the function verbatim (URL replaced), then its usage lines."""
    function = SEED_JS_FUNCTION.replace("http://localhost:8000", url)
    assert function != SEED_JS_FUNCTION
    return (
        function
        + "\n// Usage\n"
        + f"const messages = [{{ role: 'user', content: {json.dumps(prompt)} }}];\n"
        + "streamChatCompletion('default', messages);\n"
    )


def run_node(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    path = tmp_path / "client.mjs"
    path.write_text(script)
    return subprocess.run([node, str(path)], capture_output=True, text=True, timeout=30, check=False)


def printed_reply(stdout: str) -> str:
    """What the reply's console.log lines say: the first delta's "" and the final delta's
    ``undefined`` (it has no content) are left out."""
    lines = stdout.split("\n")
    assert lines[-1] == ""
    return "".join(line for line in lines[:-1] if line not in ("", "undefined"))


def test_seed_js_client_as_written(server: ServerThread, tmp_path: Path) -> None:
    result = run_node(seed_js(server.url, SEED_PROMPT), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.split("\n")
    assert lines == ["", "Tell ", "me ", "a ", "joke", "undefined", ""]
    assert printed_reply(result.stdout) == SEED_PROMPT


def test_seed_js_client_with_events_over_many_reads(slow_server: ServerThread, tmp_path: Path) -> None:
    """With a pause before each chunk every event arrives in its own read: a split event would make
    the seed's ``JSON.parse`` throw (an unhandled rejection, exit code 1)."""
    result = run_node(seed_js(slow_server.url, LONG_PROMPT), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert printed_reply(result.stdout) == LONG_PROMPT
    words = [line.strip() for line in result.stdout.split("\n") if line not in ("", "undefined")]
    assert words == LONG_PROMPT.split()
