"""The real CLI in subprocesses: ``check-config``, ``plugins``, ``serve`` (ports, SIGTERM, graceful
shutdown of an in-flight stream) and ``--version``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from gateway import __version__
from gateway.plugin_manager import DEFAULT_PLUGINS, builtin_name

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "config/gateway.yaml"
TIMEOUT = 20  # seconds any one CLI command may take before the test fails
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST", "GATEWAY_CONFIG", "ALLOW_ORIGINS")}
    env.update(extra)
    return env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        cwd=ROOT,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Server:
    """``gateway serve`` in a subprocess; stopped (and reaped) whatever happens in the test."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", *args],
            cwd=ROOT,
            env=clean_env(HOST="127.0.0.1", **env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.output = ""

    def wait_up(self, port: int, timeout: float = 10) -> str:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out, err = self.proc.communicate()
                pytest.fail(f"gateway serve exited with {self.proc.returncode}:\n{out}\n{err}")
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    return url
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        pytest.fail(f"gateway serve did not answer on port {port} within {timeout} s")

    def terminate_and_wait(self, timeout: float = 5) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout)

    def wait(self, timeout: float) -> int:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"gateway serve still running {timeout} s after SIGTERM")
        self.output = out + err
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=5)


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.kill()


# One-shot commands -----------------------------------------------------------------------------


def test_version() -> None:
    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"gateway {__version__}"


def test_check_config_ok() -> None:
    result = cli("check-config", CONFIG)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{CONFIG}: OK")
    assert "1 backend, 1 model," in result.stdout


BAD = """\
backends:
  - {name: mock, type: mock, bogus: 1}
models:
  - {name: mock-gpt-model, backend: nowhere}
"""


@pytest.mark.parametrize("command", [["check-config"], ["serve", "--config"]], ids=["check-config", "serve"])
def test_bad_config_exits_2_with_a_message(tmp_path: Path, command: list[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    result = cli(*command, str(path), PORT=str(free_port()))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert f"{path}:2: backends[0].bogus: unknown key" in result.stderr  # file:line: key path: problem
    assert f"{path}:4: models[0].backend: " in result.stderr and "nowhere" in result.stderr
    assert result.stdout == ""


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    result = cli("check-config", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr and "cannot read config file" in result.stderr


def test_plugins_lists_the_builtins_with_their_hooks() -> None:
    text = cli("plugins", "--config", CONFIG)
    assert text.returncode == 0, text.stderr
    lines = dict(line.split(": ", 1) for line in text.stdout.splitlines())
    builtins = [builtin_name(path) for path in DEFAULT_PLUGINS]
    assert list(lines)[: len(builtins)] == builtins
    assert builtins[:3] == ["error_renderer", "routing", "request_logging"] and "backends.mock" in builtins
    assert lines["error_renderer"] == "gateway_handle_error"
    assert "gateway_select_backend" in lines["routing"]
    assert lines["cors"] == "gateway_register_config, gateway_setup_app [config: plugins.cors]"
    assert lines["backends.mock"] == "gateway_register_backends"

    as_json = cli("plugins", "--json", "--config", CONFIG)
    assert as_json.returncode == 0, as_json.stderr
    plugins = json.loads(as_json.stdout)
    assert {p["name"]: p["hooks"] for p in plugins}["request_logging"] == [
        "gateway_process_response",
        "gateway_register_config",
        "gateway_request_finished",
        "gateway_setup_app",
        "gateway_stream_filter",
    ]
    assert [p["name"] for p in plugins][:5] == list(lines)[:5]


# serve -----------------------------------------------------------------------------------------


def chat(url: str, **body: object) -> requests.Response:
    payload = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "ping pong"}], **body}
    return requests.post(url + "/v1/chat/completions", json=payload, timeout=5)


def test_serve_port_option_overrides_env_and_sigterm_exits_0(servers: list[Server]) -> None:
    env_port, option_port = free_port(), free_port()
    server = Server(["--config", CONFIG, "--port", str(option_port)], {"PORT": str(env_port)})
    servers.append(server)
    url = server.wait_up(option_port)
    assert not port_open(env_port)

    resp = chat(url)
    assert resp.status_code == 200
    assert resp.json()["choices"][0]["message"]["content"] == "ping pong"
    assert resp.headers["X-Request-ID"]

    assert server.terminate_and_wait(5) == 0
    assert "Traceback" not in server.output


STREAMING = """\
server: {{host: 127.0.0.1, port: {port}}}
backends:
  - {{name: mock, type: mock, models: [mock-gpt-model], chunk_delay: 0.2, chunks: 5, reply: "one two three four five"}}
models:
  - {{name: mock-gpt-model, backend: mock}}
"""


