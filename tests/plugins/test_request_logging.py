"""The ``request_logging`` plugin (one access line per request, after its last byte) and the log
set-up around it (``gateway.log``: JSON lines, levels, secret redaction)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog

from gateway import hookimpl
from gateway.context import RequestContext
from gateway.log import REDACTED, is_secret_key, redact, setup_logging
from gateway.testing import MOCK_MODEL, Finished, SeenFilters, mock_config

PROMPT = "count these five words"
CHAT = {"model": MOCK_MODEL, "messages": [{"role": "user", "content": PROMPT}]}
SECRET = "sk-secret-0123456789abcdef"
ACCESS_FIELDS = {
    "event",
    "level",
    "timestamp",
    "request_id",
    "method",
    "path",
    "endpoint",
    "status",
    "model",
    "backend",
    "stream",
    "duration_ms",
    "ttfb_ms",
    "prompt_tokens",
    "completion_tokens",
}


class Leaky:
    """A plugin that fails with the caller's credentials in the exception message."""

    @hookimpl
    def gateway_process_request(self, ctx: RequestContext) -> None:
        raise RuntimeError("upstream refused " + ctx.request.headers["Authorization"])


class JsonLog:
    def __init__(self, buffer: io.BytesIO) -> None:
        self.buffer = buffer

    @property
    def text(self) -> str:
        return self.buffer.getvalue().decode()

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.buffer.getvalue().splitlines()]

    def access(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["event"] == "request"]


@pytest.fixture
def configure() -> Callable[..., JsonLog]:
    """``log = configure(level="info")``: JSON logging into a buffer."""

    def setup(level: str = "info") -> JsonLog:
        buffer = io.BytesIO()
        setup_logging("json", level, stream=buffer)
        return JsonLog(buffer)

    return setup


@pytest.fixture
def log(configure: Callable[..., JsonLog]) -> JsonLog:
    return configure()


@pytest.fixture
def finished() -> Finished:
    return Finished()


def logging_config(**request_logging: Any) -> dict[str, Any]:
    return {**mock_config(), "plugins": {"request_logging": request_logging}}


# The access line --------------------------------------------------------------------------------


async def test_access_line_of_a_chat_completion(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[finished])
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    await response.read()
    await finished.wait(1)
    [line] = log.access()
    assert set(line) == ACCESS_FIELDS
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["level"] == "info"
    assert line["method"] == "POST"
    assert line["path"] == "/v1/chat/completions"
    assert line["endpoint"] == "chat.completions"
    assert line["status"] == 200
    assert line["model"] == MOCK_MODEL
    assert line["backend"] == "mock"
    assert line["stream"] is False
    assert line["prompt_tokens"] > 0
    assert line["completion_tokens"] == len(PROMPT.split())
    assert isinstance(line["duration_ms"], (int, float))
    assert 0 <= line["ttfb_ms"] <= line["duration_ms"] < 5000
    assert line["timestamp"].endswith("Z")


async def test_access_line_of_a_stream(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[finished])
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body, headers={"X-Request-ID": "client-chosen-id"})
    assert response.status == 200
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    await finished.wait(1)
    [line] = log.access()
    assert response.headers["X-Request-ID"] == "client-chosen-id" == line["client_request_id"]  # echoed, logged
    assert line["request_id"] == response.headers["X-Gateway-Request-ID"] != "client-chosen-id"  # the gateway's own
    assert line["stream"] is True
    assert line["status"] == 200
    assert line["backend"] == "mock"
    assert line["completion_tokens"] == len(PROMPT.split())
    assert line["prompt_tokens"] > 0
    assert 0 <= line["ttfb_ms"] <= line["duration_ms"]


async def test_time_to_first_byte_and_duration_reflect_the_backend(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    client = await gateway(mock_config(first_chunk_delay=0.05, chunk_delay=0.02), plugins=[finished])
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    await response.read()
    await finished.wait(1)
    [line] = log.access()
    assert line["ttfb_ms"] >= 45
    assert line["duration_ms"] >= line["ttfb_ms"] + 4 * 15  # the five words after the first chunk


async def test_one_line_per_request(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[finished])
    ids = []
    for path in ("/v1/models", f"/v1/models/{MOCK_MODEL}", "/health"):
        response = await client.get(path)
        assert response.status == 200
        ids.append(response.headers["X-Request-ID"])
    response = await client.post("/chat/completions", json={**CHAT, "model": "default"})
    ids.append(response.headers["X-Request-ID"])
    await finished.wait(4)
    lines = log.access()
    assert [line["request_id"] for line in lines] == ids
    assert len(set(ids)) == 4
    assert [line["path"] for line in lines] == [
        "/v1/models",
        f"/v1/models/{MOCK_MODEL}",
        "/health",
        "/chat/completions",
    ]
    assert [line["method"] for line in lines] == ["GET", "GET", "GET", "POST"]
    assert [line["status"] for line in lines] == [200] * 4
    assert "stream" not in lines[0]  # only chat completions say whether they streamed
    assert lines[1]["model"] == MOCK_MODEL
    assert lines[3]["model"] == MOCK_MODEL  # `default` resolved


async def test_unknown_model_is_logged_with_its_status(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[finished])
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "no-such-model"})
    assert response.status == 404
    await finished.wait(1)
    [line] = log.access()
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["status"] == 404
    assert line["level"] == "info"
    assert line["model"] == "no-such-model"
    assert "backend" not in line
    assert line["error"].startswith("ModelNotFoundError: ")


