"""Time limits of a model request: the silence allowed before an attempt's first output and
between two chunks (the model's ``timeouts``, else the backend's ``timeout``), the total time of the
response, and the lower limits a client may ask for with the ``X-Gateway-Timeout`` header."""

from __future__ import annotations

import math
from collections.abc import Mapping

from gateway.context import Deployment, RequestContext
from gateway.errors import InvalidRequestError
from gateway.model_table import RetryConfig

#: A client lowers the timeouts of its request with it: ``5`` (the total), or
#: ``total=30, first_byte=5, idle=10``. Values above the configured ones are ignored.
TIMEOUT_HEADER = "X-Gateway-Timeout"
_LIMIT_NAMES = ("first_byte", "idle", "total")


def client_limits(headers: Mapping[str, str]) -> dict[str, float] | None:
    """The limits a client set with ``X-Gateway-Timeout`` (None without the header); 400 if malformed."""
    value = headers.get(TIMEOUT_HEADER)
    if value is None:
        return None
    limits: dict[str, float] = {}
    try:
        for part in value.split(","):
            name, sep, number = part.strip().rpartition("=")
            name = name.strip() if sep else "total"
            seconds = float(number)
            if name not in _LIMIT_NAMES or name in limits or not 0 < seconds < math.inf:
                raise ValueError(part)
            limits[name] = seconds
    except ValueError:
        raise InvalidRequestError(
            f"Invalid {TIMEOUT_HEADER} header {value[:100]!r}: give seconds (the total), or "
            f"comma-separated {', '.join(n + '=<seconds>' for n in _LIMIT_NAMES)}.",
            code="invalid_header",
        ) from None
    return limits


def _lower(configured: float | None, asked: float | None) -> float | None:
    if asked is None:
        return configured
    return asked if configured is None else min(configured, asked)


def silence(deployment: Deployment, limits: dict[str, float] | None) -> tuple[float, float]:
    """The seconds allowed before an attempt's first output, and between two chunks after it."""
    default = deployment.backend.config.timeout
    timeouts = deployment.route.timeouts if deployment.route is not None else None
    first = (timeouts.first_byte if timeouts else None) or default
    idle = (timeouts.idle if timeouts else None) or default
    if limits:
        first = _lower(first, limits.get("first_byte")) or first
        idle = _lower(idle, limits.get("idle")) or idle
    return first, idle


def request_deadline(
    ctx: RequestContext, deployment: Deployment, limits: dict[str, float] | None, now: float
) -> float | None:
    """The loop time when the whole response must be over (the requested model's ``total``)."""
    configured = deployment.route.timeouts.total if deployment.route is not None else None
    total = _lower(configured, limits.get("total") if limits else None)
    return None if total is None else now - ctx.duration + total


def retry_deadline(ctx: RequestContext, retry: RetryConfig | None, deadline: float | None, now: float) -> float | None:
    """The loop time after which no new attempt starts: the model's ``retry.deadline``, or ``deadline``."""
    if retry is not None and retry.deadline is not None:
        mine = now - ctx.duration + retry.deadline
        return mine if deadline is None else min(deadline, mine)
    return deadline
