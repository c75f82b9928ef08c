"""``gateway serve | check-config | plugins`` (``python -m gateway`` too)."""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import sys
from collections.abc import Sequence

import orjson
import structlog

from gateway import __version__
from gateway.app import RUNNER_OPTIONS, create_app
from gateway.config import ConfigError, GatewayConfig, environment
from gateway.generation import reload_on_sighup
from gateway.keys import lifecycle_key
from gateway.lifecycle import AIOHTTP_MARGIN
from gateway.loading import load, plugin_overview, resolve_config
from gateway.log import setup_logging
from gateway.serving.server import serve as serve_app
from gateway.serving.workers import supervise

DEFAULT_CONFIG = "config/gateway.yaml"
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle kept-alive connection stays open (web.run_app's default)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gateway", description="An OpenAI-compatible LLM gateway.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command")
    env = environment()  # the process environment over ./.env (which may set PORT, HOST, GATEWAY_CONFIG)
    default_config = env.get("GATEWAY_CONFIG", DEFAULT_CONFIG)

    serve = commands.add_parser("serve", help="serve the gateway (the default command)")
    serve.add_argument(
        "--config",
        default=default_config,
        help=f"config file (default: $GATEWAY_CONFIG, else {DEFAULT_CONFIG}, else the one shipped in the package)",
    )
    serve.add_argument("--host", help="address to listen on (overrides $HOST and the config)")
    serve.add_argument("--port", type=int, help="port to listen on (overrides $PORT and the config)")
    serve.add_argument(
        "--workers",
        type=int,
        default=int(env.get("WORKERS") or 1),
        help="processes sharing the port, one per core (default: $WORKERS or 1)",
    )

    check = commands.add_parser("check-config", help="validate a config file without serving")
    check.add_argument("path", nargs="?", help="config file (or --config)")
    check.add_argument(
        "--config", dest="config_option", help=f"config file (default: $GATEWAY_CONFIG or {DEFAULT_CONFIG})"
    )

    plugins = commands.add_parser(
        "plugins", help="list the plugins (enabled: the hooks each implements; disabled) and the section each owns"
    )
    plugins.add_argument("--config", default=default_config)
    plugins.add_argument("--json", action="store_true", help="print JSON")

    args = parser.parse_args(argv)
    for name in ("config", "config_option", "path"):  # a shipped file when the path names one not here
        if getattr(args, name, None):
            setattr(args, name, resolve_config(getattr(args, name)))
    try:
        if args.command == "check-config":
            return check_config(args.path or args.config_option or resolve_config(default_config))
        if args.command == "plugins":
            return list_plugins(args.config, args.json)
        if args.command is None:
            args = serve.parse_args([])
            args.config = resolve_config(args.config)
        return run(args.config, args.host, args.port, args.workers)
    except ConfigError as exc:
        print(f"error: invalid config\n{exc}", file=sys.stderr)
        return 2


def check_config(path: str) -> int:
    loaded = load(path)
    config = loaded.config
    counts = ", ".join(
        _count(n, word)
        for n, word in (
            (len(config.backends), "backend"),
            (len(config.models), "model"),
            (len(loaded.pm.get_plugins()), "plugin"),
        )
    )
    print(f"{path}: OK ({counts})")
    return 0


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def list_plugins(path: str, as_json: bool) -> int:
    plugins = plugin_overview(path)
    if as_json:
        print(orjson.dumps(plugins, option=orjson.OPT_INDENT_2).decode())
        return 0
    for plugin in plugins:
        sections = ", ".join(f"plugins.{s}" for s in plugin["sections"])  # type: ignore[attr-defined]
        owns = f" [config: {sections}]" if sections else ""
        what = ", ".join(plugin["hooks"]) if plugin["enabled"] else "disabled (plugins.disabled)"  # type: ignore[arg-type]
        print(f"{plugin['name']}: {what}{owns}")
    return 0


def _check_shared_state(config: GatewayConfig) -> None:
    """Several workers with the memory store would each count their own limits: refuse. A plugin
    section says what it keeps that processes must share with a ``shared_state() -> str | None``."""
    if config.state.store != "memory":
        return
    for section in config.plugin_sections.values():
        reason = getattr(section, "shared_state", None)
        if callable(reason) and (what := reason()):
            problem = (
                f"{what} would be counted by each worker on its own with state.store: memory; "
                "set state.store: redis (README: Running more than one instance) or run one worker"
            )
            raise ConfigError(config.source, [("--workers", problem)])


def run(path: str, host: str | None, port: int | None, workers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM; in-flight requests get ``server.shutdown_timeout`` to finish.
    SIGHUP reloads the config file (``gateway.generation``).
    With ``workers`` > 1, that many processes share the port (``gateway.serving.workers``)."""
    loaded = load(path)
    config = loaded.config
    setup_logging(config.logging.format, config.logging.level)
    env = environment()
    host = host or env.get("HOST") or config.server.host
    if port is None:
        port = _env_port(env.get("PORT"))
    if port is None:
        port = config.server.port
    if workers < 1 or (workers > 1 and port == 0):
        raise ConfigError("command line", [("--workers", "must be at least 1, and needs a fixed port when above 1")])
    if workers > 1:
        _check_shared_state(config)
    _raise_open_files_limit()
    taken = _port_taken(host, port, reuse_port=workers > 1)
    if taken:  # said before anything claims the gateway is starting
        print(f"error: cannot listen on {host}:{port}: {taken}", file=sys.stderr)
        return 1
    docs = {"docs": f"http://{_browsable(host)}:{port}/docs"} if loaded.pm.has_plugin("docs") else {}
    structlog.get_logger("gateway").info(
        "gateway starting",
        url=f"http://{host}:{port}",
        **docs,
        config=path,
        version=__version__,
        models=[route.name for route in config.models],
        workers=workers,
    )

    def serve() -> int:
        try:
            app = create_app(loaded)
            reload_on_sighup(app)
            app.on_cleanup.append(app[lifecycle_key].log_stopped)
            serve_app(
                app,
                host=host,
                port=port,
                loop=_new_loop(),
                shutdown_timeout=config.server.shutdown_timeout + AIOHTTP_MARGIN,  # the gateway ends requests first
                reuse_port=workers > 1 or None,
                keepalive_timeout=KEEPALIVE_TIMEOUT,
                **RUNNER_OPTIONS,
            )
        except OSError as exc:  # the address is in use, or not ours to bind
            print(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0

    return supervise(workers, serve) if workers > 1 else serve()


def _port_taken(host: str, port: int, reuse_port: bool) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not ours), else None; port 0 always can."""
    if port == 0:
        return None
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]
        with socket.create_server((host, port), family=family, reuse_port=reuse_port):
            return None
    except OSError as exc:
        return os.strerror(exc.errno) if exc.errno else str(exc)


def _browsable(host: str) -> str:
    """A host a browser on this machine can open: ``localhost`` for the every-address ones."""
    return "localhost" if host in ("0.0.0.0", "::", "") else host


def _raise_open_files_limit() -> None:
    """Each open stream holds two sockets (client and upstream): allow as many as the hard limit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else max(soft, 65536), hard))


def _env_port(value: str | None) -> int | None:
    """``$PORT`` as a port number, or None when unset."""
    if not value:
        return None
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise ConfigError("environment", [("PORT", f"must be a port number from 0 to 65535 (got {value!r})")])
    return int(value)


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