async def test_upstream_failure_is_logged_as_a_warning(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(mock_config(failure={"mode": "error", "status": 503}), plugins=[finished])
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 502
    await finished.wait(1)
    [line] = log.access()
    assert line["status"] == 502
    assert line["level"] == "warning"  # the upstream failed, not the gateway
    assert line["backend"] == "mock"
    assert line["error"].startswith("UpstreamError: ")


async def test_stream_broken_off_is_logged_with_its_error(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}), plugins=[finished])
    response = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status == 200
    assert b'"error"' in await response.read()
    await finished.wait(1)
    [line] = log.access()
    assert line["status"] == 200  # already sent when the stream broke
    assert line["stream"] is True
    assert "broke off" in line["error"]


async def test_skip_paths(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(logging_config(skip_paths=["/health"]), plugins=[finished])
    assert (await client.get("/health")).status == 200
    assert (await client.get("/health")).status == 200
    models = await client.get("/v1/models")
    await finished.wait(3)
    assert [(line["path"], line["request_id"]) for line in log.access()] == [
        ("/v1/models", models.headers["X-Request-ID"])
    ]


async def test_disabled_plugin_writes_no_access_line(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway({**mock_config(), "plugins": {"disabled": ["request_logging"]}}, plugins=[finished])
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})).status == 404
    await finished.wait(2)
    assert log.access() == []


async def test_level_warning_keeps_only_failures(
    gateway: Any, configure: Callable[..., JsonLog], finished: Finished
) -> None:
    log = configure("warning")
    client = await gateway(mock_config(failure={"mode": "error", "status": 500}), plugins=[finished])
    assert (await client.get("/v1/models")).status == 200
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 502
    await finished.wait(2)
    assert [(line["path"], line["status"], line["level"]) for line in log.access()] == [
        ("/v1/chat/completions", 502, "warning")
    ]


async def test_the_gateway_failing_itself_is_logged_as_an_error(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[Leaky(), finished])
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-x-12345678"})
    assert response.status == 500
    await finished.wait(1)
    [line] = log.access()
    assert (line["status"], line["level"]) == (500, "error")


async def test_the_console_access_line_starts_with_method_path_status_duration(
    gateway: Any, finished: Finished
) -> None:
    out = io.StringIO()
    setup_logging("console", "info", stream=out)
    client = await gateway(plugins=[finished])
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    await finished.wait(1)
    [line] = [line for line in out.getvalue().splitlines() if " request " in line]
    names = [part.split("=", 1)[0] for part in line.split("request", 1)[1].split() if "=" in part]
    assert names[:4] == ["method", "path", "status", "duration_ms"]
    assert names[4:] == [
        "endpoint",
        "model",
        "backend",
        "stream",
        "ttfb_ms",
        "prompt_tokens",
        "completion_tokens",
        "request_id",
    ]


async def test_our_own_hint_and_true_false_settings_are_not_masked(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    backend = {"name": "up", "type": "openai_compat", "base_url": "http://127.0.0.1:9/v1", "forward_client_key": True}
    keys = {"keys": [{"name": "a", "key": "sk-a-0123456789"}]}
    config = {"backends": [backend], "models": [{"name": "m", "backend": "up"}], "plugins": {"auth_api_keys": keys}}
    client = await gateway(config, plugins=[finished])
    response = await client.post("/v1/chat/completions", json={**CHAT, "model": "m"})
    assert response.status == 401
    message = (await response.json())["error"]["message"]
    await finished.wait(1)
    [line] = log.access()
    assert "Authorization: Bearer YOUR_KEY" in message and "Authorization: Bearer YOUR_KEY" in line["error"]
    info = await (await client.get("/info", headers={"Authorization": "Bearer sk-a-0123456789"})).json()
    [shown] = [b for b in info["backends"] if b["name"] == "up"]
    assert shown["forward_client_key"] is True
    structlog.get_logger("gateway").info("settings", forward_client_key=True, api_key="sk-a-0123456789")
    assert log.lines()[-1]["forward_client_key"] is True and log.lines()[-1]["api_key"] == REDACTED


def test_unknown_request_logging_key_is_a_config_error() -> None:
    from gateway.app import create_app
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"plugins\.request_logging\.skip_path"):
        create_app(logging_config(skip_path=["/health"]))


