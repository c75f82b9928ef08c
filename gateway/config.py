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
from gateway.model_table import ModelIndex, ModelRoute, table_problems
from gateway.state.config import StateConfig

if TYPE_CHECKING:
    from gateway.backend import Backend


class ConfigError(Exception):
    """A config problem: ``problems`` is a list of (key path, message); ``source`` the file."""

    def __init__(self, source: str, problems: list[tuple[str, str]]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(
            "\n".join(f"{source}: {path}: {msg}" if path else f"{source}: {msg}" for path, msg in problems)
        )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerConfig(_Section):
    host: str = Field("0.0.0.0", description="address to listen on (env HOST and --host override it)")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (env PORT and --port override it)")
    max_body_size: int = Field(32 * 1024 * 1024, gt=0, description="largest request body in bytes (larger: 413)")
    shutdown_timeout: float = Field(30.0, gt=0, description="seconds in-flight requests get to finish on SIGTERM")
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
    models: list[ModelRoute] = Field(default_factory=list)
    default_model: str | None = Field(None, description="model that answers requests for the model `default`")
    require_model: bool = Field(True, description="false: a request that names no model gets default_model")
    info: dict[str, Any] = Field(default_factory=dict, description="extra fields shown on /info (never secrets)")
    state: StateConfig = Field(default_factory=StateConfig, description="where shared state lives (gateway.state)")

    source: str = Field("<config>", exclude=True)
    plugin_sections: dict[str, BaseModel] = Field(default_factory=dict, exclude=True)
    _index: ModelIndex | None = PrivateAttr(None)

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


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file (not yet interpolated)."""
    source = str(path)
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [("", f"cannot read config file: {exc.strerror or exc}")]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(source, [("", f"invalid YAML: {where}{getattr(exc, 'problem', None) or exc}")]) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(source, [("", "the top level must be a mapping of sections")])
    return raw


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


def interpolate(value: Any, source: str, env: Mapping[str, str], path: str = "") -> Any:
    """Replace ``${VAR}`` and ``${VAR:-default}`` from ``env`` in every string of a parsed YAML tree."""
    if isinstance(value, str):
        if "${" not in value:
            return value

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = env.get(name)
            if found is not None and (found or default is None):
                return found
            if default is not None:
                return default
            raise ConfigError(
                source, [(path, f"environment variable {name} is not set (write ${{{name}:-default}} for a default)")]
            )

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: interpolate(v, source, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, source, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def key_path(loc: tuple[Any, ...]) -> str:
    """``("backends", 1, "base_url")`` -> ``backends[1].base_url`` (also OpenAI's ``param`` notation)."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_problems(exc: ValidationError, prefix: tuple[Any, ...] = ()) -> list[tuple[str, str]]:
    problems = []
    for err in exc.errors(include_url=False):
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        if _shows_input(err):
            msg += f" (got {err['input']!r})"
        problems.append((key_path(prefix + tuple(err["loc"])), msg))
    return problems


_SECRET_WORDS = ("key", "token", "secret", "password", "auth")


def _shows_input(err: Any) -> bool:
    """Echo a bad value in the message unless it is a container or may be a secret."""
    if err["type"] in ("missing", "extra_forbidden") or isinstance(err.get("input"), (dict, list, type(None))):
        return False
    return not any(word in str(part).lower() for part in err["loc"] for word in _SECRET_WORDS)


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
    try:
        config = GatewayConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(source, validation_problems(exc)) from None
    config.source = source

    backends = _validate_backends(raw_backends, backend_types, problems)
    config.backends = backends
    config.plugin_sections = _validate_sections(config.plugins, sections, problems)

    if not config.models:
        config.models = _implicit_routes(backends)
    elif "models" in raw:
        problems.extend(table_problems(config.models, {b.name for b in backends}))
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
            problems.extend(validation_problems(exc, ("backends", i)))
            continue
        if backend.name in seen:
            problems.append((f"{where}.name", f"duplicate backend name {backend.name!r}"))
        seen.add(backend.name)
        backends.append(backend)
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
            problems.extend(validation_problems(exc, ("plugins", section)))
    for section in given:
        problems.append(
            (f"plugins.{section}", "no loaded plugin declares this section (is the plugin disabled or not installed?)")
        )
    return validated


def _implicit_routes(backends: list[BackendConfig]) -> list[ModelRoute]:
    """Without a ``models`` table, each backend serves the models it declares, or every name (`*`)."""
    routes = [ModelRoute(name=m, backend=b.name) for b in backends for m in b.models]
    routes += [ModelRoute(name="*", backend=b.name) for b in backends if not b.models]
    return routes
