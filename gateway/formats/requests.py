"""Request models validated at the boundary, and OpenAI-style messages for what fails.

The models check what the gateway relies on and keep unknown fields (``extra="allow"``): the
validated dict itself, not a dump of the model, is what plugins and backends receive.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WrapValidator
from pydantic_core import PydanticCustomError

from gateway.errors import InvalidRequestError
from gateway.formats.request_errors import empty_array, missing, request_error
from gateway.formats.request_schema import (
    TRUTHY,
    model_and_stream_options,
    present,
    require_model,
    text_inputs,
    when,
)


def one_of(expected: str) -> WrapValidator:
    """Report a value that fits no member of a union as one error at the field, not one per member."""

    def validate(value: Any, handler: Any) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            deeper = [e for e in exc.errors() if len(e["loc"]) > 1]  # inside the member that fit the type
            if not deeper:
                raise PydanticCustomError("invalid_type", "expected {expected}", {"expected": expected}) from None
            errors = [
                {"type": e["type"], "loc": e["loc"][1:], "input": e["input"], "ctx": e.get("ctx", {})} for e in deeper
            ]
            raise ValidationError.from_exception_data(exc.title, errors) from None

    return WrapValidator(validate)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class ContentPart(_Open):
    model_config = ConfigDict(json_schema_extra={"allOf": [when("type", "text", present("text", {"type": "string"}))]})

    type: str
    text: str | None = None  # required for `text` parts (checked in validate_chat_request)


class StreamOptions(_Open):
    include_usage: bool | None = None


class FunctionDefinition(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Open):
    model_config = ConfigDict(json_schema_extra={"allOf": [when("type", "function", present("function"))]})

    type: str = "function"
    function: FunctionDefinition | None = None  # required for `function` tools


class NamedFunction(_Open):
    name: str


class ToolChoiceObject(_Open):
    model_config = ConfigDict(json_schema_extra={"allOf": [when("type", "function", present("function"))]})

    type: str
    function: NamedFunction | None = None  # required when type is `function`


Role = Literal["system", "developer", "user", "assistant", "tool", "function"]
Content = Annotated[str | list[ContentPart] | None, one_of("a string or an array of content parts")]


_NEEDS_CONTENT = frozenset({"system", "developer", "user", "tool"})


class ChatMessage(_Open):
    model_config = ConfigDict(
        json_schema_extra={
            "allOf": [
                when("role", sorted(_NEEDS_CONTENT), present("content")),
                when("role", "tool", present("tool_call_id", {"type": "string", "minLength": 1})),
                when(
                    "role",
                    "assistant",
                    {"anyOf": [present("content"), present("tool_calls", TRUTHY), present("function_call", TRUTHY)]},
                ),
            ]
        }
    )

    role: Role
    content: Content = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(_Open):
    """The body of ``POST /v1/chat/completions``: the fields the gateway checks; others pass through."""

    model_config = ConfigDict(json_schema_extra=model_and_stream_options)

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: Annotated[str | list[str] | None, one_of("a string or an array of strings")] = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Tool] | None = None
    tool_choice: Annotated[
        Literal["none", "auto", "required"] | ToolChoiceObject | None,
        one_of("'none', 'auto', 'required' or an object naming a tool"),
    ] = None
    user: str | None = None


_PLAIN_KEYS = frozenset({"model", "messages", "stream"})
_PLAIN_ROLES = frozenset({"system", "developer", "user", "assistant"})


def _plain_chat(body: Any) -> bool:
    """Whether ``body`` has the commonest shape, which every check below accepts: only ``model`` (a
    string), ``stream`` (a boolean) and ``messages``, each ``{"role", "content"}`` with a plain role
    and text. Checked in plain Python, a tenth of what the model's validation costs."""
    if type(body) is not dict or not _PLAIN_KEYS.issuperset(body):
        return False
    model, stream, messages = body.get("model"), body.get("stream"), body.get("messages")
    if (model is not None and type(model) is not str) or (stream is not None and type(stream) is not bool):
        return False
    if type(messages) is not list or not messages:
        return False
    return all(map(_plain_message, messages))


def _plain_message(message: Any) -> bool:
    """``{"role", "content"}`` with a plain role and text: a message no check below can refuse."""
    if type(message) is not dict or len(message) != 2 or type(message.get("content")) is not str:
        return False
    role = message.get("role")
    return type(role) is str and role in _PLAIN_ROLES


def validate_chat_request(body: Any) -> None:
    """Check a chat completion body; raise ``InvalidRequestError`` naming the first bad ``param``."""
    if _plain_chat(body) or _valid_in_parts(body):
        return
    _validate(ChatCompletionRequest, body)
    _check_stream_options(body)
    _check_tools(body)
    for i, message in enumerate(body["messages"]):
        _check_message(i, message)


#: What stands in for the history when the rest of a body is validated on its own (never edited).
_ONE_MESSAGE = [{"role": "user", "content": ""}]


def _valid_in_parts(body: Any) -> bool:
    """Whether ``body`` passes the whole check, found in parts: each message that is not plain (see
    ``_plain_chat``) validated on its own, the rest of the body with one plain message for the
    history. The same verdict as the model's (it has no check across fields), at a fraction of its
    cost for a long history: 430 -> 64 µs for 400 messages beside a ``temperature``. False for a body
    that fails: the whole check then runs to name its first problem, as it always did."""
    if type(body) is not dict:
        return False
    messages = body.get("messages")
    if type(messages) is not list or not messages:
        return False
    try:
        for i, message in enumerate(messages):
            if not _plain_message(message):
                ChatMessage.model_validate(message)
                _check_message(i, message)
        ChatCompletionRequest.model_validate({**body, "messages": _ONE_MESSAGE})
        _check_stream_options(body)
        _check_tools(body)
    except (ValidationError, InvalidRequestError):
        return False
    return True