async def test_setup_logging_again_takes_effect(gateway: Any, finished: Finished) -> None:
    """Reconfiguring logging (as every test, or an embedding application, does) must redirect the
    gateway's log lines; structlog's cache_logger_on_first_use must not pin the first set-up."""
    client = await gateway(plugins=[finished])
    first = io.BytesIO()
    setup_logging("json", "info", stream=first)
    await client.get("/health")
    await finished.wait(1)
    assert b'"path":"/health"' in first.getvalue()

    structlog.reset_defaults()  # what tests/conftest.py does between tests
    second = io.BytesIO()
    setup_logging("json", "info", stream=second)
    await client.get("/v1/models")
    await finished.wait(2)
    assert b'"path":"/v1/models"' in second.getvalue()
    assert b"/v1/models" not in first.getvalue()


# Redaction --------------------------------------------------------------------------------------


def test_redact_strings() -> None:
    assert redact("Bearer sk-abc123456789") == f"Bearer {REDACTED}"
    assert redact("bearer abcdefghijklmnop") == f"bearer {REDACTED}"
    assert redact("beareryour_api_key_here") == f"bearer{REDACTED}"  # the seed's header, no space
    assert redact("the key sk-proj-abcdef123 leaked") == f"the key {REDACTED} leaked"
    assert redact("Basic dXNlcjpwYXNz") == f"Basic {REDACTED}"
    assert redact("token abcdef") == f"token {REDACTED}"
    assert redact("nothing to see here") == "nothing to see here"
    assert redact("ask-me anything") == "ask-me anything"  # not an sk- key


def test_redact_structures() -> None:
    value = {
        "Authorization": "anything at all",
        "headers": {"X-API-Key": "k-123", "Accept": "application/json", "Cookie": "session=1"},
        "api_key": 12345,
        "password": ["a", "b"],
        "items": ["Bearer abcdefghijkl", "plain", ("sk-abcdefgh",)],
        "count": 3,
    }
    assert redact(value) == {
        "Authorization": REDACTED,
        "headers": {"X-API-Key": REDACTED, "Accept": "application/json", "Cookie": REDACTED},
        "api_key": REDACTED,
        "password": REDACTED,
        "items": [f"Bearer {REDACTED}", "plain", [REDACTED]],
        "count": 3,
    }
    assert redact(42) == 42
    assert redact(None) is None


def test_secret_fields_are_redacted_in_json_output(log: JsonLog) -> None:
    logger = structlog.get_logger("gateway")
    logger.info(
        "calling upstream",
        authorization="Bearer sk-abc123456789",
        detail="retrying with Bearer sk-abc123456789 after a 401",
        headers={"Authorization": "Bearer sk-abc123456789", "Accept": "text/event-stream"},
        api_key="plain-looking-key-value",
    )
    assert "sk-abc123456789" not in log.text
    assert "plain-looking-key-value" not in log.text
    [line] = log.lines()
    assert line["event"] == "calling upstream"
    assert line["authorization"] == REDACTED
    assert line["detail"] == f"retrying with Bearer {REDACTED} after a 401"
    assert line["headers"] == {"Authorization": REDACTED, "Accept": "text/event-stream"}
    assert line["api_key"] == REDACTED


def test_credentials_in_the_message_itself_are_redacted(log: JsonLog) -> None:
    """A plugin may log an f-string (the event) that quotes an upstream's error with a key in it."""
    structlog.get_logger("gateway").warning("upstream rejected Bearer sk-abc123456789 with 401")
    assert "sk-abc123456789" not in log.text
    [line] = log.lines()
    assert line["event"] == f"upstream rejected Bearer {REDACTED} with 401"


def test_secret_named_fields_are_redacted_whatever_their_type(log: JsonLog) -> None:
    """As ``redact`` does: the value of a secret-named key goes, be it a string, mapping, list or number."""
    structlog.get_logger("gateway").info(
        "session", cookie={"session": "s3ss10n-value"}, password=["hunter2-hunter2"], secret=987654321
    )
    [line] = log.lines()
    assert "s3ss10n-value" not in log.text
    assert "hunter2-hunter2" not in log.text
    assert "987654321" not in log.text
    assert line["cookie"] == line["password"] == line["secret"] == REDACTED


