"""The ``rate_limit`` section: the default limits of each key, and per-model budgets."""

from __future__ import annotations

import functools
from fnmatch import fnmatchcase
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.limits import Limits

SECTION = "rate_limit"


class RateLimitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default: Limits = Field(default_factory=Limits, description="each key's limits unless the key sets its own")
    models: dict[str, Limits] = Field(
        default_factory=dict, description="model name or glob -> a budget shared by every caller"
    )
    default_max_tokens: int = Field(
        0,
        ge=0,
        le=10_000_000,
        description="tokens reserved for the answer of a request that sets no max_tokens (tokens per minute)",
    )
    concurrency_lease_seconds: float = Field(
        60.0,
        ge=1,
        le=86_400,
        description="state.store redis: a concurrency slot's lease, renewed while its request lives; "
        "a process that dies holding slots frees them after at most this long",
    )

    @functools.cached_property
    def default_limits(self) -> dict[str, int]:
        """``default`` as a plain dict, once: requests only read it (a cached property is an instance
        attribute; a pydantic private attribute costs a ``__getattr__`` on every read)."""
        return self.default.set()

    @functools.cached_property
    def model_limits(self) -> dict[str, dict[str, int]]:
        """``models`` as plain dicts, once."""
        return {name: limits.set() for name, limits in self.models.items()}

    @functools.cached_property
    def plans(self) -> tuple[dict[Any, Any], dict[str, Any]]:
        """What each key and each model is charged (``plan.plan``), worked out once per config: a
        reload starts afresh."""
        return {}, {}

    def shared_state(self) -> str | None:
        """What of this section must be shared between processes (``gateway.state``)."""
        return "rate_limit's limits" if self.limits_anything else None

    @functools.cached_property
    def limits_anything(self) -> bool:
        """Whether any limit is set here (a key's own limits aside): when not, and the caller's key
        sets none, a request needs no planning at all."""
        return bool(self.default_limits or self.model_limits)

    def for_model(self, model: str) -> dict[str, int] | None:
        """The limits of ``model``: its exact entry, else the first pattern that matches."""
        models = self.model_limits
        if not models:
            return None
        if model in models:
            return models[model]
        return next((limits for pattern, limits in models.items() if fnmatchcase(model, pattern)), None)
