"""The ``transforms`` config section: a list of rules, each with what it matches and what it does.

Patterns are compiled once, when the config is validated; a bad regex stops start-up with its key
path (``plugins.transforms.rules[0].redact[1].pattern``).
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from gateway.context import Principal
from gateway_plugins.transforms.patterns import Patterns

#: Fields that defaults and caps may not set: the gateway has read them already.
RESERVED_FIELDS = frozenset({"model", "messages", "stream", "prompt", "input"})


class _Pattern(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pattern: str = Field(description="a Python regular expression")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        """A plain string stands for ``{pattern: <string>}``."""
        return {"pattern": value} if isinstance(value, str) else value

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        if compiled.fullmatch(""):
            raise ValueError("the pattern matches the empty string")
        return pattern


class Redaction(_Pattern):
    replacement: str = Field("[REDACTED]", description="literal text put in place of each match")


class ResponseFilterRule(_Pattern):
    action: Literal["replace", "block"] = Field(
        "replace",
        description="replace: put `replacement` in place of the match; block: end the choice "
        "before the match with finish_reason content_filter",
    )
    replacement: str = Field("[FILTERED]", description="literal text put in place of each match")


class Refusal(_Pattern):
    message: str | None = Field(None, description="said to the client after the standard refusal sentence")


class Rule(BaseModel):
    """What a request must match (all given conditions), and what to do to it and its response."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        default_factory=list,
        description="globs of the model asked for (or the model an alias made of it); empty: every model",
    )
    keys: list[str] = Field(
        default_factory=list, description="globs of the caller's key name (ctx.principal.name); empty: every caller"
    )
    refuse: list[Refusal] = Field(default_factory=list, description="a request whose text matches is refused (400)")
    redact: list[Redaction] = Field(default_factory=list, description="replaced in the request's text")
    system_prompt: str | None = None
    system_prompt_mode: Literal["inject", "replace"] = Field(
        "inject", description="inject: add it when the request has no system message; replace: instead of theirs"
    )
    defaults: dict[str, Any] = Field(default_factory=dict, description="parameters set when the client sent none")
    caps: dict[str, int | float] = Field(default_factory=dict, description="ceilings of numeric parameters")
    aliases: dict[str, str] = Field(default_factory=dict, description="model asked for -> model sent upstream")
    response_filters: list[ResponseFilterRule] = Field(default_factory=list)
    max_match_chars: int = Field(
        64, ge=1, le=65536, description="the longest text a response filter matches (streams hold back this much)"
    )

    _refuse: Patterns | None = PrivateAttr(None)
    _redact: Patterns | None = PrivateAttr(None)
    _filters: Patterns | None = PrivateAttr(None)

    @field_validator("defaults", "caps")
    @classmethod
    def _not_reserved(cls, fields: dict[str, Any]) -> dict[str, Any]:
        reserved = sorted(RESERVED_FIELDS & fields.keys())
        if reserved:
            raise ValueError(f"cannot set {', '.join(reserved)} (the gateway has read it before transforms run)")
        return fields

    @model_validator(mode="after")
    def _compile(self) -> Rule:
        try:
            if self.refuse:
                self._refuse = Patterns([(r.pattern, None) for r in self.refuse])
            if self.redact:
                self._redact = Patterns([(r.pattern, r.replacement) for r in self.redact])
            if self.response_filters:
                self._filters = Patterns(
                    [(f.pattern, None if f.action == "block" else f.replacement) for f in self.response_filters],
                    self.max_match_chars,
                )
        except re.error as exc:  # each compiles alone; joined, e.g. two groups of the same name
            raise ValueError(f"the patterns cannot be combined: {exc}") from None
        return self

    def for_caller(self, principal: Principal | None) -> bool:
        """Whether the rule applies to this caller."""
        if not self.keys:
            return True
        return principal is not None and any(fnmatchcase(principal.name, k) for k in self.keys)

    def for_model(self, *names: str | None) -> bool:
        """Whether the rule applies to a request for any of ``names``."""
        if not self.models:
            return True
        return any(name is not None and fnmatchcase(name, m) for name in names for m in self.models)

    def refusal(self, text: str) -> Refusal | None:
        """The refusal pattern ``text`` matches first, if any."""
        if self._refuse is None:
            return None
        for match in self._refuse.regex.finditer(text):
            if match.end() > match.start():
                return self.refuse[_alternative(self._refuse, match)]
        return None

    @property
    def redactions(self) -> Patterns | None:
        return self._redact

    @property
    def filters(self) -> Patterns | None:
        return self._filters


def _alternative(patterns: Patterns, match: re.Match[str]) -> int:
    """Which of the joined patterns produced ``match`` (its position in the list)."""
    return list(patterns.actions).index(match.lastindex)


class TransformsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=list, description="applied in order; every matching rule applies")