def test_secret_fields_are_redacted_in_console_output() -> None:
    out = io.StringIO()
    setup_logging("console", "info", stream=out)
    structlog.get_logger("gateway").info(
        "calling upstream", authorization="Bearer sk-abc123456789", note="sk-abcdefgh1"
    )
    text = out.getvalue()
    assert "calling upstream" in text
    assert "sk-abc123456789" not in text
    assert "sk-abcdefgh1" not in text
    assert REDACTED in text


@pytest.fixture
def everything_logged(capfd: pytest.CaptureFixture[str]) -> Iterator[Callable[[], str]]:
    """All a test's output: stdout and stderr (the stdlib ``logging`` root goes to stderr)."""
    yield lambda: "".join(capfd.readouterr())


async def test_client_credentials_never_reach_the_log(
    gateway: Any, log: JsonLog, finished: Finished, everything_logged: Callable[[], str]
) -> None:
    headers = {"Authorization": f"Bearer {SECRET}", "X-Api-Key": SECRET}
    client = await gateway(plugins=[finished])
    assert (await client.post("/v1/chat/completions", json=CHAT, headers=headers)).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers)).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"}, headers=headers)).status == 404
    assert (await client.post("/v1/chat/completions", json={**CHAT, "model": SECRET}, headers=headers)).status == 404
    assert (await client.post("/v1/chat/completions", data=b"{oops", headers=headers)).status == 400
    assert (await client.get("/v1/nothing-here", headers=headers)).status == 404
    await finished.wait(6)
    assert len(log.access()) == 6
    assert SECRET not in log.text
    assert "0123456789abcdef" not in log.text
    assert SECRET not in everything_logged()


async def test_credentials_in_an_unexpected_error_never_reach_the_log(
    gateway: Any, log: JsonLog, finished: Finished, everything_logged: Callable[[], str]
) -> None:
    client = await gateway(plugins=[Leaky(), finished])
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status == 500
    assert SECRET not in await response.text()
    await finished.wait(1)
    lines = log.lines()
    assert [line["event"] for line in lines] == ["unexpected error", "request"]
    assert "RuntimeError: upstream refused Bearer" in lines[0]["exception"]  # the traceback is there
    assert lines[1]["status"] == 500
    assert SECRET not in log.text
    assert SECRET not in everything_logged()


async def test_credentials_in_an_unexpected_error_never_reach_the_console_log(
    gateway: Any, finished: Finished, everything_logged: Callable[[], str]
) -> None:
    out = io.StringIO()
    setup_logging("console", "info", stream=out)
    client = await gateway(plugins=[Leaky(), finished])
    response = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status == 500
    await finished.wait(1)
    text = out.getvalue()
    assert "unexpected error" in text
    assert "RuntimeError" in text
    assert SECRET not in text
    assert SECRET not in everything_logged()


@pytest.mark.parametrize(
    ("key", "secret"),
    [
        ("X-Goog-Api-Key", True),
        ("openai_api_key", True),
        ("access_token", True),
        ("client_secret", True),
        ("Authorization", True),
        ("proxy-authorization", True),
        ("Cookie", True),
        ("password", True),
        ("prompt_tokens", False),
        ("max_tokens", False),
        ("monkey", False),
        ("keyword", False),
        ("model", False),
    ],
)
def test_secret_keys_are_recognised_by_their_last_word(key: str, secret: bool) -> None:
    assert is_secret_key(key) is secret