def _check_message(i: int, message: dict[str, Any]) -> None:
    """What the model leaves unchecked in a message (``messages[i]``) that it accepted."""
    role, content = message["role"], message.get("content")
    if role in _NEEDS_CONTENT and content is None:
        raise missing(f"messages[{i}].content")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if part["type"] == "text" and part.get("text") is None:
                raise missing(f"messages[{i}].content[{j}].text")
    if role == "tool" and not message.get("tool_call_id"):
        raise missing(f"messages[{i}].tool_call_id")
    if role == "assistant" and content is None and not (message.get("tool_calls") or message.get("function_call")):
        raise missing(f"messages[{i}].content")


def _validate(model: type[BaseModel], body: Any) -> None:
    if not isinstance(body, dict):
        raise InvalidRequestError("Invalid request body: expected a JSON object.", code="invalid_type")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        raise request_error(exc) from None


def _check_stream_options(body: dict[str, Any]) -> None:
    if body.get("stream_options") is not None and not body.get("stream"):
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
            param="stream_options",
            code="invalid_value",
        )


def _check_tools(body: dict[str, Any]) -> None:
    for i, tool in enumerate(body.get("tools") or ()):
        if tool.get("type", "function") == "function" and tool.get("function") is None:
            raise missing(f"tools[{i}].function")
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice["type"] == "function" and choice.get("function") is None:
        raise missing("tool_choice.function")


# Legacy completions and embeddings ---------------------------------------------------------------

TextInput = Annotated[
    str | list[str] | list[int] | list[list[int]],
    one_of("a string, an array of strings, an array of tokens or an array of token arrays"),
]
MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit on the items of an embeddings `input` array


class CompletionRequest(_Open):
    """The body of ``POST /v1/completions``: the fields the gateway checks; others pass through."""

    model_config = ConfigDict(json_schema_extra=model_and_stream_options)

    model: str | None = None
    prompt: TextInput = Field(json_schema_extra=text_inputs(empty_strings=True))
    suffix: str | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=0)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    n: int | None = Field(None, ge=1, le=128)
    best_of: int | None = Field(None, ge=0, le=20)
    echo: bool | None = None
    logprobs: int | None = Field(None, ge=0, le=5)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: Annotated[str | list[str] | None, one_of("a string or an array of strings")] = None
    seed: int | None = None
    user: str | None = None


#: The longest embedding OpenAI's models give (text-embedding-3-large): a longer one is refused (400).
MAX_DIMENSIONS = 3072


class EmbeddingRequest(_Open):
    """The body of ``POST /v1/embeddings``: the fields the gateway checks; others pass through."""

    model_config = ConfigDict(json_schema_extra=require_model)

    model: str | None = None
    input: TextInput = Field(json_schema_extra=text_inputs(empty_strings=False, max_items=MAX_EMBEDDING_INPUTS))
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(None, ge=1, le=MAX_DIMENSIONS)
    user: str | None = None


def validate_completion_request(body: Any) -> None:
    """Check a legacy completion body; raise ``InvalidRequestError`` naming the first bad ``param``."""
    _validate(CompletionRequest, body)
    _check_stream_options(body)
    _check_text_input(body, "prompt", empty_strings=True)


def validate_embedding_request(body: Any) -> None:
    """Check an embeddings body; raise ``InvalidRequestError`` naming the first bad ``param``."""
    _validate(EmbeddingRequest, body)
    _check_text_input(body, "input", empty_strings=False, max_items=MAX_EMBEDDING_INPUTS)


def _check_text_input(body: dict[str, Any], param: str, *, empty_strings: bool, max_items: int | None = None) -> None:
    """No empty arrays (nor empty token arrays), at most ``max_items`` items, and no empty strings
    unless ``empty_strings``."""
    value = body[param]
    if isinstance(value, list):
        if not value:
            raise empty_array(param)
        if max_items is not None and len(value) > max_items:
            raise InvalidRequestError(
                f"Invalid '{param}': array too long. Expected an array with maximum length {max_items}, "
                f"but got an array with length {len(value)} instead.",
                param=param,
                code="array_above_max_length",
            )
    if isinstance(value, list) and not isinstance(value[0], int):  # several inputs
        named = [(f"{param}[{i}]", item) for i, item in enumerate(value)]
    else:
        named = [(param, value)]
    for name, item in named:
        if isinstance(item, list) and not item:
            raise empty_array(name)
        if item == "" and not empty_strings:
            raise InvalidRequestError(
                f"Invalid '{name}': empty string. Expected a string with minimum length 1, "
                "but got an empty string instead.",
                param=name,
                code="empty_string",
            )


class AnthropicMessage(_Open):
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(_Open):
    """Anthropic's ``POST /v1/messages`` body (documentation: ``formats.messages.validate`` checks it)."""

    model: str
    max_tokens: int
    messages: list[AnthropicMessage]
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: dict[str, Any] | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    metadata: dict[str, Any] | None = None
    stream: bool | None = None


class ResponsesRequest(_Open):
    """OpenAI's ``POST /v1/responses`` body (documentation: ``formats.responses.validate`` checks it)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [{"model": "mock-gpt-model", "input": "Tell me a joke", "instructions": "Be brief."}]
        },
    )

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool | None = None
    text: dict[str, Any] | None = Field(None, description='`{"format": {"type": "json_schema", ...}}`')
    stream: bool | None = None
    store: bool | None = Field(True, description="keep the response for `previous_response_id` and GET")
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
