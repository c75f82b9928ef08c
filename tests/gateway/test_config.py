"""The YAML config: loading, ``.env`` files, ``${VAR}`` interpolation, and every validation error
naming the file, the key path and the problem (without echoing secrets)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, SecretStr

from gateway import Backend, BackendConfig, hookimpl
from gateway.config import ConfigError, interpolate, read_config
from gateway.loading import load

# Variables these tests set, directly or through .env files.
VARS = (
    "GW_TEST_REPLY",
    "GW_TEST_EMPTY",
    "GW_TEST_UNSET",
    "GW_TEST_ORIGIN",
    "GW_TEST_NESTED",
    "GW_TEST_FROM_DOTENV",
    "GW_TEST_FROM_CWD",
    "GW_TEST_BOTH",
    "GW_TEST_KEY",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No test variable is set before a test; the loader's ``.env`` values are removed after it."""
    for name in VARS:
        monkeypatch.delenv(name, raising=False)
    before = set(os.environ)
    yield
    for name in set(os.environ) - before:
        del os.environ[name]


def write(directory: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def errors_of(exc_info: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return str(exc_info.value).splitlines()


MOCK = """
backends:
  - {name: mock, type: mock, models: [m1]}
models:
  - {name: m1, backend: mock}
"""


# A backend type and a plugin section with secret-looking fields --------------------------------


class SecretBackend(Backend):
    type_name = "secretive"

    class Config(BackendConfig):
        api_key: SecretStr
        base_url: str = "http://localhost"
        retries: int = 0

    async def chat(self, ctx: Any) -> AsyncIterator[dict[str, Any]]:  # pragma: no cover - never called
        yield {}


class VaultSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = ""
    auth_header: str = ""
    access_token: str = ""
    client_secret: str = ""
    region: str = "eu"
    size: int = 1


class SecretPlugin:
    @hookimpl
    def gateway_register_backends(self, register: Any) -> None:
        register("secretive", SecretBackend)

    @hookimpl
    def gateway_register_config(self, register: Any) -> None:
        register("vault", VaultSection)


# Reading files ---------------------------------------------------------------------------------


def test_reads_a_yaml_file(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK)
    loaded = load(path)
    assert loaded.config.source == str(path)
    assert [b.name for b in loaded.config.backends] == ["mock"]
    assert [(r.name, r.backend) for r in loaded.config.models] == [("m1", "mock")]
    assert [b.name for b in loaded.backends] == ["mock"]


def test_the_shipped_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ALLOW_ORIGINS", raising=False)
    config = load(Path(__file__).parents[2] / "config" / "gateway.yaml").config
    assert config.default_model == "mock-gpt-model"
    assert config.plugin_config("cors").allow_origins == ["*"]


def test_an_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the config file is empty"):
        load(write(tmp_path, ""))


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    message = str(exc_info.value)
    assert message.startswith(f"{path}: ")
    assert "cannot read config file" in message
    assert "No such file" in message


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\nbackends: [\n  {name: x\n")
    with pytest.raises(ConfigError) as exc_info:
        read_config(path)
    message = str(exc_info.value)
    assert message.startswith(f"{path}: invalid YAML: line ")
    assert "\n" not in message


def test_invalid_yaml_line_number_is_the_faulty_line(tmp_path: Path) -> None:
    path = write(tmp_path, "server:\n  port: 8000\n  host: [a\nbackends: x: y\n")
    with pytest.raises(ConfigError) as exc_info:
        read_config(path)
    assert "line 4" in str(exc_info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(path)


# ${VAR} and ${VAR:-default} ----------------------------------------------------------------------


def test_var_set_is_substituted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_REPLY", "hello from env")
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_REPLY}"}
    """,
    )
    assert load(path).config.backends[0].reply == "hello from env"


def test_var_inside_a_longer_string_and_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_REPLY", "X")
    raw = {"a": "pre-${GW_TEST_REPLY}-mid-${GW_TEST_REPLY}-post", "b": "${GW_TEST_UNSET:-d}/${GW_TEST_REPLY}"}
    assert interpolate(raw, "s", os.environ) == {"a": "pre-X-mid-X-post", "b": "d/X"}


@pytest.mark.parametrize(
    ("env", "expected"),
    [(None, "fallback"), ("", "fallback"), ("given", "given")],
    ids=["unset", "empty", "set"],
)
def test_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: str | None, expected: str) -> None:
    if env is not None:
        monkeypatch.setenv("GW_TEST_REPLY", env)
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_REPLY:-fallback}"}
    """,
    )
    assert load(path).config.backends[0].reply == expected


def test_empty_default(monkeypatch: pytest.MonkeyPatch) -> None:
    assert interpolate({"a": "[${GW_TEST_UNSET:-}]"}, "s", os.environ) == {"a": "[]"}


def test_var_set_to_empty_without_default_is_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_EMPTY", "")
    assert interpolate({"a": "[${GW_TEST_EMPTY}]"}, "s", os.environ) == {"a": "[]"}


def test_vars_nested_in_lists_and_mappings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_ORIGIN", "http://a.example")
    monkeypatch.setenv("GW_TEST_NESTED", "deep")
    path = write(
        tmp_path,
        """
        backends:
          - name: mock
            type: mock
            models: ["${GW_TEST_NESTED}-model", "${GW_TEST_UNSET:-other}-model"]
        models:
          - {name: "${GW_TEST_NESTED}-model", backend: mock}
          - {name: "other-model", backend: mock, model: "${GW_TEST_NESTED}-model"}
        plugins:
          cors:
            allow_origins: ["${GW_TEST_ORIGIN}", "${GW_TEST_UNSET:-http://b.example}"]
        info:
          nested: {list: [{value: "${GW_TEST_NESTED}"}], number: 3}
    """,
    )
    config = load(path).config
    assert config.backends[0].models == ["deep-model", "other-model"]
    assert [(r.name, r.model) for r in config.models] == [("deep-model", None), ("other-model", "deep-model")]
    assert config.plugin_config("cors").allow_origins == ["http://a.example", "http://b.example"]
    assert config.info == {"nested": {"list": [{"value": "deep"}], "number": 3}}


def test_non_strings_are_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"a": 1, "b": [True, None, 2.5], "c": {"d": "no vars here $HOME {x}"}}
    assert interpolate(raw, "s", os.environ) == raw


def test_missing_var_names_the_key_path_and_the_variable(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_UNSET}"}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    message = str(exc_info.value)
    assert message.startswith(f"{path}:3: backends[0].reply: ")
    assert "GW_TEST_UNSET" in message
    assert "not set" in message


def test_missing_var_in_a_nested_list(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        plugins:
          cors:
            allow_origins: ["http://ok", "${GW_TEST_UNSET}"]
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert str(exc_info.value).startswith(f"{path}:4: plugins.cors.allow_origins[1]: ")
    assert "GW_TEST_UNSET" in str(exc_info.value)


def test_missing_var_in_a_mapping_config() -> None:
    with pytest.raises(ConfigError) as exc_info:
        load({"backends": [{"name": "mock", "type": "mock", "reply": "${GW_TEST_UNSET}"}]})
    assert str(exc_info.value).startswith("<config>: backends[0].reply: ")


# .env files ------------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A config directory and a separate working directory (the cwd for the test)."""
    config_dir, cwd = tmp_path / "conf", tmp_path / "cwd"
    config_dir.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return config_dir, cwd


def test_dotenv_beside_the_config_file(dirs: tuple[Path, Path]) -> None:
    config_dir, _ = dirs
    (config_dir / ".env").write_text("GW_TEST_FROM_DOTENV=from beside\n")
    path = write(
        config_dir,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_FROM_DOTENV}"}
    """,
    )
    assert load(path).config.backends[0].reply == "from beside"


def test_dotenv_in_the_cwd(dirs: tuple[Path, Path]) -> None:
    config_dir, cwd = dirs
    (cwd / ".env").write_text("GW_TEST_FROM_CWD='from cwd'\n")
    path = write(
        config_dir,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_FROM_CWD}"}
    """,
    )
    assert load(path).config.backends[0].reply == "from cwd"


def test_both_dotenv_files_are_read(dirs: tuple[Path, Path]) -> None:
    config_dir, cwd = dirs
    (cwd / ".env").write_text("GW_TEST_FROM_CWD=c\n")
    (config_dir / ".env").write_text("GW_TEST_FROM_DOTENV=d\n")
    path = write(
        config_dir,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_FROM_CWD}+${GW_TEST_FROM_DOTENV}"}
    """,
    )
    assert load(path).config.backends[0].reply == "c+d"


def test_process_environment_wins_over_dotenv(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config_dir, cwd = dirs
    (cwd / ".env").write_text("GW_TEST_BOTH=from cwd dotenv\n")
    (config_dir / ".env").write_text("GW_TEST_BOTH=from config dotenv\n")
    monkeypatch.setenv("GW_TEST_BOTH", "from the process")
    path = write(
        config_dir,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_BOTH}"}
    """,
    )
    assert load(path).config.backends[0].reply == "from the process"
    assert os.environ["GW_TEST_BOTH"] == "from the process"


def test_dotenv_value_beats_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("GW_TEST_FROM_DOTENV=dotenv\n")
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_FROM_DOTENV:-default}"}
    """,
    )
    assert load(path).config.backends[0].reply == "dotenv"


# Validation errors -----------------------------------------------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "bogus_section: 1\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert errors_of(exc_info) == [f"{path}:6: bogus_section: unknown key"]


def test_unknown_key_in_a_core_section(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "server: {port: 1, prot: 2}\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert errors_of(exc_info) == [f"{path}:6: server.prot: unknown key (did you mean 'port'?)"]


def test_unknown_key_inside_a_backend(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, bogus: 1}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert errors_of(exc_info) == [f"{path}:3: backends[0].bogus: unknown key"]


def test_backend_without_a_type(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: a, type: mock}
          - {name: b}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:4: backends[1].type: ")
    assert "missing" in line and "mock" in line


def test_backend_with_an_unknown_type_lists_known_types(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: a, type: mock}
          - {name: b, type: warp_drive}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path, plugins=[SecretPlugin()])
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:4: backends[1].type: ")
    assert "warp_drive" in line
    known = line.partition("(known: ")[2].rstrip(")").split(", ")
    assert {"mock", "openai_compat", "secretive"} <= set(known) and known == sorted(known)


def test_backend_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "backends: [mock]\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    assert errors_of(exc_info)[0].startswith(f"{path}:1: backends[0]: ")


def test_duplicate_backend_names(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: same, type: mock}
          - {name: same, type: mock}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:4: backends[1].name: ")
    assert "duplicate" in line and "'same'" in line


def test_model_pointing_to_an_unknown_backend(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock}
        models:
          - {name: m1, backend: nowhere}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:5: models[0].backend: ")
    assert "nowhere" in line and "mock" in line


def test_default_model_nothing_serves(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "default_model: gpt-99\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:6: default_model: ")
    assert "gpt-99" in line


def test_default_model_served_by_a_pattern(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock}
        models:
          - {name: "mock-*", backend: mock}
        default_model: mock-gpt-model
    """,
    )
    assert load(path).config.default_model == "mock-gpt-model"


