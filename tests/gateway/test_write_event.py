"""gateway.log.write_event: the access line's direct way out renders what structlog would."""

from __future__ import annotations

import io
import json

import structlog
from structlog.testing import capture_logs

from gateway.log import CurrentLogger, setup_logging, write_event

log = CurrentLogger("gateway")
FIELDS = {"method": "POST", "path": "/v1/chat/completions", "status": 200, "duration_ms": 1.5, "stream": False}


def lines(buffer: io.BytesIO) -> list[dict]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_the_line_is_the_one_structlog_writes() -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    fields = {**FIELDS, "path": "/v1/sk-abcdefghijkl", "model": "gpt-4o", "tags": {"api_key": "x", "n": 1}}
    with structlog.contextvars.bound_contextvars(request_id="r-1"):
        log.info("request", **fields)
        write_event(log, "info", "request", dict(fields))
    via_structlog, direct = lines(buffer)
    assert list(direct) == list(via_structlog)  # same fields in the same order
    del via_structlog["timestamp"], direct["timestamp"]
    assert direct == via_structlog
    assert direct["path"] == "/v1/[REDACTED]" and direct["tags"] == {"api_key": "[REDACTED]", "n": 1}
    assert direct["request_id"] == "r-1" and direct["level"] == "info" and direct["event"] == "request"


def test_the_configured_level_applies() -> None:
    buffer = io.BytesIO()
    setup_logging("json", "warning", stream=buffer)
    write_event(log, "info", "request", dict(FIELDS))
    write_event(log, "error", "request", dict(FIELDS, status=502))
    assert [line["status"] for line in lines(buffer)] == [502]


def test_logging_configured_otherwise_gets_the_event_through_structlog() -> None:
    setup_logging("json", "info", stream=io.BytesIO())
    with capture_logs() as captured:  # reconfigures structlog
        write_event(log, "info", "request", dict(FIELDS))
    assert captured == [{**FIELDS, "event": "request", "log_level": "info"}]
    out = io.StringIO()
    setup_logging("console", "info", stream=out)
    write_event(log, "info", "request", dict(FIELDS))
    assert "request" in out.getvalue() and "/v1/chat/completions" in out.getvalue()


def test_exc_info_takes_structlog_s_way_for_the_traceback() -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    try:
        raise ValueError("boom")
    except ValueError:
        write_event(log, "error", "failed", {"exc_info": True})
    (line,) = lines(buffer)
    assert "ValueError: boom" in line["exception"]


def test_another_logger_factory_gets_the_event_through_structlog() -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    returned = []
    structlog.configure(logger_factory=lambda *_: type("L", (), {"info": lambda _, m: returned.append(m)})())
    write_event(log, "info", "request", dict(FIELDS))
    assert buffer.getvalue() == b"" and json.loads(returned[0])["event"] == "request"


def test_a_secret_named_field_logged_once_as_a_setting_is_still_masked_later() -> None:
    """``api_key=True`` (a setting, not masked) must not make ``api_key`` a plain name for later lines."""
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    log.info("setting", api_key=True)
    log.info("leak", api_key="plain-looking-key-value")
    write_event(log, "info", "request", {**FIELDS, "api_key": "plain-looking-key-value"})
    assert [line["api_key"] for line in lines(buffer)] == [True, "[REDACTED]", "[REDACTED]"]
    assert b"plain-looking-key-value" not in buffer.getvalue()


def test_the_same_credential_is_masked_on_every_line() -> None:
    """Strings seen to be plain are remembered; one that held a credential never is."""
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    for _ in range(3):
        write_event(log, "info", "request", {**FIELDS, "path": "/v1/models/sk-abcdefghijkl"})
        log.info("request", path="/v1/models/sk-abcdefghijkl")
    assert [line["path"] for line in lines(buffer)] == ["/v1/models/[REDACTED]"] * 6


def test_every_bound_value_is_merged_and_redacted_as_structlog_does() -> None:
    buffer = io.BytesIO()
    setup_logging("json", "info", stream=buffer)
    with structlog.contextvars.bound_contextvars(request_id="r-2", client_request_id="Bearer abcdefghijklmnop"):
        log.info("request", **FIELDS)
        write_event(log, "info", "request", dict(FIELDS))
    with structlog.contextvars.bound_contextvars(client_request_id="c-1"):  # one bound value, not the first name
        log.info("request", **FIELDS)
        write_event(log, "info", "request", dict(FIELDS))
    first, direct_first, second, direct_second = lines(buffer)
    for via_structlog, direct in ((first, direct_first), (second, direct_second)):
        assert list(direct) == list(via_structlog)
        del via_structlog["timestamp"], direct["timestamp"]
        assert direct == via_structlog
    assert direct_first["client_request_id"] == "Bearer [REDACTED]" and direct_first["request_id"] == "r-2"
    assert direct_second["client_request_id"] == "c-1" and "request_id" not in direct_second
