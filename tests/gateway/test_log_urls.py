"""gateway.log.redact on URLs: the credentials a URL can carry are masked wherever it is shown
(/info, log lines), the rest of it is kept."""

from __future__ import annotations

import pytest

from gateway.log import REDACTED, redact


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        (
            "https://g.example.com/v1/m:gen?key=AIza-123&alt=sse",
            f"https://g.example.com/v1/m:gen?key={REDACTED}&alt=sse",
        ),
        ("https://h/x?page=2&access_token=abc#top", f"https://h/x?page=2&access_token={REDACTED}#top"),
        ("https://h/x?X-Amz-Signature=abc&monkey=1", f"https://h/x?X-Amz-Signature={REDACTED}&monkey=1"),
        ("https://user:p4ss@proxy.example.com/v1", f"https://user:{REDACTED}@proxy.example.com/v1"),
        ("https://h/x?q=1&monkey=2", "https://h/x?q=1&monkey=2"),
        ("write to me@example.com", "write to me@example.com"),
    ],
)
def test_url_credentials_are_masked(text: str, shown: str) -> None:
    assert redact(text) == shown