def test_standard_library_log_lines_are_redacted(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("json", "info", stream=io.BytesIO())
    logging.getLogger("aiohttp.server").error("Error handling request with Bearer sk-abcdef1234567890")
    err = capsys.readouterr().err
    assert "Error handling request with Bearer [REDACTED]" in err
    assert "sk-abcdef" not in err


# Body logging (opt-in) ---------------------------------------------------------------------------

EMAIL = r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"


def bodies_config(config: dict[str, Any] | None = None, **bodies: Any) -> dict[str, Any]:
    config = config or mock_config()
    plugins = {**config.get("plugins", {}), "request_logging": {"bodies": {"enabled": True, **bodies}}}
    return {**config, "plugins": plugins}


async def test_bodies_are_off_by_default_and_streams_get_no_filter(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    seen = SeenFilters()
    client = await gateway(plugins=[finished, seen])
    assert (await client.post("/v1/chat/completions", json=CHAT)).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).status == 200
    await finished.wait(2)
    assert seen.seen == [[]]  # the stream stayed on the pass-through path
    assert all("request_body" not in line and "response_body" not in line for line in log.access())
    assert PROMPT not in log.text


async def test_bodies_of_a_chat_completion(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(bodies_config(), plugins=[finished])
    raw = b'{"messages": [{"role": "user", "content": "count these five words"}], "model": "mock-gpt-model", "x": 1}'
    response = await client.post("/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    sent = await response.json()
    await finished.wait(1)
    [line] = log.access()
    assert json.loads(line["request_body"]) == json.loads(raw)
    assert list(json.loads(line["request_body"])) == ["messages", "model", "x"]  # as the client sent it
    assert json.loads(line["response_body"]) == sent


async def test_the_assembled_stream_is_logged(gateway: Any, log: JsonLog, finished: Finished) -> None:
    seen = SeenFilters()
    client = await gateway(bodies_config(), plugins=[finished, seen])
    body = {**CHAT, "stream": True, "n": 2, "stream_options": {"include_usage": True}}
    response = await client.post("/v1/chat/completions", json=body)
    assert (await response.read()).endswith(b"data: [DONE]\n\n")
    await finished.wait(1)
    [line] = log.access()
    logged = json.loads(line["response_body"])
    assert logged["model"] == MOCK_MODEL and logged["id"].startswith("chatcmpl-")
    assert logged["choices"] == [
        {"index": 0, "content": PROMPT, "finish_reason": "stop"},
        {"index": 1, "content": PROMPT, "finish_reason": "stop"},
    ]
    assert logged["usage"]["completion_tokens"] == 2 * len(PROMPT.split())
    assert json.loads(line["request_body"])["stream"] is True
    assert seen.seen == [[]]  # read from its writes: the stream stayed on the pass-through path


async def test_streamed_tool_calls_are_logged(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(bodies_config(), plugins=[finished])
    tool = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
    body = {**CHAT, "stream": True, "tools": [tool], "tool_choice": "required"}
    await (await client.post("/v1/chat/completions", json=body)).read()
    await finished.wait(1)
    [choice] = json.loads(log.access()[0]["response_body"])["choices"]
    assert choice == {"index": 0, "content": "", "tool_calls": "get_time{}", "finish_reason": "tool_calls"}


async def test_bodies_are_truncated(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(bodies_config(max_chars=40), plugins=[finished])
    long_prompt = "word " * 200
    body = {**CHAT, "messages": [{"role": "user", "content": long_prompt}]}
    await client.post("/v1/chat/completions", json=body)
    await (await client.post("/v1/chat/completions", json={**body, "stream": True})).read()
    await finished.wait(2)
    for line in log.access():
        for field in ("request_body", "response_body"):
            head, _, rest = line[field].partition("... [")
            assert len(head) == 40, line[field]
            assert rest.endswith(" more characters]") and int(rest.split()[0]) > 200


async def test_secrets_and_patterns_are_redacted_from_logged_bodies(
    gateway: Any, log: JsonLog, finished: Finished, everything_logged: Callable[[], str]
) -> None:
    client = await gateway(bodies_config(redact=[EMAIL, r"\b\d{3}-\d{2}-\d{4}\b"]), plugins=[finished])
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": f"I am ann@corp.io, SSN 123-45-6789, key {SECRET}"}],
        "metadata": {"api_key": "plain-looking-value", "password": "hunter2-hunter2"},
    }
    await client.post("/v1/chat/completions", json=body)  # the mock echoes all of it back
    await (await client.post("/v1/chat/completions", json={**body, "stream": True})).read()
    await finished.wait(2)
    lines = log.access()
    assert len(lines) == 2
    for secret in ("ann@corp.io", "123-45-6789", SECRET, "0123456789abcdef", "plain-looking-value", "hunter2"):
        assert secret not in log.text
        assert secret not in everything_logged()
    request = json.loads(lines[0]["request_body"])
    assert request["messages"][0]["content"] == f"I am {REDACTED}, SSN {REDACTED}, key {REDACTED}"
    assert request["metadata"] == {"api_key": REDACTED, "password": REDACTED}
    assert json.loads(lines[1]["response_body"])["choices"][0]["content"].startswith(f"I am {REDACTED}, SSN")


async def test_a_body_that_is_not_json_is_logged_as_text(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(bodies_config(replacement="<email>", redact=[EMAIL]), plugins=[finished])
    response = await client.post("/v1/chat/completions", data=b"{oops ann@corp.io")
    assert response.status == 400
    await finished.wait(1)
    [line] = log.access()
    assert line["request_body"] == "{oops <email>"
    assert "response_body" not in line  # the error is the `error` field
    assert line["error"].startswith("InvalidRequestError")


async def test_other_responses_are_logged_and_bodiless_requests_have_no_request_body(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    client = await gateway(bodies_config(), plugins=[finished])
    models = await (await client.get("/v1/models")).json()
    await client.post("/v1/nothing-here", json={"a": 1})  # never read by the gateway: not logged
    await finished.wait(2)
    first, second = log.access()
    assert "request_body" not in first and json.loads(first["response_body"]) == models
    assert second["status"] == 404 and "request_body" not in second


async def test_redaction_is_absent_from_logs_and_from_what_the_backend_received(
    gateway: Any, log: JsonLog, finished: Finished, everything_logged: Callable[[], str]
) -> None:
    """transforms redacts what goes upstream and what comes back; body logging masks the raw request."""
    from gateway.testing import RecordingPlugin, recorded, recording_config

    config = {
        **recording_config(reply="write to ops@corp.io or call me"),
        "plugins": {
            "transforms": {"rules": [{"redact": [EMAIL], "response_filters": [EMAIL], "max_match_chars": 40}]},
            "request_logging": {"bodies": {"enabled": True, "redact": [EMAIL]}},
        },
    }
    client = await gateway(config, plugins=[RecordingPlugin(), finished])
    body = {"model": "recorded-model", "messages": [{"role": "user", "content": "I am ann@corp.io"}]}
    reply = await (await client.post("/v1/chat/completions", json=body)).json()
    stream = await (await client.post("/v1/chat/completions", json={**body, "stream": True})).read()
    await finished.wait(2)
    assert reply["choices"][0]["message"]["content"] == "write to [FILTERED] or call me"
    assert b"corp.io" not in stream
    calls = recorded(client.app)
    assert [c.body["messages"][0]["content"] for c in calls] == ["I am [REDACTED]"] * 2
    assert "corp.io" not in log.text and "corp.io" not in everything_logged()
    assert [json.loads(line["response_body"])["choices"][0].get("content") for line in log.access()] == [
        None,  # the non-streamed response is logged whole: its text is under message
        "write to [FILTERED] or call me",
    ]


def test_a_bad_body_redaction_pattern_is_a_config_error() -> None:
    from gateway.app import create_app
    from gateway.config import ConfigError

    with pytest.raises(ConfigError, match=r"plugins\.request_logging\.bodies\.redact: .*redact\[1\] is not a valid"):
        create_app(bodies_config(redact=["ok", "(bad"]))


def test_the_stream_collector_keeps_only_what_it_may_log() -> None:
    from gateway_plugins.request_logging import StreamCollector

    collector = StreamCollector(limit=10)
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    for _ in range(1000):
        piece = {**chunk, "choices": [{"index": 0, "delta": {"content": "word "}, "finish_reason": None}]}
        assert collector(piece) is piece  # passed on untouched
    assert collector(None) is None
    assert sum(len(t) for t in collector.choices[0]["text"]) == 15  # up to the limit, plus the piece that crossed it


async def test_a_retried_request_logs_its_attempts_and_the_deployment_that_served(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    config = {
        "backends": [
            {"name": "broken", "type": "mock", "failure": {"mode": "error", "status": 503}},
            {"name": "healthy", "type": "mock"},
        ],
        "models": [
            {
                "name": MOCK_MODEL,
                "strategy": "failover",
                "retry": {"attempts": 2, "backoff": 0},
                "deployments": [{"backend": "broken"}, {"backend": "healthy", "name": "second"}],
            },
            {"name": "direct", "backend": "healthy", "model": MOCK_MODEL},
        ],
    }
    client = await gateway(config, plugins=[finished])
    response = await client.post("/v1/chat/completions", json=CHAT)
    assert response.status == 200
    assert (response.headers["X-Gateway-Attempts"], response.headers["X-Gateway-Backend"]) == ("2", "second")
    once = await client.post("/v1/chat/completions", json={**CHAT, "model": "direct"})
    assert once.status == 200 and once.headers["X-Gateway-Attempts"] == "1"
    await finished.wait(2)
    retried, direct = log.access()
    assert (retried["attempts"], retried["backend"], retried["deployment"]) == (2, "healthy", "second")
    assert direct["backend"] == "healthy" and "attempts" not in direct and "deployment" not in direct


async def test_legacy_completions_say_whether_they_streamed(gateway: Any, log: JsonLog, finished: Finished) -> None:
    client = await gateway(plugins=[finished])
    for stream in (False, True):
        response = await client.post("/v1/completions", json={"model": MOCK_MODEL, "prompt": "hi", "stream": stream})
        assert response.status == 200
        await response.read()
    embedded = await client.post("/v1/embeddings", json={"model": MOCK_MODEL, "input": "hi"})
    assert embedded.status == 200
    await finished.wait(3)
    lines = log.access()
    assert [line.get("stream") for line in lines] == [False, True, None]  # embeddings never stream
    assert all("usage_estimated" not in line for line in lines)  # the mock backend reports its usage


async def test_a_body_nested_too_deep_to_render_still_gets_its_access_line_truncated(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    client = await gateway(bodies_config(max_chars=300), plugins=[finished])
    deep = b"[" * 255 + b"]" * 255
    body = b'{"api_key": "plain-looking-value", "model": "' + MOCK_MODEL.encode() + b'", "messages": ' + deep + b"}"
    response = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert response.status == 400
    await finished.wait(1)
    [line] = log.access()
    assert line["status"] == 400
    assert line["request_body"].startswith('{"api_key": "[REDACTED]", "model"')
    assert line["request_body"].endswith(" more characters]")
    assert "plain-looking-value" not in log.text and "observer hook failed" not in log.text


async def test_configured_gateway_keys_pasted_as_text_are_masked_in_logged_bodies(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    key = "gw-team-key-not-sk-shaped-42"  # looks like no credential: masked because the config holds it
    config = bodies_config()
    config["plugins"]["auth_api_keys"] = {"keys": [{"name": "team", "key": key}]}
    client = await gateway(config, plugins=[finished])
    body = {**CHAT, "messages": [{"role": "user", "content": f"my key is {key}, keep it"}]}
    response = await client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status == 200  # the mock echoes the key back: the response body is masked too
    await finished.wait(1)
    [line] = log.access()
    assert key not in log.text
    assert f"my key is {REDACTED}, keep it" in line["request_body"]
    assert f"my key is {REDACTED}, keep it" in line["response_body"]


async def test_metrics_scrapes_get_no_access_line_unless_configured(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    client = await gateway(plugins=[finished])
    assert (await client.get("/metrics")).status == 200
    assert (await client.get("/health")).status == 200
    await finished.wait(2)
    assert [line["path"] for line in log.access()] == ["/health"]
    client = await gateway(logging_config(skip_paths=[]), plugins=[finished])
    assert (await client.get("/metrics")).status == 200
    await finished.wait(3)
    assert [line["path"] for line in log.access()] == ["/health", "/metrics"]


#: Bodies whose logged text must be what walking them (``scrub``) gives: each key and value shape
#: the text-level test (``json_needs_redaction``) has to see through.
TRICKY_BODIES = [
    {"model": "m", "messages": [{"role": "user", "content": "plain words, nothing to hide"}]},
    {"model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 2}, "max_tokens": 5},
    {"metadata": {"api_key": "plain-looking-value"}},
    {"nested": [{"deeper": {"Authorization": 12345}}]},
    {'a"_key': "plain-looking-value"},  # a quote in the key: it still ends in _key
    {"api_key\n": "plain-looking-value"},  # a secret name before a newline (escaped as \n)
    {"tool": {"arguments": '{"api_key": "plain-looking-value"}'}},  # JSON text in a string: no key
    {"content": 'he said \\"x\\": fine'},
    {"content": "Bearer abcdefghijklmnop"},
    {"content": "token abcdef"},
    {"url": "https://api.example.com/v1?key=plain-looking-value&x=1"},
    {"url": "https://user:hunter2-hunter2@example.com/"},
    {"content": f"the key {SECRET} leaked"},
    {"content": "my configured key gw-key-1234 in the text"},
    {"api_key": True, "token": None, "password": False},
    {"content": "unicode é ü 字 and control \u0001 chars \t"},
    ["a list", {"secret": "x"}],
    {"API_KEY": "plain-looking-value", "x_credentials": {"user": "u"}, "Cookie": "plain-looking-value"},
    {"\u017fecret": "plain-looking-value"},  # a letter the regex folds and lower() does not
    {"x_\u212aey": "plain-looking-value"},
    "a text body with gw-key-1234 in it",
    42,
]


@pytest.mark.parametrize("body", TRICKY_BODIES)
def test_a_body_is_logged_as_walking_it_would_log_it(body: Any) -> None:
    from gateway_plugins.request_logging import BodyLoggingConfig

    bodies = BodyLoggingConfig(enabled=True, max_chars=100_000)
    secrets = frozenset({"gw-key-1234"})
    walked = bodies.scrub(body, secrets)
    expected = walked if isinstance(walked, str) else json.dumps(walked, ensure_ascii=False, separators=(",", ":"))
    assert bodies.render(body, secrets) == expected
    if body is not TRICKY_BODIES[6]:  # JSON text in a string is text: its "key" names nothing
        for secret in ("plain-looking-value", "hunter2-hunter2", SECRET, "gw-key-1234", "abcdefghijklmnop"):
            assert secret not in bodies.render(body, secrets)


async def test_secret_named_fields_of_a_body_are_masked_without_patterns(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    client = await gateway(bodies_config(), plugins=[finished])
    body = {**CHAT, "metadata": {"api_key": "plain-looking-value", "note": "fine"}}
    assert (await client.post("/v1/chat/completions", json=body)).status == 200
    await finished.wait(1)
    [line] = log.access()
    assert json.loads(line["request_body"])["metadata"] == {"api_key": REDACTED, "note": "fine"}
    assert "plain-looking-value" not in log.text


def upstream_config(upstream: Any, **bodies: Any) -> dict[str, Any]:
    backend = {"name": "up", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up-0123456789"}
    return {
        "backends": [backend],
        "models": [{"name": "*", "backend": "up"}],
        "plugins": {"request_logging": {"bodies": {"enabled": True, **bodies}}},
    }


@pytest.mark.parametrize("one_write", [True, False])
async def test_a_logged_stream_goes_out_as_the_upstream_sent_it(
    gateway: Any, upstream: Any, log: JsonLog, finished: Finished, one_write: bool
) -> None:
    """Body logging reads the bytes as they are written: the same bytes as with it off, and every
    event's text in the logged body, however the upstream cut its writes."""
    from tests.upstreams.openai import Reply

    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    streams = []
    for enabled in (False, True):
        upstream.reply(Reply(content="one two three four", one_write=one_write))
        config = upstream_config(upstream)
        config["plugins"]["request_logging"]["bodies"]["enabled"] = enabled
        client = await gateway(config, plugins=[finished])
        response = await client.post("/v1/chat/completions", json=body)
        streams.append(await response.read())
    await finished.wait(2)
    assert streams[0] == streams[1]
    logged = json.loads(log.access()[1]["response_body"])
    assert logged["choices"] == [{"index": 0, "content": "one two three four", "finish_reason": "stop"}]
    assert logged["model"] == "gpt-4o-mini"


async def test_a_stream_cut_by_an_upstream_error_logs_what_was_sent(
    gateway: Any, upstream: Any, log: JsonLog, finished: Finished
) -> None:
    from tests.upstreams.openai import Reply

    upstream.reply(Reply(content="one two three four", error_event_after=2))
    client = await gateway(upstream_config(upstream), plugins=[finished])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    sent = await (await client.post("/v1/chat/completions", json=body)).read()
    await finished.wait(1)
    [line] = log.access()
    assert b'"error"' in sent and "error" in line
    [choice] = json.loads(line["response_body"])["choices"]
    assert choice["finish_reason"] is None and choice["content"] and "one two three four".startswith(choice["content"])


async def test_body_logging_turned_on_by_a_reload_logs_streams_through_a_filter(
    gateway: Any, log: JsonLog, finished: Finished
) -> None:
    from gateway.keys import generations_key

    seen = SeenFilters()
    client = await gateway(plugins=[finished, seen])  # bodies off at start-up: no writes are read
    assert await client.server.app[generations_key].reload(bodies_config())
    await (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).read()
    await finished.wait(1)
    [line] = log.access()
    assert json.loads(line["response_body"])["choices"] == [{"index": 0, "content": PROMPT, "finish_reason": "stop"}]
    assert len(seen.seen[0]) == 1  # the collector, as a filter


def _event(text: str, crlf: bool = False, space: bool = True) -> bytes:
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m"}
    chunk["choices"] = [{"index": 0, "delta": {"content": text}, "finish_reason": None}]
    end = b"\r\n\r\n" if crlf else b"\n\n"
    return (b"data: " if space else b"data:") + json.dumps(chunk).encode() + end


@pytest.mark.parametrize(
    "block",
    [
        _event("one ") + _event("two") + b"data: [DONE]\n\n",  # the usual block, read in one pass
        _event("one ", crlf=True) + _event("two", crlf=True),
        b"event: x\n" + _event("one ") + b": comment\n\n" + _event("two", space=False),  # other lines
        _event("one ") + _event("two") + b'data: {"error":{"message":"cut"}}\n\n',  # the gateway's error event
    ],
)
def test_the_stream_collector_reads_each_event_of_a_block(block: bytes) -> None:
    from gateway_plugins.request_logging import StreamCollector

    collector = StreamCollector(limit=100)
    collector.feed(block)
    assert "".join(collector.choices[0]["text"]) == "one two"
    assert collector.frame == {"id": "c", "object": "chat.completion.chunk", "model": "m"}
