"""The top-level ``state:`` section: where shared state lives and what to do when it is unreachable."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMES = ("redis", "rediss", "unix")


class StateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    store: Literal["memory", "redis"] = Field("memory", description="memory: this process only; redis: shared")
    url: str | None = Field(None, description="redis://[user:password@]host:port/db, rediss://..., unix://path")
    key_prefix: str = Field("gw:", description="prepended to every key the gateway writes")
    timeout_ms: int = Field(50, ge=1, le=60_000, description="connect and command timeout of each Redis call")
    on_error: Literal["allow", "deny"] = Field(
        "allow", description="Redis unreachable or slow: allow serves (one warning per outage), deny answers 503"
    )
    breaker_s: float = Field(1.0, gt=0, le=60, description="after a failed call, seconds before Redis is tried again")
    max_connections: int = Field(64, ge=1, description="connections in this process's pool")

    @model_validator(mode="after")
    def _url_given(self) -> StateConfig:
        if self.store == "redis" and not self.url:
            raise ValueError("store is redis: url is required (redis://host:6379/0)")
        return self

    @field_validator("key_prefix")
    @classmethod
    def _no_hash_tag(cls, prefix: str) -> str:
        if "{" in prefix or "}" in prefix:
            raise ValueError("key_prefix must not contain { or }: the keys' own hash tags ({k:<key>}) place them")
        return prefix

    @field_validator("url")
    @classmethod
    def _check_url(cls, url: str | None) -> str | None:
        if url is None:
            return url
        parts = urlsplit(url)
        if parts.scheme not in SCHEMES:
            raise ValueError(f"url must start with one of {', '.join(s + '://' for s in SCHEMES)}")
        if parts.scheme != "unix":
            try:
                parts.port  # noqa: B018  (raises on a bad port)
            except ValueError:
                raise ValueError("url has an invalid port") from None
            if not parts.hostname:
                raise ValueError("url names no host")
        elif not parts.path:
            raise ValueError("unix:// url names no socket path")
        return url

    @property
    def timeout(self) -> float:
        return self.timeout_ms / 1000
