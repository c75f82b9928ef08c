"""structlog set-up: JSON lines or console output, and the processor that redacts secrets."""

from __future__ import annotations

import functools
import logging
import re
import sys
import time
from collections.abc import Iterator
from typing import Any

import orjson
import structlog
from pydantic import BaseModel, SecretStr

from gateway.log_output import LineBuffer

#: A key names a secret when it ends in one of these words (``X-Goog-Api-Key``, ``access_token``,
#: ``client_secret``, ``Authorization``), but not ``prompt_tokens``.
_SECRET_KEY = re.compile(
    r"(?i)(?:^|[_.-])(?:api[_-]?key|key|token|secret|password|passwd|authorization|auth|cookie|credentials?)$"
)
#: A credential in a text: a bearer token (not a placeholder such as ``YOUR_KEY`` in a hint), an
#: ``sk-`` key, a ``token``/``basic`` header value, a URL's secret-named query parameter (``?key=``,
#: ``&access_token=``) or the password in its user info.
_SECRET_VALUE = re.compile(
    r"(?i)\b(bearer\s*)(?!(?-i:YOUR_[A-Z_]*)\b)[\w.~+/=-]{8,}|\bsk-[\w-]{6,}|^(token\s+|basic\s+)\S+$"
    r"|([?&](?:[\w.-]*[_.-])?(?:api[_-]?key|key|token|secret|password|passwd|signature|sig|auth)=)[^&#\s\"']+"
    r"|(://[^/\s:@]+:)[^/\s@]+(?=@)"
)
REDACTED = "[REDACTED]"


