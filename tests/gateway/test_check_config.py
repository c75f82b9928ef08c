"""``gateway check-config`` and ``gateway plugins`` as an operator meets them (issue 18): every problem
in one run, "did you mean", LiteLLM habits (``os.environ/NAME``, ``model_list``), duplicate keys."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from openai import OpenAI

from gateway.testing import ServerThread, make_app
from tests.gateway.test_cli import cli
from tests.upstreams.openai import OpenAIUpstream, Reply

THREE_PROBLEMS = """\
server:
  hots: 0.0.0.0
backends:
  - {name: mock, type: mokc}
  - {name: up, type: openai_compat, base_url: "http://127.0.0.1:9/v1", api_key: "${GW_TEST_NOT_SET_1}"}
models:
  - {name: mock-gpt-model, backend: mock}
plugins:
  cors: {allow_origin: ["*"], max_age: "${GW_TEST_NOT_SET_2}"}
"""


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


def test_every_problem_is_reported_in_one_run(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_PROBLEMS)
    result = cli("check-config", "--config", path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()[1:]
    assert lines == [
        f"{path}:5: backends[1].api_key: environment variable GW_TEST_NOT_SET_1 is not set"
        " (write ${GW_TEST_NOT_SET_1:-default} for a default)",
        f"{path}:9: plugins.cors.max_age: environment variable GW_TEST_NOT_SET_2 is not set"
        " (write ${GW_TEST_NOT_SET_2:-default} for a default)",
        f"{path}:2: server.hots: unknown key (did you mean 'host'?)",
        f"{path}:4: backends[0].type: unknown backend type 'mokc'"
        " (known: anthropic, http_template, mock, openai_compat, replay, sourcegraph)",
        f"{path}:9: plugins.cors.allow_origin: unknown key (did you mean 'allow_origins'?)",
    ]  # and no false "models[0].backend: no backend named 'mock'"


LINES = """\
server:
  port: 8000
backends:
  - name: mock
    type: mock
    timeout: -1
models:
  - {name: mock-gpt-model, backend: mock}
  - name: other
    backend: nowhere
router:
  retry:
    atempts: 2
plugins:
  auth_api_keys:
    keys:
      - {name: a}
"""


def test_each_problem_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, LINES)
    result = cli("check-config", path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()[1:]
    assert lines[0] == f"{path}:13: router.retry.atempts: unknown key (did you mean 'attempts'?)"
    assert lines[1].startswith(f"{path}:6: backends[0].timeout: Input should be greater than 0")
    assert lines[2].startswith(f"{path}:17: plugins.auth_api_keys.keys[0]: Value error, give exactly one of")
    assert lines[3].startswith(f"{path}:10: models[1].backend: no backend named 'nowhere'")
    assert len(lines) == 4


def test_a_core_problem_does_not_hide_the_models_tables(tmp_path: Path) -> None:
    text = "server: {hots: x}\nbackends: [{name: mock, type: mock}]\nmodels:\n  - {name: a, backend: nowhere}\n"
    result = cli("check-config", write(tmp_path, text))
    assert result.returncode == 2
    path = str(tmp_path / "gateway.yaml")
    assert result.stderr.splitlines()[1:] == [
        f"{path}:1: server.hots: unknown key (did you mean 'host'?)",
        f"{path}:4: models[0].backend: no backend named 'nowhere' (configured: mock)",
    ]


def test_positional_form_and_singular_counts() -> None:
    result = cli("check-config", "config/gateway.yaml")
    assert result.returncode == 0 and "OK (1 backend, 1 model, " in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server:\n  port: 8000\n  port: 9000\n", "gateway.yaml:3: server.port: duplicate key 'port'"),
        ("", "the config file is empty"),
        ("model_list:\n  - model_name: gpt-4o\n", "model_list: this is LiteLLM's key"),
    ],
)
def test_mistakes_that_used_to_pass(tmp_path: Path, text: str, message: str) -> None:
    result = cli("check-config", "--config", write(tmp_path, text))
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_every_duplicate_key_is_named_on_its_line(tmp_path: Path) -> None:
    text = "server:\n  port: 8000\n  port: 9000\nbackends:\n  - {name: mock, type: mock, name: again}\n"
    result = cli("check-config", write(tmp_path, text))
    path = str(tmp_path / "gateway.yaml")
    assert result.returncode == 2
    assert result.stderr.splitlines()[1:] == [
        f"{path}:3: server.port: duplicate key 'port' (given twice in one mapping)",
        f"{path}:5: backends[0].name: duplicate key 'name' (given twice in one mapping)",
    ]


def test_model_list_points_to_the_readme_section(tmp_path: Path) -> None:
    result = cli("check-config", write(tmp_path, "model_list: []\n"))
    assert "`backends:`" in result.stderr and "`models:`" in result.stderr
    assert "Coming from LiteLLM" in result.stderr
    assert "## Coming from LiteLLM" in (Path(__file__).parents[2] / "README.md").read_text()


def test_plugins_lists_without_the_variables_set(tmp_path: Path) -> None:
    result = cli("plugins", "--config", write(tmp_path, THREE_PROBLEMS.replace("allow_origin:", "allow_origins:")))
    assert result.returncode == 0, result.stderr
    assert "cors: gateway_register_config, gateway_setup_app [config: plugins.cors]" in result.stdout.splitlines()


def test_plugins_shows_which_are_enabled_and_which_disabled(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [{name: mock, type: mock}]\nplugins: {disabled: [metrics, cors]}\n")
    result = cli("plugins", "--config", path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[-2:] == [
        "metrics: disabled (plugins.disabled)",
        "cors: disabled (plugins.disabled) [config: plugins.cors]",
    ]
    assert "request_logging: gateway_process_response, gateway_register_config, gateway_request_finished," in (
        " ".join(lines)
    )
    plugins = {p["name"]: p for p in json.loads(cli("plugins", "--json", "--config", path).stdout)}
    assert (plugins["cors"]["enabled"], plugins["cors"]["sections"], plugins["cors"]["hooks"]) == (False, ["cors"], [])
    assert plugins["routing"]["enabled"] and plugins["auth_api_keys"]["sections"] == ["auth_api_keys"]


def test_litellm_os_environ_reaches_the_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = OpenAIUpstream()
    fake.default = Reply(content="hi")
    monkeypatch.setenv("GW_TEST_UPSTREAM_KEY", "sk-from-the-environment")
    with ServerThread(fake.app) as upstream:
        config: Any = {
            "backends": [
                {
                    "name": "openai",
                    "type": "openai_compat",
                    "base_url": upstream.url + "/v1",
                    "api_key": "os.environ/GW_TEST_UPSTREAM_KEY",
                }
            ],
            "models": [{"name": "gpt-4o", "backend": "openai"}],
        }
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        with ServerThread(make_app(path)) as gateway:
            client = OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=10)
            reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
            assert reply.choices[0].message.content == "hi"
    assert fake.last.headers["Authorization"] == "Bearer sk-from-the-environment"


def test_the_readme_litellm_example_is_a_valid_config(tmp_path: Path) -> None:
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = readme.split("## Coming from LiteLLM", 1)[1]
    ours = section.split("```yaml", 2)[2].split("```", 1)[0]
    env = {"OPENAI_API_KEY": "sk-a", "ANTHROPIC_API_KEY": "sk-b"}
    result = cli("check-config", write(tmp_path, ours), **env)
    assert result.returncode == 0, result.stderr
