"""The sourcegraph backend's config."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from gateway.backend import BackendConfig
from gateway.upstream.errors import (
    BaseUrl,
    Credential,
)


def _switch(value: Any) -> Any:
    if isinstance(value, bool) or value == "auto":
        return value
    raise ValueError("must be true, false or auto")


#: A capability of the instance: on, off, or found out (``auto``).
Switch = Annotated[bool | Literal["auto"], BeforeValidator(_switch)]


class SourcegraphConfig(BackendConfig):
    endpoint: BaseUrl = Field(description="the instance's URL, e.g. https://sourcegraph.example.com")
    access_token: Credential = Field(description="an access token, sent as `Authorization: token <token>`")
    aliases: dict[str, str] = Field(
        default_factory=dict, description="short model names -> full `provider::apiVersion::model` ids"
    )
    connect_timeout: float = Field(10.0, gt=0, description="seconds allowed to connect")
    models_ttl: float = Field(300.0, ge=0, description="seconds the instance's model list is cached")
    default_max_tokens: int = Field(
        4000, ge=1, description="max_tokens sent when a request sets none (Sourcegraph's own default is 16)"
    )
    stream: Switch = Field("auto", description="the instance streams chat completions: true | false | auto")
    system: Switch = Field("auto", description="the instance accepts system messages: true | false | auto")
    n: Switch = Field("auto", description="the instance answers n > 1 choices in one call: true | false | auto")
    max_n: int = Field(8, ge=1, le=128, description="most choices (n) emulated with one call each")
    legacy: bool = Field(False, description="use /.api/completions/stream (instances without /.api/llm)")
    legacy_api_version: int = Field(1, ge=1, description="the legacy API's api-version query parameter")
    legacy_trailing_assistant: bool = Field(
        False, description="legacy: end the transcript with an empty assistant turn (pre-Messages-API instances)"
    )
    max_connections: int = Field(0, ge=0, description="open connections to the instance at most (0: no limit)")
