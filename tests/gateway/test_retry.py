"""Retry policy: which failures are retried, Retry-After, back-off and the retry budget."""

from __future__ import annotations

import email.utils
import time

import pytest

from gateway.errors import (
    GatewayError,
    InvalidRequestError,
    RateLimitError,
    ServiceUnavailableError,
    UpstreamError,
    UpstreamTimeoutError,
)
from gateway.model_table import RetryConfig
from gateway.resilience.retry import RetryBudget, backoff, retry_after, verdict
from gateway.upstream.errors import UpstreamClientError, http_error


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (UpstreamError("5xx, refused, reset"), "retry"),
        (UpstreamTimeoutError("silent"), "retry"),
        (RateLimitError("429"), "retry"),
        (UpstreamClientError("too long", status=400, code="context_length_exceeded"), "fallback"),
        (UpstreamClientError("bad", status=400, code="invalid_value"), "final"),
        (InvalidRequestError("bad"), "final"),
        (ServiceUnavailableError("shutting down"), "final"),
        (ValueError("not a gateway error"), "final"),
    ],
)
def test_verdicts(error: BaseException, expected: str) -> None:
    assert verdict(error) == expected


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert retry_after(RateLimitError("x", headers={"Retry-After": "2"})) == 2.0
    assert retry_after(RateLimitError("x", headers={"Retry-After": "0.5"})) == 0.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 28 < retry_after(RateLimitError("x", headers={"Retry-After": date})) <= 30  # type: ignore[operator]
    assert retry_after(RateLimitError("x", headers={"Retry-After": "soon"})) is None
    assert retry_after(RateLimitError("x")) is None
    assert retry_after(ValueError("no headers")) is None


def test_backoff_doubles_is_capped_and_jittered() -> None:
    config = RetryConfig(backoff=0.1, max_backoff=0.3)
    assert [backoff(config, n, rand=lambda: 0.0) for n in (1, 2, 3, 4)] == [0.05, 0.1, 0.15, 0.15]
    assert [backoff(config, n, rand=lambda: 1.0) for n in (1, 2, 3)] == [0.1, 0.2, 0.3]


def test_the_budget_allows_a_share_of_the_requests() -> None:
    now = [1000.0]
    budget = RetryBudget(ratio=0.5, min_per_second=0, ttl=10, clock=lambda: now[0])
    assert not budget.withdraw()  # no requests yet, no floor
    for _ in range(4):
        budget.request()
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]
    now[0] += 11  # the window moved on: old requests and retries are forgotten
    assert not budget.withdraw()
    budget.request()
    budget.request()
    assert budget.withdraw()


def test_the_budget_has_a_floor_per_second() -> None:
    now = [1000.0]
    budget = RetryBudget(ratio=0, min_per_second=0.2, ttl=10, clock=lambda: now[0])
    assert [budget.withdraw() for _ in range(3)] == [True, True, False]


def test_on_status_picks_the_upstream_statuses_retried() -> None:
    def answered(status: int) -> GatewayError:
        return http_error("b", status, b"{}")

    on_status = [429, 503]
    assert [verdict(answered(s), on_status) for s in (429, 503, 500, 502, 400)] == [
        "retry",
        "retry",
        "final",
        "final",
        "final",
    ]
    assert verdict(UpstreamTimeoutError("silent"), on_status) == "retry"  # no status: always retried
    assert verdict(UpstreamError("refused"), on_status) == "retry"
    assert verdict(answered(409), [409]) == "retry"
    assert verdict(answered(500)) == "retry"  # without on_status: 429 and every 5xx
