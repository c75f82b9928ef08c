"""The YAML config: pydantic models of the core sections, and the loader (YAML, .env, ``${VAR}``).

Plugins declare their own sections under ``plugins:`` (``gateway_register_config``); backends are
validated with the ``Config`` of their ``type``. Every problem is reported as a ``ConfigError`` that
names the file, the key path (``backends[1].base_url``) and what is wrong.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from gateway.backend import BackendConfig
from gateway.config_problems import did_you_mean, line_of, node_lines, validation_problems
from gateway.log import secret_values
from gateway.model_table import ModelIndex, ModelRoute, RouterConfig, inherit
from gateway.router_defaults import check_table, inherit_all, router_defaults, routes_alone
from gateway.state.config import StateConfig
from gateway.state.responses import ResponsesConfig

if TYPE_CHECKING:
    from gateway.backend import Backend


class ConfigError(Exception):
    """A config problem: ``problems`` is a list of (key path, message); ``source`` the file; ``lines``
    the line of each key path in it (``read_config``), shown as ``file:12: path: message``."""

    def __init__(self, source: str, problems: list[tuple[str, str]], lines: Mapping[str, int] | None = None) -> None:
        self.source = source
        self.problems = problems
        self.lines = lines
        super().__init__("\n".join(self.describe(path, msg) for path, msg in problems))

    def describe(self, path: str, message: str) -> str:
        line = line_of(path, self.lines) if self.lines else None
        where = f"{self.source}:{line}" if line else self.source
        return f"{where}: {path}: {message}" if path else f"{where}: {message}"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = Field("0.0.0.0", description="address to listen on (env HOST and --host override it)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (env PORT and --port override it)")
    max_body_size: int = Field(32 * 1024 * 1024, gt=0, description="largest request body in bytes (larger: 413)")
    shutdown_timeout: float = Field(30.0, gt=0, description="seconds in-flight requests get to finish on SIGTERM")
    header_timeout: float = Field(30.0, gt=0, description="seconds a request's headers may take to arrive (408)")
    body_timeout: float = Field(30.0, gt=0, description="seconds allowed between two reads of a request body (408)")
    write_timeout: float = Field(
        60.0, gt=0, description="seconds a client may leave a write of the response unaccepted (then it is cut)"
    )
    watch_config: float = Field(
        0.0, ge=0, description="seconds between checks of the config file; it is reloaded when it changes (0: off)"
    )


class LoggingConfig(_Section):
    format: Literal["auto", "json", "console"] = Field("auto", description="auto: console on a TTY, else JSON")
    level: Literal["debug", "info", "warning", "error"] = "info"


class PluginsConfig(BaseModel):
    model_config = ConfigDict(extra="allow")

    enabled: list[str] = Field(default_factory=list, description="module paths of extra plugins to load")
    disabled: list[str] = Field(default_factory=list, description="names of plugins not to load")


class GatewayConfig(_Section):
    server: ServerConfig = Field(default_factory=ServerConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    plugins: PluginsConfig = Field(default_factory=PluginsConfig)
    backends: list[BackendConfig] = Field(default_factory=list)
    router: RouterConfig = Field(default_factory=RouterConfig, description="what every entry of models inherits")
    models: list[ModelRoute] = Field(default_factory=list)
    default_model: str | None = Field(None, description="model that answers requests for the model `default`")
    require_model: bool = Field(True, description="false: a request that names no model gets default_model")
    info: dict[str, Any] = Field(default_factory=dict, description="extra fields shown on /info (never secrets)")
    state: StateConfig = Field(default_factory=StateConfig, description="where shared state lives (gateway.state)")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig, description="stored /v1/responses")

    source: str = Field("<config>", exclude=True)
    plugin_sections: dict[str, BaseModel] = Field(default_factory=dict, exclude=True)
    _index: ModelIndex | None = PrivateAttr(None)
    _secrets: frozenset[str] | None = PrivateAttr(None)

    @property
    def secrets(self) -> frozenset[str]:
        """Every secret value of the config (``SecretStr`` fields: upstream keys, the gateway's own
        keys), for masking where they turn up as plain text (logged bodies)."""
        if self._secrets is None:
            self._secrets = frozenset(s for s in secret_values([*self.backends, *self.plugin_sections.values()]) if s)
        return self._secrets

    def plugin_config(self, section: str) -> Any:
        """The validated config of a plugin section registered with ``gateway_register_config``."""
        return self.plugin_sections[section]

    @property
    def model_index(self) -> ModelIndex:
        """The ``models`` table indexed by name, alias and pattern (built once, on first use)."""
        if self._index is None:
            self._index = ModelIndex(self.models)
        return self._index

    def find_route(self, model: str) -> ModelRoute | None:
        """The route of ``model``: an exact name or alias, else the first pattern that matches it."""
        return self.model_index.find(model)


# Loading ---------------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_config(path: str | os.PathLike[str], lines: dict[str, int] | None = None) -> dict[str, Any]:
    """Read a YAML config file (not yet interpolated); fill ``lines`` with the line of each key path."""
    source = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read config file: {exc.strerror or exc}")]) from None
    loader = _UniqueKeyLoader(text)  # a SafeLoader subclass
    found: dict[str, int] = {}
    duplicates: list[tuple[str, str]] = []
    try:
        node = loader.get_single_node()
        if node is not None:
            node_lines(node, "", found, duplicates)
        if duplicates:
            raise ConfigError(source, duplicates, found)  # every one, each on its line
        raw = loader.construct_document(node) if node is not None else None
    except _DuplicateKey as exc:
        raise ConfigError(source, [(exc.path, f"line {exc.line}: duplicate key {exc.key!r}")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [("", f"invalid YAML: {where}{getattr(exc, 'problem', None) or exc}")]) from None
    finally:
        loader.dispose()
    if raw is None:
        raise ConfigError(source, [("", "the config file is empty (write at least `backends:` and `models:`)")])
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a mapping of sections")])
    if lines is not None:
        lines.update(found)
    if "model_list" in raw:
        raise ConfigError(
            source,
            [
                (
                    "model_list",
                    "this is LiteLLM's key: declare upstreams under `backends:` and routes under `models:`"
                    " (README, 'Coming from LiteLLM')",
                )
            ],
            lines,
        )
    return raw


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: str, line: int) -> None:
        self.key, self.line, self.path = key, line, ""


class _UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise _DuplicateKey(str(key), key_node.start_mark.line + 1)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def environment(config_dir: Path | None = None) -> dict[str, str]:
    """The variables ``${VAR}`` sees: the process environment, over ``./.env``, over
    ``<config dir>/.env``. Nothing is written to ``os.environ``."""
    files = [config_dir / ".env"] if config_dir is not None else []
    files.append(Path.cwd() / ".env")
    env: dict[str, str] = {}
    for env_file in dict.fromkeys(files):
        env.update(dotenv_file(env_file))
    env.update(os.environ)
    return env


def dotenv_file(path: Path) -> dict[str, str]:
    """The variables a ``.env`` file sets (none when there is no such file)."""
    if not path.is_file():
        return {}
    return {key: value for key, value in dotenv_values(path).items() if value is not None}


_LITELLM_ENV = "os.environ/"


def interpolate(
    value: Any, source: str, env: Mapping[str, str], path: str = "", unset: list[tuple[str, str]] | None = None
) -> Any:
    """Replace ``${VAR}``, ``${VAR:-default}`` and LiteLLM's ``os.environ/VAR`` (a whole value) from
    ``env`` in every string of a parsed YAML tree. Every unset variable is named: appended to
    ``unset`` when given (its value reads ""), else raised together in one ConfigError."""
    missing: list[tuple[str, str]] = [] if unset is None else unset
    out = _interpolate(value, env, path, missing)
    if missing and unset is None:
        raise ConfigError(source, missing)
    return out


def _interpolate(value: Any, env: Mapping[str, str], path: str, missing: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):
        if value.startswith(_LITELLM_ENV) and _VAR_NAME.fullmatch(value[len(_LITELLM_ENV) :]):
            value = f"${{{value[len(_LITELLM_ENV) :]}}}"
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            missing.append((path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)"))
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def validate_config(
    raw: Mapping[str, Any],
    *,
    source: str,
    sections: Mapping[str, type[BaseModel]],
    backend_types: Mapping[str, type[Backend]],
) -> GatewayConfig:
    """Validate an interpolated config tree against the core models, the plugin sections and the
    backend types; raise ``ConfigError`` listing every problem."""
    raw = dict(raw)
    raw_backends = raw.pop("backends", None) or []
    problems: list[tuple[str, str]] = []
    config: GatewayConfig | None = None
    if "defaults" in raw and "router" not in raw:  # the other name for it: one name only
        raw.pop("defaults")
        problems.append(("defaults", "write what every model inherits under `router:` (README, 'Router defaults')"))
    router, defaults = router_defaults(raw.pop("router", None), problems)
    own_fallbacks = inherit_all(raw, defaults)
    inherited = bool(defaults.get("fallbacks"))
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, model=GatewayConfig))  # go on: backends and sections are reported too

    backends = _validate_backends(raw_backends, backend_types, problems)
    try:
        plugins = config.plugins if config else PluginsConfig.model_validate(raw.get("plugins") or {})
    except ValidationError:
        plugins = PluginsConfig()  # already reported above
    plugin_sections = _validate_sections(plugins, sections, problems)
    # a backend that failed validation is still declared: no false "no backend named" for it
    declared = {b.name for b in backends} | {
        e["name"] for e in raw_backends if isinstance(e, dict) and isinstance(e.get("name"), str)
    }
    if config is None:  # the table's own problems too, in the same run
        check_table(routes_alone(raw.get("models")), own_fallbacks, inherited, declared, problems)
        raise ConfigError(source, problems)
    config.source = source
    config.router = router
    config.backends = backends
    config.plugin_sections = plugin_sections

    if not config.models:
        config.models = _implicit_routes(backends, defaults)
    if raw.get("models") or inherited:
        check_table(config.models, own_fallbacks, inherited, declared, problems)
    if config.default_model and config.find_route(config.default_model) is None:
        problems.append(("default_model", f"no entry in models serves {config.default_model!r}"))
    if problems:
        raise ConfigError(source, problems)
    return config


def _validate_backends(
    raw_backends: Any, backend_types: Mapping[str, type[Backend]], problems: list[tuple[str, str]]
) -> list[BackendConfig]:
    if not isinstance(raw_backends, list):
        problems.append(("backends", "must be a list of backends"))
        return []
    backends: list[BackendConfig] = []
    indexed: list[tuple[int, BackendConfig]] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_backends):
        where = f"backends[{i}]"
        if not isinstance(entry, dict):
            problems.append((where, "must be a mapping with at least `name` and `type`"))
            continue
        kind = entry.get("type")
        if not isinstance(kind, str) or kind not in backend_types:
            known = ", ".join(sorted(backend_types)) or "none"
            problems.append(
                (
                    f"{where}.type",
                    f"unknown backend type {kind!r} (known: {known})" if kind else f"missing (known: {known})",
                )
            )
            continue
        try:
            backend = backend_types[kind].Config.model_validate(entry)
        except ValidationError as exc:
            problems.extend(validation_problems(exc, ("backends", i), backend_types[kind].Config))
            continue
        if backend.name in seen:
            problems.append((f"{where}.name", f"duplicate backend name {backend.name!r}"))
        seen.add(backend.name)
        backends.append(backend)
        indexed.append((i, backend))
    declared = seen | {e["name"] for e in raw_backends if isinstance(e, dict) and isinstance(e.get("name"), str)}
    for i, backend in indexed:  # a backend that calls another (replay's target) names a configured one
        for key, name in backend.backend_references().items():
            known = ", ".join(sorted(declared - {backend.name})) or "none"
            problem = f"{name!r} is this backend itself" if name == backend.name else f"no backend named {name!r}"
            if name == backend.name or name not in declared:
                problems.append((f"backends[{i}].{key}", f"{problem} (configured: {known})"))
    return backends


def _validate_sections(
    plugins: PluginsConfig, sections: Mapping[str, type[BaseModel]], problems: list[tuple[str, str]]
) -> dict[str, BaseModel]:
    given = dict(plugins.model_extra or {})
    validated: dict[str, BaseModel] = {}
    for section, model in sections.items():
        try:
            validated[section] = model.model_validate(given.pop(section, None) or {})
        except ValidationError as exc:
            problems.extend(validation_problems(exc, ("plugins", section), model))
    for section in given:
        problems.append(
            (
                f"plugins.{section}",
                "no loaded plugin declares this section (is the plugin disabled or not installed?)"
                + did_you_mean(section, sections),
            )
        )
    return validated


def _implicit_routes(backends: list[BackendConfig], defaults: Mapping[str, Any]) -> list[ModelRoute]:
    """Without a ``models`` table, each backend serves the models it declares, or every name (`*`)."""
    entries = [{"name": m, "backend": b.name} for b in backends for m in b.models]
    entries += [{"name": "*", "backend": b.name} for b in backends if not b.models]
    return [ModelRoute.model_validate(inherit(entry, defaults)) for entry in entries]
