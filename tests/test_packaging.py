"""What an installed copy of the project holds (``gateway`` with its shipped config files, and
``gateway_plugins``; no top-level ``plugins``), and that it serves: the wheel, installed into a fresh
virtualenv, runs ``gateway serve`` from a directory that is not the checkout."""

from __future__ import annotations

import json
import os
import signal
import site
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["gateway.yaml", *(f"examples/{p.name}" for p in sorted((ROOT / "config" / "examples").glob("*.yaml")))]


@pytest.fixture(scope="module")
def wheel_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [path] = out.glob("*.whl")
    return path


@pytest.fixture(scope="module")
def wheel(wheel_path: Path) -> zipfile.ZipFile:
    return zipfile.ZipFile(wheel_path)


def test_the_wheel_installs_the_plugins_folder_as_gateway_plugins(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {name.split("/", 1)[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert tops == {"gateway", "gateway_plugins"}
    for module in ("gateway_plugins/routing.py", "gateway_plugins/backends/mock/__init__.py"):
        assert module in names
    assert not any(name.startswith("gateway_plugins/examples/") for name in names)


def test_the_wheel_ships_the_default_config_and_the_examples_as_they_are_in_config(wheel: zipfile.ZipFile) -> None:
    shipped = sorted(n.removeprefix("gateway/data/") for n in wheel.namelist() if n.startswith("gateway/data/"))
    assert shipped == sorted(SHIPPED)
    for name in SHIPPED:  # copies made at build time from the one source, config/
        assert wheel.read(f"gateway/data/{name}") == (ROOT / "config" / name).read_bytes()


def test_import_plugins_finds_nothing_of_ours_outside_the_checkout(tmp_path: Path) -> None:
    script = "import gateway_plugins.routing, importlib.util; print(importlib.util.find_spec('plugins'))"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_the_installed_wheel_serves_the_mock_from_a_directory_without_a_config(
    wheel_path: Path, tmp_path: Path
) -> None:
    """``pip install`` the wheel (not editable) into a fresh virtualenv (its dependencies from this
    interpreter's site-packages: no network), then ``gateway serve`` in an empty directory."""
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True, timeout=60
    )
    if sys.prefix != sys.base_prefix:  # the suite runs in a virtualenv: its packages are the dependencies
        own = venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
        (own / "_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    python, gateway = venv / "bin" / "python", venv / "bin" / "gateway"
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_CONFIG", "PORT", "HOST", "PYTHONPATH")}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "-q",
            "--no-deps",
            "--no-index",
            "--ignore-installed",  # a checkout installed -e in the base interpreter (.ci/run) is not this
            str(wheel_path),
        ],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run(
        [str(python), "-c", "import gateway; print(gateway.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(venv)), where  # the installed copy, not the checkout

    checked = subprocess.run(
        [str(gateway), "check-config", "examples/openai.yaml"],
        cwd=elsewhere,
        env={**env, "OPENAI_API_KEY": "sk-test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and "examples/openai.yaml: OK" in checked.stdout, checked

    port = _free_port()
    server = subprocess.Popen(
        [str(gateway), "serve", "--host", "127.0.0.1", "--port", str(port)],
        cwd=elsewhere,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "gateway serve did not start"
                time.sleep(0.1)
        answer = _post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            {"model": "mock-gpt-model", "messages": [{"role": "user", "content": "hello from a wheel"}]},
        )
        assert answer["choices"][0]["message"]["content"] == "hello from a wheel"  # type: ignore[index]
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    [starting] = [json.loads(line) for line in output.splitlines() if '"gateway starting"' in line]
    assert starting["config"].startswith(str(venv)) and starting["config"].endswith("/gateway/data/gateway.yaml")
