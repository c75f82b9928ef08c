"""What an installed copy of the project holds: ``gateway`` and ``gateway_plugins``, no top-level ``plugins``."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [path] = out.glob("*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_the_plugins_folder_as_gateway_plugins(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {name.split("/", 1)[0] for name in names if "/" in name and ".dist-info/" not in name}
    assert tops == {"gateway", "gateway_plugins"}
    for module in ("gateway_plugins/routing.py", "gateway_plugins/backends/mock/__init__.py"):
        assert module in names
    assert not any(name.startswith("gateway_plugins/examples/") for name in names)


def test_import_plugins_finds_nothing_of_ours_outside_the_checkout(tmp_path: Path) -> None:
    script = "import gateway_plugins.routing, importlib.util; print(importlib.util.find_spec('plugins'))"
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "None"