def test_unknown_plugin_section(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "plugins:\n  nope: {a: 1}\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:7: plugins.nope: ")


def test_bad_value_in_a_plugin_section(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "plugins:\n  cors: {max_age: -3}\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:7: plugins.cors.max_age: ")
    assert "-3" in line


def test_every_problem_is_reported_one_per_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: a, type: mock, bogus: 1}
          - {name: b, type: nope}
        models:
          - {name: m, backend: zzz}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    lines = errors_of(exc_info)
    paths = [line.split(": ")[1] for line in lines]
    assert paths == ["backends[0].bogus", "backends[1].type", "models[0].backend"]
    assert [line.split(": ")[0] for line in lines] == [f"{path}:3", f"{path}:4", f"{path}:6"]  # file:line
    assert exc_info.value.source == str(path)
    assert [p for p, _ in exc_info.value.problems] == paths


# Values in messages, and secrets never --------------------------------------------------------


def test_a_bad_value_is_shown(tmp_path: Path) -> None:
    path = write(tmp_path, MOCK + "server: {port: eighty}\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path)
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:6: server.port: ")
    assert "'eighty'" in line


def test_a_bad_value_in_a_backend_is_shown(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: s, type: secretive, api_key: fine, retries: lots}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path, plugins=[SecretPlugin()])
    [line] = errors_of(exc_info)
    assert line.startswith(f"{path}:3: backends[0].retries: ")
    assert "'lots'" in line


