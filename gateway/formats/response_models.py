"""Pydantic models of the gateway's responses, for the OpenAPI document only.

Responses are built as dicts (``chat_format`` and friends) and never validated against these; the
models describe them for ``/openapi.json``. Request bodies are described by the models in
``gateway.formats.requests`` that validate them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Doc(BaseModel):
    model_config = ConfigDict(extra="allow")


def _optional(description: str) -> Any:
    """A field that may be absent but is never null (OpenAI's spec: optional, not nullable)."""
    return Field(None, description=description, json_schema_extra=lambda schema: schema.pop("default", None))


class Usage(_Doc):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletionMessage(_Doc):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: list[dict[str, Any]] = _optional("the tool calls, when the model called tools")


class ChatCompletionChoice(_Doc):
    index: int
    message: ChatCompletionMessage
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


class ChatCompletion(_Doc):
    """A non-streamed chat completion (``stream`` false or absent)."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage = _optional("the tokens used (absent when unknown)")
    system_fingerprint: str = _optional("the upstream's backend configuration, when it sent one")


class ChunkChoice(_Doc):
    index: int
    delta: dict[str, Any]
    logprobs: dict[str, Any] | None = None
    finish_reason: Literal["stop", "length", "tool_calls", "content_filter", "function_call"] | None


class ChatCompletionChunk(_Doc):
    """One event of a streamed chat completion: ``data: {chunk}``; the stream ends with ``data: [DONE]``."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str = _optional("the upstream's backend configuration, when it sent one")


class Model(_Doc):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(_Doc):
    object: Literal["list"]
    data: list[Model]


class ErrorDetail(_Doc):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Doc):
    """Every error: the status says what happened, ``error`` says why (OpenAI's shape)."""

    error: ErrorDetail


class Health(_Doc):
    status: Literal["ok"]


class Info(_Doc):
    """The gateway's name, version, plugins, backends (secrets masked), models and state store."""

    name: str
    version: str
    plugins: list[dict[str, Any]]
    backends: list[dict[str, Any]]
    models: list[dict[str, Any]]
    default_model: str | None = None
    state: dict[str, Any] = {}


class TextCompletionChoice(_Doc):
    text: str
    index: int
    logprobs: dict[str, Any] | None
    finish_reason: Literal["stop", "length", "content_filter"] | None  # null on the chunks of a stream


class TextCompletion(_Doc):
    """A legacy text completion; streamed, each event is one of these with a piece of the text."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextCompletionChoice]
    usage: Usage | None = None  # null on the chunks of a stream with include_usage
    system_fingerprint: str = _optional("the upstream's backend configuration, when it sent one")


class Embedding(_Doc):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str  # a base64 string of little-endian float32 with `encoding_format: base64`


class EmbeddingUsage(_Doc):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(_Doc):
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class MessageUsage(_Doc):
    input_tokens: int
    output_tokens: int


class Message(_Doc):
    """Anthropic's ``message`` object."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(_Doc):
    input_tokens: int


class ResponseUsage(_Doc):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(_Doc):
    """OpenAI's ``response`` object (``POST /v1/responses``, ``GET /v1/responses/{id}``)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "incomplete", "failed", "in_progress"]
    model: str
    output: list[dict[str, Any]]
    usage: ResponseUsage | None
    error: dict[str, Any] | None = None
    incomplete_details: dict[str, Any] | None = None
    previous_response_id: str | None = None


class ResponseDeleted(_Doc):
    id: str
    object: Literal["response"]
    deleted: bool
