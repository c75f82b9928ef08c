"""Rate limits, written once: the model a key's limits (``auth_api_keys``) and the ``rate_limit``
section's budgets share, and that reaches a rate limiter as ``ctx.principal.limits``.

Part of the public plugin surface: an auth plugin hands a caller's limits to any rate limiter by
setting ``Principal(name, limits=Limits(...))``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

#: The fields of ``Limits``, each a per-minute (or concurrent) count; None: no limit.
LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "concurrent_requests")


class Limits(BaseModel):
    """Requests and tokens per minute, and concurrent requests (streams included); unset: unlimited."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1, description="prompt estimated before, corrected after")
    concurrent_requests: int | None = Field(None, ge=1, description="requests (streams included) in progress")

    def set(self) -> dict[str, int]:
        """The limits that are set, as a plain dict (what a limiter reads per request)."""
        return self.model_dump(exclude_none=True)
