"""Every module under plugins/ imports only the public surface (``gateway.PUBLIC_MODULES``)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from gateway import PUBLIC_MODULES, is_public

PLUGINS = Path(__file__).resolve().parent.parent / "plugins"


def gateway_imports(source: str) -> list[tuple[int, str]]:
    """Each ``gateway...`` module the source imports, with its line: ``import x``, ``from x import y``
    and ``from gateway import <submodule>`` (a name that is a module of the package)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if _ours(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _ours(node.module):
            found.append((node.lineno, node.module))
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                if _is_module(name):
                    found.append((node.lineno, name))
    return found


def forbidden_imports(source: str) -> list[str]:
    """``line: module`` for each core module the source imports from outside the public surface."""
    return [f"{line}: {module}" for line, module in gateway_imports(source) if not is_public(module)]


def _ours(module: str) -> bool:
    return module == "gateway" or module.startswith("gateway.")


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # the parent is not a package
        return False


SOURCES = sorted(PLUGINS.rglob("*.py"))


def test_plugins_are_found() -> None:
    assert len(SOURCES) > 20 and PLUGINS / "routing.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(PLUGINS)))
def test_plugin_imports_only_the_public_surface(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


def test_the_checker_flags_every_form_of_a_core_import() -> None:
    source = (
        "import gateway.pipeline\n"
        "from gateway.resilience.attempts import ATTEMPTS_HEADER\n"
        "from gateway import lifecycle, hookimpl\n"
        "from gateway.resilience import hedging\n"
        "from gateway import hookimpl\n"
        "from gateway.formats.chat import content_text\n"
        "from gateway.upstream import sse\n"
        "import gateway_plugins.routing\n"
    )
    assert forbidden_imports(source) == [
        "1: gateway.pipeline",
        "2: gateway.resilience.attempts",
        "3: gateway.lifecycle",
        "4: gateway.resilience",
        "4: gateway.resilience.hedging",
    ]


def test_every_public_module_exists() -> None:
    for name in PUBLIC_MODULES:
        importlib.import_module(name)
