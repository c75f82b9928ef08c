"""The Responses API's typed stream events, from ``chat.completion.chunk`` dicts.

Each event is ``event: <type>`` + ``data: {..., "type": <type>, "sequence_number": n}``, numbered
from 0: ``response.created``, ``response.in_progress``, then per output item ``output_item.added``,
(a message) ``content_part.added``, ``output_text.delta``..., ``output_text.done``,
``content_part.done``, (a function call) ``function_call_arguments.delta``..., ``.done``, (a
custom tool's call) ``custom_tool_call_input.delta`` and ``.done`` with the whole input, then
``output_item.done``; last ``response.completed`` (``response.incomplete`` when the answer was cut
by ``max_output_tokens`` or a content filter), or ``response.failed`` when the backend failed after
the start (``error`` for any other failure). Plain dicts encoded with orjson: no models per chunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.formats import responses as fmt
from gateway.formats.chat import estimate_prompt_tokens, usage
from gateway.formats.responses_tools import custom_input, tool_kinds


def event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class StreamEncoder:
    """Chat chunks in, Responses events out (bytes). One message item for the text, one
    ``function_call`` item per tool call; an item is done when the next one starts, or at the end.
    ``response`` is the final ``response`` object once ``end`` (or ``error``) has run."""

    __slots__ = (
        "_calls",
        "_failures",
        "_failures_before",
        "_finish",
        "_item",
        "_kinds",
        "_output",
        "_seq",
        "_text",
        "_usage",
        "created_at",
        "input_tokens",
        "model",
        "request",
        "response",
        "response_id",
    )

    def __init__(
        self,
        request: Mapping[str, Any],
        response_id: str,
        model: str,
        chat_body: Mapping[str, Any],
        upstream_errors: list[str] | None = None,
    ) -> None:
        """``upstream_errors``: the request's list of backend failures (``ctx.upstream_errors``); one
        added after the start makes a failure ``response.failed`` rather than an ``error`` event."""
        self.request, self.response_id, self.model = request, response_id, model
        self._failures = upstream_errors if upstream_errors is not None else []
        self._failures_before = len(self._failures)
        self.input_tokens = estimate_prompt_tokens(chat_body.get("messages"))
        self.created_at: int | None = None
        self.response: dict[str, Any] | None = None
        self._seq = 0
        self._output: list[dict[str, Any]] = []  # the items, as they stand
        self._item: dict[str, Any] | None = None  # the open item
        self._text: list[str] = []  # the open message's text so far
        self._calls: dict[int, dict[str, Any]] = {}  # tool call index -> its item
        self._finish: str | None = None
        self._usage: dict[str, Any] | None = None  # what the backend reported
        self._kinds = tool_kinds(request)  # custom tools' calls: custom_tool_call items, the input whole at the end

    def _event(self, kind: str, data: dict[str, Any]) -> bytes:
        data["type"] = kind
        data["sequence_number"] = self._seq
        self._seq += 1
        return event(kind, data)

    def _snapshot(self, status: str, **details: Any) -> dict[str, Any]:
        response = fmt.response_object(
            self.request, self.response_id, self.model, status=status, created_at=self.created_at, **details
        )
        self.created_at = response["created_at"]
        return response

    def start(self) -> bytes:
        created = self._event("response.created", {"response": self._snapshot("in_progress")})
        return created + self._event("response.in_progress", {"response": self._snapshot("in_progress")})

    def _open(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self._item = item
        self._output.append(item)
        out += self._event("response.output_item.added", {"output_index": len(self._output) - 1, "item": dict(item)})
        if item["type"] == "message":
            part = {"item_id": item["id"], "output_index": len(self._output) - 1, "content_index": 0}
            out += self._event("response.content_part.added", {**part, "part": fmt.output_text("")})
        return out

    def _close(self) -> bytes:
        item = self._item
        if item is None:
            return b""
        self._item = None
        index = self._output.index(item)
        status = "incomplete" if self._finish in fmt.INCOMPLETE else "completed"
        out = b""
        if item["type"] == "message":
            text = "".join(self._text)
            self._text = []
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            out += self._event("response.output_text.done", {**where, "text": text, "logprobs": []})
            item["content"] = [fmt.output_text(text)]
            out += self._event("response.content_part.done", {**where, "part": fmt.output_text(text)})
        elif item["type"] == "custom_tool_call":
            where = {"item_id": item["id"], "output_index": index}
            item["input"] = text = custom_input(item.pop("arguments"))
            out += self._event("response.custom_tool_call_input.delta", {**where, "delta": text})
            out += self._event("response.custom_tool_call_input.done", {**where, "input": text})
        else:
            where = {"item_id": item["id"], "output_index": index}
            out += self._event("response.function_call_arguments.done", {**where, "arguments": item["arguments"]})
        item["status"] = status
        return out + self._event("response.output_item.done", {"output_index": index, "item": item})

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        if chunk.get("usage"):
            self._usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                item = self._item
                if item is None or item["type"] != "message":
                    out += self._open(fmt.message_item(fmt.new_id("msg_"), [], "in_progress"))
                    item = self._item
                assert item is not None
                self._text.append(text)
                where = {"item_id": item["id"], "output_index": len(self._output) - 1, "content_index": 0}
                out += self._event("response.output_text.delta", {**where, "delta": text, "logprobs": []})
            for call in delta.get("tool_calls") or ():
                out += self._call(call)
            if choice.get("finish_reason"):
                self._finish = choice["finish_reason"]
        return out

    def _call(self, call: Mapping[str, Any]) -> bytes:
        out = b""
        position = call.get("index", 0)
        function = call.get("function") or {}
        item = self._calls.get(position)
        if item is None:
            call_id, name = call.get("id") or fmt.new_id("call_"), function.get("name") or ""
            if name in self._kinds.custom:
                item = fmt.custom_call_item(fmt.new_id("ctc_"), call_id, name, "", "in_progress")
            else:
                namespace = self._kinds.namespaces.get(name)
                item = fmt.function_call_item(fmt.new_id("fc_"), call_id, name, "", "in_progress", namespace)
            self._calls[position] = item
            out += self._open(item)
            item.setdefault("arguments", "")  # a custom call's, until its input is known
        fragment = function.get("arguments")
        if fragment and "arguments" in item:
            item["arguments"] += fragment
            if item is self._item and item["type"] == "function_call":  # a late fragment only joins the arguments
                where = {"item_id": item["id"], "output_index": len(self._output) - 1}
                out += self._event("response.function_call_arguments.delta", {**where, "delta": fragment})
        return out

    def end(self, streamed_tokens: int) -> bytes:
        out = self._close()
        reported = self._usage
        tokens = reported if reported else usage(self.input_tokens, streamed_tokens)
        self.response = self._snapshot("completed", output=self._output, usage=tokens, finish_reason=self._finish)
        kind = "response.completed" if self.response["status"] == "completed" else "response.incomplete"
        return out + self._event(kind, {"response": self.response})

    def error(self, error: GatewayError) -> bytes:
        """``response.failed`` when the backend failed after the start, else (a plugin's filter) ``error``."""
        if len(self._failures) > self._failures_before:
            failed = fmt.failure(error.status, error.message)
            self.response = self._snapshot("failed", output=self._output, error=failed)
            return self._event("response.failed", {"response": self.response})
        return self._event("error", {"code": error.code, "message": error.message, "param": error.param})