def test_serve_env_port_and_graceful_shutdown(tmp_path: Path, servers: list[Server]) -> None:
    config_port, env_port = free_port(), free_port()
    path = tmp_path / "slow.yaml"
    path.write_text(STREAMING.format(port=config_port))
    server = Server(["--config", str(path)], {"PORT": str(env_port)})
    servers.append(server)
    url = server.wait_up(env_port)
    assert not port_open(config_port)

    first_chunk = threading.Event()
    received: list[bytes] = []
    failure: list[Exception] = []

    def stream() -> None:
        try:
            payload = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
            with requests.post(url + "/v1/chat/completions", json=payload, stream=True, timeout=(2, 5)) as resp:
                assert resp.status_code == 200
                for data in resp.iter_content(chunk_size=None):
                    received.append(data)
                    first_chunk.set()
        except Exception as exc:
            failure.append(exc)
        finally:
            first_chunk.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert first_chunk.wait(5), "no chunk within 5 s"
    assert not failure, failure
    server.proc.send_signal(signal.SIGTERM)
    sent_at = time.monotonic()

    time.sleep(0.2)  # the listening socket closes on SIGTERM; the stream is still going (~1.2 s)
    assert server.proc.poll() is None, "exited before the in-flight stream finished"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url + "/health", timeout=1)

    reader.join(5)
    assert not reader.is_alive(), "stream did not finish"
    assert not failure, failure
    text = b"".join(received).decode()
    assert text.endswith("data: [DONE]\n\n")
    contents = [
        json.loads(line[len("data: ") :])["choices"][0]["delta"].get("content", "")
        for line in text.split("\n\n")
        if line.startswith("data: {")
    ]
    assert "".join(contents) == "one two three four five"

    assert server.wait(5) == 0
    assert time.monotonic() - sent_at < 5
    assert "Traceback" not in server.output
    events = logged(server.output)
    assert events["gateway starting"]["docs"] == f"http://127.0.0.1:{env_port}/docs"
    stopped = events["gateway stopped"]  # one line: what was drained, in how long
    assert (stopped["drained"], stopped["ended_by_timeout"]) == (1, 0)
    assert 0.2 < stopped["seconds"] < 5