def test_secret_backend_value_is_not_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_TEST_KEY", "31415926535")
    path = write(
        tmp_path,
        """
        backends:
          - {name: s, type: secretive, api_key: [1], retries: 0}
          - {name: t, type: secretive, api_key: 27182818284}
          - {name: u, type: secretive, api_key: "${GW_TEST_KEY}", base_url: 16180339887}
    """,
    )
    with pytest.raises(ConfigError) as exc_info:
        load(path, plugins=[SecretPlugin()])
    message = str(exc_info.value)
    assert f"{path}:4: backends[1].api_key: " in message
    assert "27182818284" not in message
    # a non-secret field of the same backend still shows its value
    assert "backends[2].base_url" in message and "16180339887" in message


@pytest.mark.parametrize("field", ["password", "auth_header", "access_token", "client_secret"])
def test_secret_plugin_value_is_not_shown(tmp_path: Path, field: str) -> None:
    path = write(tmp_path, f"plugins:\n  vault:\n    {field}: 98765432123\n    size: big\n")
    with pytest.raises(ConfigError) as exc_info:
        load(path, plugins=[SecretPlugin()])
    message = str(exc_info.value)
    assert f"{path}:3: plugins.vault.{field}: " in message
    assert "98765432123" not in message
    assert "plugins.vault.size" in message and "'big'" in message


