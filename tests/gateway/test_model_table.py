"""The ``models`` table: the short form and deployments, aliases, patterns, and every mistake named
with its key path."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import model_table
from gateway.config import ConfigError
from gateway.loading import load

BACKENDS = [{"name": "one", "type": "mock"}, {"name": "two", "type": "mock"}]


def table(*models: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"backends": BACKENDS, "models": list(models), **extra}


def problems(config: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(config)
    return [line.removeprefix("<config>: ") for line in str(info.value).splitlines()]


def test_the_short_form_is_one_deployment() -> None:
    config = load(table({"name": "m", "backend": "one", "model": "upstream-m"})).config
    [route] = config.models
    [target] = route.targets
    assert (target.backend, target.model, target.label, target.weight) == ("one", "upstream-m", "one", 1.0)
    assert not route.resilient and route.strategy == "weighted"


def test_deployments_with_names_weights_and_policies() -> None:
    config = load(
        table(
            {
                "name": "m",
                "aliases": ["m-latest", "m2"],
                "deployments": [
                    {"backend": "one", "model": "a", "name": "east", "weight": 3},
                    {"backend": "one", "model": "b", "name": "west", "weight": 0},
                    {"backend": "two"},
                ],
                "strategy": "least_in_flight",
                "retry": {"attempts": 3, "backoff": 0.01, "deadline": 5},
                "timeouts": {"first_byte": 2, "idle": 1, "total": 30},
                "circuit": {"failures": 2, "window": 10, "cooldown": 5},
                "hedge": {"delay": "p90"},
                "fallbacks": ["other"],
            },
            {"name": "other", "backend": "two"},
        )
    ).config
    route = config.find_route("m2")
    assert route is config.find_route("m") is config.find_route("m-latest")
    assert [t.label for t in route.targets] == ["east", "west", "two"]
    assert route.resilient and route.hedge.percentile == 90
    assert config.find_route("other").name == "other"


def test_names_and_aliases_win_over_patterns_and_the_first_entry_wins() -> None:
    config = load(
        table(
            {"name": "gpt-*", "backend": "one"},
            {"name": "gpt-4o", "backend": "two", "aliases": ["fast"]},
            {"name": "gpt-4o", "backend": "one"},
        )
    ).config
    assert config.find_route("gpt-4o").backend == "two"
    assert config.find_route("fast").backend == "two"
    assert config.find_route("gpt-3").backend == "one"
    assert config.find_route("claude") is None


def test_pattern_matches_are_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_table, "MATCHES_KEPT", 3)
    index = load(table({"name": "gpt-*", "backend": "one"}, {"name": "*-mini", "backend": "two"})).config.model_index
    assert index.find("gpt-4o").backend == "one" and index.find("o4-mini").backend == "two"
    assert index.find("claude") is None and index.find("claude") is None  # a miss is remembered too
    assert index.matched == {"gpt-4o": index.patterns[0], "o4-mini": index.patterns[1], "claude": None}
    assert index.find("gpt-mini").backend == "one"  # the first pattern in order wins, remembered or not
    assert index.matched == {"gpt-mini": index.patterns[0]}  # full: started again
    assert index.find("o4-mini").backend == "two"


@pytest.mark.parametrize(
    ("route", "expected"),
    [
        ({"name": "m"}, "models[0]: Value error, needs a `backend` or a list of `deployments`"),
        (
            {"name": "m", "backend": "one", "deployments": [{"backend": "two"}]},
            "models[0]: Value error, give either `backend` (one deployment) or `deployments`, not both",
        ),
        (
            {"name": "m", "model": "x", "deployments": [{"backend": "two"}]},
            "models[0]: Value error, `model` goes on each deployment when `deployments` is given",
        ),
        (
            {"name": "m", "deployments": [{"backend": "one"}, {"backend": "one", "model": "x"}]},
            "models[0]: Value error, two deployments have the same name",
        ),
        ({"name": "m", "backend": "three"}, "models[0].backend: no backend named 'three' (configured: one, two)"),
        (
            {"name": "m", "deployments": [{"backend": "one"}, {"backend": "nine"}]},
            "models[0].deployments[1].backend: no backend named 'nine'",
        ),
        ({"name": "m", "backend": "one", "aliases": ["m-*"]}, "models[0].aliases[0]: an alias is an exact name"),
        ({"name": "m", "backend": "one", "fallbacks": ["nope"]}, "models[0].fallbacks[0]: no entry in models serves"),
        ({"name": "m", "backend": "one", "fallbacks": ["m"]}, "models[0].fallbacks[0]: 'm' is this model itself"),
        ({"name": "m", "backend": "one", "strategy": "random"}, "models[0].strategy: Input should be"),
        ({"name": "m", "backend": "one", "retry": {"attempts": 0}}, "models[0].retry.attempts: Input should be"),
        ({"name": "m", "backend": "one", "retry": {"tries": 2}}, "models[0].retry.tries: unknown key"),
        ({"name": "m", "backend": "one", "timeouts": {"total": -1}}, "models[0].timeouts.total: Input should be"),
        ({"name": "m", "backend": "one", "hedge": {"delay": "fast"}}, "models[0].hedge.delay: Value error, must be"),
        ({"name": "m", "backend": "one", "circuit": {"failures": 0}}, "models[0].circuit.failures: Input should be"),
        ({"name": "m", "deployments": [{"backend": "one", "weight": -1}]}, "models[0].deployments[0].weight: Input"),
    ],
)
def test_mistakes_are_named_with_their_key_path(route: dict[str, Any], expected: str) -> None:
    assert any(line.startswith(expected) for line in problems(table(route))), problems(table(route))


def test_default_model_may_be_an_alias() -> None:
    config = load(table({"name": "m", "backend": "one", "aliases": ["default-m"]}, default_model="default-m")).config
    assert config.default_model == "default-m"


def test_watch_config_must_not_be_negative() -> None:
    assert problems({"server": {"watch_config": -1}})[0].startswith("server.watch_config: Input should be")


# Router defaults -------------------------------------------------------------------------------

ROUTER = {
    "retry": {"attempts": 3, "backoff": 0.01, "on_status": [429, 500, 502, 503]},
    "timeouts": {"first_byte": 5, "idle": 2},
    "circuit": {"failures": 2},
    "fallbacks": ["spare"],
}


def test_every_entry_inherits_the_router_section() -> None:
    config = load(
        table(
            {"name": "a", "backend": "one"},
            {"name": "b*", "backend": "two"},
            {"name": "spare", "backend": "two"},
            router=ROUTER,
        )
    ).config
    a, b, spare = config.models
    for route in (a, b, spare):
        assert (route.retry.attempts, route.retry.backoff, route.retry.on_status) == (3, 0.01, [429, 500, 502, 503])
        assert route.retry.max_backoff == 2.0  # the model's own default for what the router leaves out
        assert (route.timeouts.first_byte, route.timeouts.idle, route.timeouts.total) == (5, 2, None)
        assert route.circuit is not None and (route.circuit.failures, route.circuit.window) == (2, 30.0)
    assert a.fallbacks == b.fallbacks == ["spare"]
    assert spare.fallbacks == []  # not itself
    assert config.router.retry.attempts == 3  # type: ignore[union-attr]


def test_an_entry_overrides_key_by_key_and_replaces_fallbacks() -> None:
    own = {
        "name": "a",
        "backend": "one",
        "retry": {"attempts": 1},
        "timeouts": {"idle": 9},
        "circuit": None,
        "fallbacks": [],
    }
    config = load(table(own, {"name": "spare", "backend": "two"}, router=ROUTER)).config
    a = config.models[0]
    assert (a.retry.attempts, a.retry.backoff, a.retry.on_status) == (1, 0.01, [429, 500, 502, 503])
    assert (a.timeouts.first_byte, a.timeouts.idle) == (5, 9)
    assert a.circuit is None and a.fallbacks == [] and not a.resilient


def test_without_a_models_table_the_implicit_routes_inherit_too() -> None:
    config = load({"backends": [{"name": "one", "type": "mock"}], "router": {"retry": {"attempts": 2}}}).config
    assert config.models and all(route.retry.attempts == 2 for route in config.models)


@pytest.mark.parametrize(
    ("router", "expected"),
    [
        ({"retry": {"atempts": 2}}, "router.retry.atempts: unknown key (did you mean 'attempts'?)"),
        ({"retry": {"on_status": [200]}}, "router.retry.on_status: Value error, each status must be an HTTP error"),
        ({"hedge": {}}, "router.hedge: unknown key"),
        ({"fallbacks": ["nowhere"]}, "router.fallbacks[0]: no entry in models serves 'nowhere'"),
    ],
)
def test_router_mistakes_are_named_under_router(router: dict[str, Any], expected: str) -> None:
    found = problems(table({"name": "a", "backend": "one"}, {"name": "b", "backend": "one"}, router=router))
    assert len(found) == 1 and found[0].startswith(expected), found


def test_defaults_is_not_a_second_name_for_router() -> None:
    found = problems(table({"name": "a", "backend": "one"}, defaults={"retry": {"attempts": 2}}))
    assert found == ["defaults: write what every model inherits under `router:` (README, 'Router defaults')"]
