"""Reading a custom API's answers with JMESPath, for backends declared in YAML (``http_template``).

``AnswerMapping`` (a JSON answer) and ``StreamMapping`` (each event of a stream) are the config;
``Mapping(spec, section).read(answer, reading)`` adds what one answer or event holds to a ``Reading``
and raises ``Mismatch`` for a value of the wrong kind, ``Reported`` for an error the upstream reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from gateway_plugins.backends.http_template.json_template import compile_path

#: Values JMESPath treats as false: a ``done`` or ``error`` path that finds one of these found nothing.
FALSE_VALUES: tuple[Any, ...] = (None, False, "", [], {})


def _jmespath(expression: str) -> str:
    compile_path(expression)
    return expression


JMESPath = Annotated[str, AfterValidator(_jmespath)]


class AnswerMapping(BaseModel):
    """JMESPath expressions that read a JSON answer (or one streamed event)."""

    model_config = ConfigDict(extra="forbid")

    text: JMESPath = Field(description="the reply text (in a stream: the piece of it an event carries)")
    finish_reason: JMESPath | None = Field(None, description="the finish reason, if the upstream reports one")
    prompt_tokens: JMESPath | None = Field(None, description="the prompt's token count, if reported")
    completion_tokens: JMESPath | None = Field(None, description="the reply's token count, if reported")
    error: JMESPath | None = Field(
        None, description="an error the upstream reports with a 2xx status: when found, the request fails (502)"
    )


class StreamMapping(AnswerMapping):
    """A streaming upstream: the format of its events, each read with the mapping."""

    format: Literal["ndjson", "sse"] = Field(description="ndjson: one JSON value a line; sse: `data:` events")
    done: JMESPath | None = Field(None, description="an event where this finds a true value is the last one")
    done_data: str | None = Field(None, description="sse: a `data:` payload that ends the stream, e.g. [DONE]")

    @property
    def has_end(self) -> bool:
        """Whether the stream says when it is over (so that ending without saying so is an error)."""
        return self.done is not None or self.done_data is not None


@dataclass(slots=True)
class Reading:
    """What the mapping found in an answer, or in the events of a stream so far."""

    pieces: list[str] = field(default_factory=list)
    found_text: bool = False
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False


class Mismatch(Exception):
    """The mapping found a value of the wrong kind at one of its paths."""

    def __init__(self, name: str, path: str, value: Any, expected: str) -> None:
        super().__init__(f"{name} at {path}")
        self.name, self.path, self.value, self.expected = name, path, value, expected


class Reported(Exception):
    """The ``error`` path found an error in a successful answer."""

    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


class Mapping:
    """A compiled ``AnswerMapping`` or ``StreamMapping``; ``section`` is its key in the config."""

    __slots__ = ("completion_tokens", "done", "error", "finish_reason", "prompt_tokens", "section", "spec", "text")

    def __init__(self, spec: AnswerMapping, section: str) -> None:
        self.spec, self.section = spec, section
        self.text = compile_path(spec.text)
        paths = (
            spec.finish_reason,
            spec.prompt_tokens,
            spec.completion_tokens,
            spec.error,
            getattr(spec, "done", None),
        )
        self.finish_reason, self.prompt_tokens, self.completion_tokens, self.error, self.done = (
            compile_path(p) if p else None for p in paths
        )

    def read(self, answer: Any, reading: Reading) -> None:
        """Add what ``answer`` holds to ``reading`` (a text piece, the finish reason, token counts,
        whether it is the last event)."""
        if self.error is not None:
            error = self.error.search(answer)
            if error not in FALSE_VALUES:
                raise Reported(error)
        text = self.text.search(answer)
        if text is not None:
            if isinstance(text, bool) or not isinstance(text, str | int | float):
                raise Mismatch("text", self.spec.text, text, "text")
            reading.found_text = True
            reading.pieces.append(text if isinstance(text, str) else str(text))
        if self.finish_reason is not None:
            reason = self.finish_reason.search(answer)
            if reason is not None:
                if not isinstance(reason, str):
                    raise Mismatch("finish_reason", self.spec.finish_reason or "", reason, "a string")
                reading.finish_reason = reason
        for name in ("prompt_tokens", "completion_tokens"):
            path = getattr(self, name)
            if path is not None:
                count = path.search(answer)
                if count is not None:
                    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                        raise Mismatch(name, getattr(self.spec, name), count, "a token count")
                    setattr(reading, name, count)
        if self.done is not None and self.done.search(answer) not in (*FALSE_VALUES, 0):
            reading.done = True