def test_dotenv_in_the_cwd_names_the_config(tmp_path: Path) -> None:
    """`GATEWAY_CONFIG` in ./.env picks the config file `check-config` validates by default."""
    config = tmp_path / "mine.yaml"
    config.write_text("backends: [{name: m, type: mock, models: [from-dotenv]}]\n")
    (tmp_path / ".env").write_text(f"GATEWAY_CONFIG={config}\n")
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK (1 backend, 1 model,")


LONG_STREAM = """\
server: {{host: 127.0.0.1, port: {port}, shutdown_timeout: 0.5}}
backends:
  - {{name: mock, type: mock, models: [mock-gpt-model], chunk_delay: 0.2, chunks: 100}}
"""


def test_a_stream_longer_than_the_grace_period_ends_with_an_error_event(tmp_path: Path, servers: list[Server]) -> None:
    port = free_port()
    path = tmp_path / "long.yaml"
    path.write_text(LONG_STREAM.format(port=port))
    server = Server(["--config", str(path)], {})
    servers.append(server)
    url = server.wait_up(port)
    payload = {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    with requests.post(url + "/v1/chat/completions", json=payload, stream=True, timeout=(2, 5)) as resp:
        events = resp.iter_lines()
        assert next(line for line in events if line).startswith(b"data: {")
        server.proc.send_signal(signal.SIGTERM)
        sent_at = time.monotonic()
        rest = [line for line in events if line]  # until the server ends the stream
    assert 0.4 < time.monotonic() - sent_at < 2.0  # the grace period, not aiohttp's doubled timeout
    assert rest[-1].startswith(b'data: {"error"')
    assert json.loads(rest[-1][6:])["error"]["code"] == "service_unavailable"
    assert b"data: [DONE]" not in rest
    assert server.wait(5) == 0
    stopped = logged(server.output)["gateway stopped"]
    assert (stopped["drained"], stopped["ended_by_timeout"]) == (0, 1)


def test_a_port_in_use_is_one_line_not_a_traceback(servers: list[Server]) -> None:
    port = free_port()
    first = Server(["--config", CONFIG, "--port", str(port)], {})
    servers.append(first)
    first.wait_up(port)
    result = cli("serve", "--config", CONFIG, "--port", str(port), HOST="127.0.0.1")
    assert result.returncode == 1
    assert result.stderr == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    assert "gateway starting" not in result.stdout  # refused before it claims to start


def logged(output: str) -> dict[str, dict[str, Any]]:
    """The JSON log lines of a ``gateway serve``'s output, by event."""
    return {line["event"]: line for line in map(json.loads, (t for t in output.splitlines() if t.startswith("{")))}


# Several workers ------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def wait_for(check: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.05)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_workers_share_the_port_restart_when_killed_and_stop_on_sigterm(servers: list[Server], tmp_path: Path) -> None:
    port = free_port()
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    server = Server(
        ["--config", CONFIG, "--port", str(port), "--workers", "2"], {"PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    )
    servers.append(server)
    url = server.wait_up(port)
    wait_for(lambda: len(children(server.proc.pid)) == 2)
    first = children(server.proc.pid)
    for _ in range(20):  # the kernel spreads connections over both: every one is answered
        assert chat(url).status_code == 200

    live = {f.name for f in metrics.glob("gauge_live*.db")}
    assert any(str(first[0]) in name for name in live), live  # in-flight gauges of the worker

    os.kill(first[0], signal.SIGKILL)  # a worker dies: the parent starts another
    wait_for(lambda: len(children(server.proc.pid)) == 2 and first[0] not in children(server.proc.pid))
    assert chat(url).status_code == 200
    assert not [f for f in metrics.glob("gauge_live*.db") if f.name.endswith(f"_{first[0]}.db")]  # forgotten

    assert server.terminate_and_wait(10) == 0
    assert "Traceback" not in server.output
    for pid in children(server.proc.pid) + first[1:]:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()


def test_workers_on_a_port_in_use_stop_at_once(servers: list[Server]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = Server(["--config", CONFIG, "--port", str(port), "--workers", "2"], {})
        servers.append(server)
        assert server.wait(15) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in server.output


def test_workers_with_limits_in_memory_refuse_to_start(servers: list[Server], tmp_path: Path) -> None:
    auth = ROOT / "config" / "examples" / "auth.yaml"
    env = {"GATEWAY_API_KEY": "sk-gw-admin-0123456789", "GATEWAY_LIMITED_KEY": "sk-gw-limited-0123456789"}
    result = cli("serve", "--config", str(auth), "--port", str(free_port()), "--workers", "2", **env)
    assert result.returncode == 2
    assert f"{auth}: --workers: the limits of keys limited would be counted by each worker" in result.stderr
    assert "set state.store: redis" in result.stderr
    assert "Traceback" not in result.stderr
    # limits in rate_limit's own section count too; with the redis store the workers start
    config = tmp_path / "limits.yaml"
    config.write_text("plugins:\n  rate_limit: {default: {requests_per_minute: 5}}\n")
    result = cli("serve", "--config", str(config), "--port", str(free_port()), "--workers", "2")
    assert result.returncode == 2 and "rate_limit's limits would be counted" in result.stderr
    port = free_port()
    config.write_text(config.read_text() + "state: {store: redis, url: 'redis://127.0.0.1:1/0'}\n")
    server = Server(["--config", str(config), "--port", str(port), "--workers", "2"], {})
    servers.append(server)
    server.wait_up(port, timeout=30)
    assert server.terminate_and_wait(10) == 0


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_workers_exit_when_their_supervisor_is_killed(servers: list[Server]) -> None:
    port = free_port()
    server = Server(["--config", CONFIG, "--port", str(port), "--workers", "2"], {})
    servers.append(server)
    server.wait_up(port)
    wait_for(lambda: len(children(server.proc.pid)) == 2)
    workers = children(server.proc.pid)
    os.kill(server.proc.pid, signal.SIGKILL)  # no chance to stop them itself
    server.wait(30)  # the output pipes close once the workers, which hold them too, have exited
    wait_for(lambda: not any(_alive(pid) for pid in workers), timeout=10)
    assert not port_open(port)


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_a_worker_that_exits_cleanly_is_restarted_without_an_error_line(servers: list[Server]) -> None:
    port = free_port()
    server = Server(["--config", CONFIG, "--port", str(port), "--workers", "2"], {})
    servers.append(server)
    url = server.wait_up(port)
    wait_for(lambda: len(children(server.proc.pid)) == 2)
    first = children(server.proc.pid)
    time.sleep(0.5)
    os.kill(first[0], signal.SIGTERM)  # it shuts down gracefully and exits 0
    wait_for(lambda: len(children(server.proc.pid)) == 2 and first[0] not in children(server.proc.pid))
    assert chat(url).status_code == 200
    assert server.terminate_and_wait(30) == 0  # a bound, not a wait: a loaded machine starts workers slowly
    lines = [json.loads(line) for line in server.output.splitlines() if line.startswith("{")]
    [exited] = [line for line in lines if line.get("pid") == first[0] and "worker" in line["event"]]
    assert exited["level"] == "info" and exited["exit_code"] == 0 and "died" not in exited["event"], exited