# Implicit routes -------------------------------------------------------------------------------


def test_implicit_routes_from_declared_models(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: one, type: mock, models: [alpha, beta]}
          - {name: two, type: mock, models: [gamma]}
        default_model: gamma
    """,
    )
    config = load(path).config
    assert [(r.name, r.backend) for r in config.models] == [("alpha", "one"), ("beta", "one"), ("gamma", "two")]
    assert config.find_route("beta").backend == "one"
    assert config.find_route("gamma").backend == "two"
    assert config.find_route("delta") is None


def test_implicit_route_for_a_backend_without_models_is_everything(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: one, type: mock, models: [alpha]}
          - {name: any, type: mock, models: []}
    """,
    )
    config = load(path).config
    assert [(r.name, r.backend) for r in config.models] == [("alpha", "one"), ("*", "any")]
    assert config.find_route("alpha").backend == "one"
    assert config.find_route("whatever").backend == "any"


async def test_implicit_routes_serve_requests(gateway: Any) -> None:
    client = await gateway(
        {
            "backends": [
                {"name": "one", "type": "mock", "models": ["alpha"], "reply": "from one"},
                {"name": "two", "type": "mock", "models": ["beta"], "reply": "from two"},
            ]
        }
    )
    for model, reply in (("alpha", "from one"), ("beta", "from two")):
        resp = await client.post(
            "/v1/chat/completions", json={"model": model, "messages": [{"role": "user", "content": "hi"}]}
        )
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["choices"][0]["message"]["content"] == reply


def test_loading_never_writes_to_the_process_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text("GW_TEST_FROM_DOTENV=from the file\n")
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: mock, reply: "${GW_TEST_FROM_DOTENV}"}
    """,
    )
    before = dict(os.environ)
    assert load(path).config.backends[0].reply == "from the file"
    assert dict(os.environ) == before


def test_a_backend_type_that_is_not_a_string_is_a_clear_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        backends:
          - {name: mock, type: [1]}
    """,
    )
    with pytest.raises(ConfigError) as info:
        load(path)
    assert "backends[0].type: unknown backend type [1]" in str(info.value)
