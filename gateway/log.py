"""structlog set-up: JSON lines or console output, and the processor that redacts secrets."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import orjson
import structlog

SECRET_KEYS = frozenset(
    {"authorization", "proxy-authorization", "api_key", "api-key", "x-api-key", "key", "token", "access_token",
     "password", "secret", "cookie", "set-cookie"}
)
_SECRET_VALUE = re.compile(r"(?i)\b(bearer\s*)[\w.~+/=-]{8,}|\bsk-[\w-]{6,}|^(token\s+|basic\s+)\S+$")
REDACTED = "[REDACTED]"


def redact(value: Any) -> Any:
    """``value`` with credentials masked: secret-named keys of mappings, bearer/``sk-`` strings."""
    if isinstance(value, str):
        return _SECRET_VALUE.sub(_mask, value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or "") + REDACTED


def redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: redact every field of a log event."""
    for key, value in event_dict.items():
        if key.lower() in SECRET_KEYS:
            event_dict[key] = REDACTED
        elif isinstance(value, (str, dict, list, tuple)):
            event_dict[key] = redact(value)
    return event_dict


def setup_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog process-wide: ``json`` lines, ``console``, or ``auto`` (console on a TTY)."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_processor,
    ]
    if console:
        processors.append(structlog.dev.ConsoleRenderer())
        factory: Any = structlog.PrintLoggerFactory(stream)
    else:
        processors += [structlog.processors.format_exc_info, structlog.processors.JSONRenderer(serializer=orjson.dumps)]
        factory = structlog.BytesLoggerFactory(getattr(stream, "buffer", stream))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
