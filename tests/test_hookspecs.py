"""Meta-tests: every hook has a contract, is documented with its signature, and is tested."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from gateway import hookspecs
from gateway.plugin_manager import hookspecs_names

ROOT = Path(__file__).parents[1]
DOCS = (ROOT / "README.md").read_text() + (ROOT / "docs" / "plugins.md").read_text()
TESTS = "".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.name != "test_hookspecs.py")
HOOKS = hookspecs_names()


def test_there_are_hooks() -> None:
    assert len(HOOKS) == 12
    assert hookspecs.ASYNC_HOOKS <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_contract(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc) > 80, f"{hook} needs a docstring saying when it runs and how results combine"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented_with_its_signature(hook: str) -> None:
    params = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    assert f"### {hook}({params})" in DOCS


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    assert f"def {hook}(" in TESTS, f"no test implements {hook}"
