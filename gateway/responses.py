"""The ``/v1/responses`` front door's per-request glue (an ``endpoints.Ingress``): the Responses
request becomes the chat form (``formats.responses``), the caller's earlier turn is loaded once the
caller is known (``previous_response_id``), the answer is a ``response`` object or its typed events
(``formats.responses_stream``), and with ``store`` (the default) it is kept (``state.responses``)
before the client sees its end, so that a next turn can continue it at once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import structlog

from gateway.context import RequestContext
from gateway.errors import NotFoundError
from gateway.formats import responses as fmt
from gateway.formats.responses_stream import StreamEncoder
from gateway.formats.responses_tools import tool_kinds
from gateway.state import StoreUnavailable
from gateway.state.responses import StoredResponses

log = structlog.get_logger("gateway")


def caller(ctx: RequestContext) -> str:
    """Whose stored responses a request sees: its API key's name, else the key it sent, else anyone's."""
    if ctx.principal is not None:
        return "principal:" + ctx.principal.name
    key = ctx.client_key or ctx.request.headers.get("x-api-key")
    return "key:" + key if key else "anonymous"


def stored(ctx: RequestContext) -> StoredResponses:
    """The caller's stored responses."""
    return StoredResponses(ctx.state_store, ctx.config.responses, caller(ctx))


def not_found(response_id: str, param: str | None = None) -> NotFoundError:
    kind = "Previous response" if param else "Response"
    return NotFoundError(f"{kind} with id '{response_id}' not found.", param=param, code=None)


class ResponsesIngress:
    """One ``POST /v1/responses`` request (see the module docstring)."""

    __slots__ = ("ctx", "encoder_", "history", "request", "response", "response_id")

    def __init__(self, ctx: RequestContext, body: dict[str, Any]) -> None:
        self.ctx, self.request = ctx, body
        self.response_id = fmt.new_id("resp_")
        self.history: list[dict[str, Any]] = []  # the conversation before this turn (chat messages)
        self.response: dict[str, Any] | None = None
        self.encoder_: StreamEncoder | None = None

    def chat_body(self) -> dict[str, Any]:
        return fmt.to_chat(self.request, [])

    async def admitted(self, ctx: RequestContext) -> None:
        """Load the conversation ``previous_response_id`` names (404 when the caller has none by that id)."""
        previous = self.request.get("previous_response_id")
        if not previous:
            return
        record = await stored(ctx).get(previous)
        if record is None:
            raise not_found(previous, "previous_response_id")
        self.history = record["messages"]
        body = ctx.body
        assert body is not None
        at = 1 if self.request.get("instructions") else 0  # after this turn's instructions
        body["messages"][at:at] = self.history

    def _model(self) -> str:
        return self.ctx.model or str(self.request.get("model") or "")

    def answer(self, completion: Mapping[str, Any]) -> dict[str, Any]:
        """The ``response`` object for a ``chat.completion``."""
        output, finish = fmt.output_items(completion, tool_kinds(self.request))
        self.response = fmt.response_object(
            self.request,
            self.response_id,
            self._model(),
            output=output,
            usage=completion.get("usage") or self.ctx.usage,
            finish_reason=finish,
        )
        return self.response

    def encoder(self) -> StreamEncoder:
        ctx = self.ctx
        self.encoder_ = StreamEncoder(
            self.request, self.response_id, self._model(), ctx.body or {}, ctx.upstream_errors
        )
        return self.encoder_

    async def finished(self) -> None:
        """Keep the response and its conversation, unless ``store`` is false; a store that is down
        under ``on_error: allow`` costs the record (logged), under ``deny`` the request."""
        response = self.response if self.response is not None else getattr(self.encoder_, "response", None)
        if response is None or self.request.get("store") is False or response["status"] == "failed":
            return
        messages = self.history + fmt.input_messages(self.request.get("input"))
        reply = fmt.chat_reply(response["output"])
        if reply is not None:
            messages.append(reply)
        try:
            kept = await stored(self.ctx).put(self.response_id, {"response": response, "messages": messages})
        except StoreUnavailable:
            if self.ctx.state_store.config.on_error == "deny":
                raise
            log.warning("response not stored: the state store is unavailable", response_id=self.response_id)
            return
        if not kept:
            log.warning("response not stored: larger than responses.max_response_bytes", response_id=self.response_id)
