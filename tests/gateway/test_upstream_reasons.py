"""Why an upstream was unreachable, as gateway.upstream.errors words it for the client."""

from __future__ import annotations

import socket

import pytest

from gateway.upstream.errors import unreachable_reason


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 8000)"), "Connection refused"),
        (socket.gaierror(-2, "Name or service not known"), "Name or service not known"),
        (OSError("Multiple exceptions: [Errno 111] ..., [Errno 99] ..."), "Multiple exceptions: [Errno 111] ..."),
        (OSError(), "OSError"),
    ],
)
def test_the_reason_is_the_system_message_for_the_error_number(error: OSError, reason: str) -> None:
    assert unreachable_reason(error).startswith(reason)