def redact(value: Any) -> Any:
    """``value`` with credentials masked: the values of secret-named keys of mappings (not a setting
    such as ``forward_client_key: true``, nor an unset one), bearer/``sk-`` strings."""
    if isinstance(value, str):
        return _SECRET_VALUE.sub(_mask, value) if _may_hold_secret(value) else value
    if isinstance(value, dict):
        return {k: REDACTED if is_secret_key(str(k)) and masks(v) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    return value


def masks(value: Any) -> bool:
    """Whether the value of a secret-named key is masked: not ``true``/``false`` or unset (``null``)."""
    return value is not None and not isinstance(value, bool)


def secret_values(value: Any) -> Iterator[str]:
    """The values of the ``SecretStr`` fields in ``value`` (pydantic models, lists and dicts of them)."""
    if isinstance(value, SecretStr):
        yield value.get_secret_value()
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secret_values(getattr(value, name, None))
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from secret_values(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from secret_values(item)


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """Whether a field or header named ``key`` holds a credential."""
    return _SECRET_KEY.search(key) is not None


def _may_hold_secret(value: str) -> bool:
    """A cheap test that lets most strings skip the regex."""
    lowered = value.lower()
    return (
        "bearer" in lowered
        or "sk-" in lowered
        or lowered.startswith(("token", "basic"))
        or ("=" in value and ("?" in value or "&" in value))
        or ("@" in value and "://" in value)
    )


#: A key of a JSON object in orjson's output (no whitespace), as written (escapes and all).
_JSON_KEY = re.compile(r'[{,]"([^"\\]*(?:\\.[^"\\]*)*)":')


#: How a key naming a secret ends in JSON text, lowered (``_SECRET_KEY``; ASCII text only: the
#: regex's case-insensitive match knows letters ``lower()`` does not fold).
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "authorization", "cookie", "credential")
_SECRET_KEY_ENDS = (*(f'{word}":' for word in _SECRET_WORDS), 'credentials":', '\\n":')


def json_needs_redaction(text: str) -> bool:
    """Whether ``redact`` could change the value that ``text`` (orjson's output) encodes: False only
    when no string in it can hold a credential (``_may_hold_secret``, over the whole text) and no key
    names a secret. Looser than ``redact`` (true for some values it leaves as they are); a few passes
    over the text, Python work per key, not per value."""
    lowered = text.lower()
    if (
        "bearer" in lowered
        or "sk-" in lowered
        or '"token' in lowered  # a string that starts with it
        or '"basic' in lowered
        or ("=" in text and ("?" in text or "&" in text))
        or ("@" in text and "://" in text)
    ):
        return True
    if text.isascii() and not any(end in lowered for end in _SECRET_KEY_ENDS):
        return False  # no key ends in a secret's name (an escaped newline may end one: looked at)
    # Each key ends a piece, after its opening quote: a ``":`` inside a string is ``\\":``, and a
    # quote inside a key leaves the end of it, which names a secret if the key does.
    keys = {piece[piece.rfind('"') + 1 :] for piece in text.split('":')[:-1]}
    if any("\\" in key for key in keys):  # escapes: the keys exactly, decoded
        keys = {orjson.loads(f'"{key}"') for key in _JSON_KEY.findall(text)}
        return any(is_secret_key(key) for key in keys)
    if keys <= _PLAIN_KEYS:
        return False
    for key in keys - _PLAIN_KEYS:
        if is_secret_key(key):
            return True
        if len(_PLAIN_KEYS) < _PLAIN_KEYS_MAX:
            _PLAIN_KEYS.add(key)
    return False


def _mask(match: re.Match[str]) -> str:
    return (match.group(1) or match.group(2) or match.group(3) or match.group(4) or "") + REDACTED


#: Fields the gateway fills itself with values that cannot hold a secret: not scanned.
_TRUSTED_FIELDS = frozenset({"level", "timestamp", "method", "status", "stream"})

#: Field names known not to name a secret (``is_secret_key``), up to ``_PLAIN_KEYS_MAX`` of them.
_PLAIN_KEYS: set[str] = set()
_PLAIN_KEYS_MAX = 4096
#: Short strings seen to hold nothing to mask (a path, a model or backend name: the same ones on most
#: lines), up to ``_CLEAN_MAX`` of them (then it starts again): not scanned again. Never a string
#: that held a secret.
_CLEAN: set[str] = set()
_CLEAN_MAX, _CLEAN_LENGTH = 4096, 256
#: Values of these types are written as they are: nothing in them to mask.
_PLAIN_TYPES = frozenset({int, float, bool, type(None)})


def redact_text(value: str) -> str:
    """``redact`` of a string, remembering short strings that need nothing (``_CLEAN``)."""
    if value in _CLEAN:
        return value
    if _may_hold_secret(value):
        return _SECRET_VALUE.sub(_mask, value)
    if len(value) <= _CLEAN_LENGTH:
        if len(_CLEAN) >= _CLEAN_MAX:  # unique values (ids) filled it: start again
            _CLEAN.clear()
        _CLEAN.add(value)
    return value


def redact_processor(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask secret-named fields (whatever their value, but ``true``/``false``
    and unset) and credentials in any field's value (strings, and the strings and secret-named keys of
    mappings and lists). Numbers, booleans and null pass as they are; field names and short strings
    already seen to be plain are not tested again."""
    if not event_dict.keys() <= _PLAIN_KEYS:
        for key, value in event_dict.items():
            if not is_secret_key(key):
                if len(_PLAIN_KEYS) < _PLAIN_KEYS_MAX:
                    _PLAIN_KEYS.add(key)
            elif masks(value):
                event_dict[key] = REDACTED
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if value not in _CLEAN and key not in _TRUSTED_FIELDS:
                clean = redact_text(value)
                if clean is not value:
                    event_dict[key] = clean
        elif kind not in _PLAIN_TYPES:
            if isinstance(value, (dict, list, tuple)):
                event_dict[key] = redact(value)
            elif isinstance(value, str) and key not in _TRUSTED_FIELDS:  # a str subclass
                event_dict[key] = redact(value)
    return event_dict


def render_json(_logger: Any, _method: str, event_dict: dict[str, Any]) -> bytes:
    """structlog renderer: one JSON line (orjson; unknown types as their repr)."""
    return orjson.dumps(event_dict, default=repr)


#: ``.123Z``: the end of a timestamp, by milliseconds.
_MILLISECONDS = tuple(f".{ms:03d}Z" for ms in range(1000))


class _Timestamp:
    """structlog processor: ``timestamp`` in ISO 8601 UTC with milliseconds, the date part
    formatted once per second rather than once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._prefix + _MILLISECONDS[int((now - second) * 1000)]

    def __call__(self, _logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict["timestamp"] = self.now()
        return event_dict


class CurrentLogger:
    """``structlog.get_logger(name)``, bound once per structlog configuration instead of once per
    call: as cheap as a cached logger, yet a later ``structlog.configure`` (``setup_logging``, a
    test's ``capture_logs``) takes effect at once."""

    __slots__ = ("_bound", "_key", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._key: tuple[Any, ...] = ()
        self._bound: Any = None

    def __getattr__(self, method: str) -> Any:
        config = structlog.get_config()
        key = (id(config["processors"]), config["wrapper_class"], config["logger_factory"], config["context_class"])
        if key != self._key:
            self._bound, self._key = structlog.get_logger(self._name).bind(), key
        return getattr(self._bound, method)


class _JsonLines:
    """Where ``setup_logging``'s JSON lines go, for ``write_event``: its level and output, and its
    structlog configuration, to tell whether logging is still configured that way."""

    def __init__(self, config: dict[str, Any], timestamp: _Timestamp, level: int, output: LineBuffer) -> None:
        self.timestamp, self.level, self.output = timestamp, level, output
        self.processors = list(config["processors"])  # a copy: structlog.testing edits the list in place
        self.wrapper_class, self.logger_factory = config["wrapper_class"], config["logger_factory"]

    def current(self) -> bool:
        config = structlog.get_config()
        return (
            config["logger_factory"] is self.logger_factory
            and config["wrapper_class"] is self.wrapper_class
            and config["processors"] == self.processors
        )


_json_lines: _JsonLines | None = None


def write_event(logger: Any, level: str, event: str, fields: dict[str, Any]) -> None:
    """``logger.<level>(event, **fields)``: when logging is ``setup_logging``'s JSON lines, the same
    line (bound context, level, timestamp, redaction) built and written directly, one ``orjson.dumps``
    and one write, without structlog's generic pipeline per call (the access line takes this way);
    through ``logger`` when logging is configured otherwise, or ``fields`` hold ``exc_info``.
    ``fields`` becomes the line: pass a dict of your own."""
    lines = _json_lines
    if lines is None or "exc_info" in fields or not lines.current():
        getattr(logger, level)(event, **fields)
        return
    if _LEVELS[level] < lines.level:
        return
    fields["event"] = event
    _merge_context(fields)
    fields["level"] = level
    fields["timestamp"] = lines.timestamp.now()
    redact_processor(None, level, fields)
    lines.output.write_line(orjson.dumps(fields, default=repr, option=orjson.OPT_APPEND_NEWLINE))


#: structlog's context-local variables (``bind_contextvars``), by their prefixed names.
_CONTEXT_VARS: dict[str, Any] | None = getattr(structlog.contextvars, "_CONTEXT_VARS", None)
_PREFIX = len(structlog.contextvars.STRUCTLOG_KEY_PREFIX)


def _merge_context(line: dict[str, Any]) -> None:
    """``structlog.contextvars.merge_contextvars``: the bound context (the request id) added to
    ``line``. One bound value is read from its variable, without copying the whole context; with more,
    structlog's own merge, which orders them as the context does."""
    if _CONTEXT_VARS is not None:
        found = None
        try:
            for name, var in _CONTEXT_VARS.items():
                value = var.get()
                if value is not Ellipsis:
                    if found is not None:
                        break
                    found = (name, value)
            else:
                if found is not None:
                    line.setdefault(found[0][_PREFIX:], found[1])
                return
        except RuntimeError:  # another thread bound a new name meanwhile
            pass
    structlog.contextvars.merge_contextvars(None, "", line)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def setup_logging(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Configure structlog process-wide: ``json`` lines, ``console``, or ``auto`` (console on a TTY)."""
    stream = stream or sys.stdout
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    timestamp = _Timestamp()
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        timestamp,
        structlog.processors.format_exc_info,  # tracebacks become text before redaction sees them
        redact_processor,
    ]
    if console:
        # fields in the order logged; colours only on a terminal (not in a file `format: console` writes)
        processors.append(structlog.dev.ConsoleRenderer(sort_keys=False, colors=stream.isatty()))
        factory: Any = structlog.PrintLoggerFactory(stream)
    else:
        processors.append(render_json)
        output = LineBuffer(getattr(stream, "buffer", stream))
        factory = structlog.BytesLoggerFactory(output)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=factory,
        cache_logger_on_first_use=False,  # a later setup_logging (tests, reloads) must take effect everywhere
    )
    global _json_lines
    _json_lines = None
    if not console:
        _json_lines = _JsonLines(structlog.get_config(), timestamp, getattr(logging, level.upper()), output)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


class _RedactingFormatter(logging.Formatter):
    """For the standard library's log lines (aiohttp's own): the same redaction as ours."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))
