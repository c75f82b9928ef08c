"""JSON templates with JMESPath references (plugins/backends/json_template.py)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway_plugins.backends.http_template.json_template import Template, compile_path, root_fields

VARIABLES = ("messages", "history", "last", "params", "model")
VALUES: dict[str, Any] = {
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": 'Say "hi"\n'}],
    "history": [{"role": "system", "content": "Be brief."}],
    "last": 'Say "hi"\n',
    "params": {"temperature": 0.5, "stop": ["\n"], "flag": False},
    "model": "m-1",
}


def render(tree: Any) -> Any:
    return Template(tree, VARIABLES).render(VALUES)


def test_a_whole_reference_inserts_the_value_with_its_type() -> None:
    tree = {"h": "{{ history }}", "t": "{{params.temperature}}", "s": " {{ params.stop }} ", "f": "{{ params.flag }}"}
    assert render(tree) == {"h": VALUES["history"], "t": 0.5, "s": ["\n"], "f": False}


def test_quotes_and_newlines_in_values_stay_data_never_json_text() -> None:
    assert render({"message": "{{ last }}"}) == {"message": 'Say "hi"\n'}
    assert render(["{{ messages[-1].content }}"]) == ['Say "hi"\n']


def test_references_inside_a_longer_string_are_replaced_by_text() -> None:
    tree = "{{ model }} at {{ params.temperature }}: {{ last }}{{ params.stop }}{{ params.missing }}|{{ params.flag }}"
    assert render(tree) == 'm-1 at 0.5: Say "hi"\n["\\n"]|false'


def test_a_key_whose_reference_finds_nothing_is_left_out() -> None:
    tree = {"top_p": "{{ params.top_p }}", "keep": None, "list": ["{{ params.top_p }}", 1]}
    assert render(tree) == {"keep": None, "list": [None, 1]}


def test_jmespath_gives_defaults_filters_and_functions() -> None:
    tree = {
        "top_p": "{{ params.top_p || `0.9` }}",
        "users": "{{ messages[?role == 'user'].content }}",
        "turns": "{{ length(messages) }}",
        "literal": "{{ 'raw text' }}",
    }
    assert render(tree) == {"top_p": 0.9, "users": ['Say "hi"\n'], "turns": 2, "literal": "raw text"}


def test_literals_and_nested_structures_pass_as_they_are() -> None:
    tree = {"a": [1, {"b": True, "c": "plain {text}"}], "d": 2.5, "e": "{single braces}"}
    assert render(tree) == tree
    assert Template(None, VARIABLES).render(VALUES) is None


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        ({"history": "{{ histroy }}"}, "history: unknown variable 'histroy' in 'histroy' (known: history, last,"),
        ({"a": [{"b": "x {{ params. }}"}]}, "a[0].b: invalid JMESPath expression 'params.'"),
        ({"a": "{{ }}"}, "a: empty reference"),
        ("{{ length(nope) }}", "template: unknown variable 'nope'"),
    ],
)
def test_bad_references_are_refused_naming_their_place(tree: Any, message: str) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace("[", r"\[")):
        Template(tree, VARIABLES)


@pytest.mark.parametrize(
    ("expression", "roots"),
    [
        ("a.b.c", {"a"}),
        ("a[0].b", {"a"}),
        ("a[?b == `1`].c", {"a"}),
        ("a[*].b | c", {"a"}),
        ("a || b", {"a", "b"}),
        ("{x: a, y: b.c}", {"a", "b"}),
        ("[a, b]", {"a", "b"}),
        ("sort_by(a, &b)", {"a"}),
        ("!a && `true`", {"a"}),
        ("@", set()),
    ],
)
def test_root_fields_are_the_names_read_from_the_top(expression: str, roots: set[str]) -> None:
    assert root_fields(compile_path(expression).parsed) == roots
