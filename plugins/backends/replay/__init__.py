"""The ``replay`` backend: record another backend's answers into cassettes, replay them without it.

It wraps the backend named by ``target`` (checked at start-up through ``backend_references``,
reached per request through the request's config generation, ``ctx.generation.backends``).
``mode: record`` always calls the target and (re)writes the cassette; ``replay`` answers only from
cassettes (an unrecorded request is a 404 naming the request key and the directory, and the target is
never called); ``auto`` replays what is recorded and records the rest. One readable JSON file per
request in ``dir``, named by ``gateway.formats.request_key`` (``<key>.json``), holds the request and
its answers: ``json`` (a non-streamed answer) and ``stream`` (a streamed one, chunk by chunk, each with
its offset in seconds, replayed with the same chunking and, with ``replay_timing: recorded``, the same
pauses); either answer serves the other mode. A stream is recorded only when it completes.
Cassettes hold the request body and the answer, never headers or URLs; the target's secrets and the
client's key are replaced by ``[redacted]`` wherever they would appear.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from gateway import hookimpl
from gateway.backend import Backend, BackendConfig
from gateway.endpoints import CHAT
from gateway.errors import NotFoundError
from gateway.formats import chat as chat_format
from gateway.formats import completions as completions_format
from gateway.formats.chat import include_usage
from gateway.formats.request_key import request_key
from gateway_plugins.backends.replay.cassettes import Cassettes

if TYPE_CHECKING:
    from gateway.context import RequestContext

ToChunks = Callable[[Any, bool], list[dict[str, Any]]]
ToCompletion = Callable[[list[dict[str, Any]], Any], dict[str, Any]]


class NotRecordedError(NotFoundError):
    code = "cassette_not_found"


class ReplayBackend(Backend):
    type_name = "replay"
    owned_by = "replay"

    class Config(BackendConfig):
        target: str = Field(min_length=1, description="the backend whose answers are recorded")
        mode: Literal["record", "replay", "auto"] = "auto"
        dir: str = Field(min_length=1, description="the cassette directory")
        replay_timing: Literal["recorded", "none"] = "none"

        def backend_references(self) -> dict[str, str]:
            return {"target": self.target}

    config: Config

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.cassettes = Cassettes(self.config.dir)

    def chat(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        return self._answer(ctx, "chat.completions", chat_format.completion_to_chunks, chat_format.chunks_to_completion)

    def completions(self, ctx: RequestContext) -> AsyncIterator[dict[str, Any] | bytes]:
        return self._answer(
            ctx, "completions", completions_format.completion_to_chunks, completions_format.chunks_to_completion
        )

    def _target(self, ctx: RequestContext) -> Backend:
        target = ctx.generation.backends.get(self.config.target)
        if target is None or target is self:
            raise NotFoundError(f"Backend {self.name!r}: its target backend {self.config.target!r} is not configured.")
        return target

    async def _answer(
        self, ctx: RequestContext, endpoint: str, to_chunks: ToChunks, to_completion: ToCompletion
    ) -> AsyncIterator[Any]:
        assert ctx.body is not None and ctx.deployment is not None
        key = request_key(endpoint, ctx.body, ctx.deployment.model)
        kind = "stream" if ctx.stream else "json"
        if self.config.mode != "record":
            cassette = self.cassettes.load(key)
            answers = cassette["answers"] if cassette else {}
            answer = answers.get(kind)
            if answer is None and ctx.stream and answers.get("json"):
                answer = _as_stream(answers["json"], to_chunks, include_usage(ctx.body))
            elif answer is None and not ctx.stream and answers.get("stream"):
                answer = _as_json(answers["stream"], to_completion)
            if answer is not None:
                async for item in self._replay(ctx, answer):
                    yield item
                return
            if self.config.mode == "replay":
                raise NotRecordedError(
                    f"No recording for request key {key} in {self.cassettes.dir} ({kind} answer; "
                    f"backend {self.name!r} is in replay mode). Record it with mode: record or auto."
                )
        target = self._target(ctx)
        method = target.chat if endpoint == CHAT.name else target.completions
        secrets = _secrets(target, ctx)
        if not ctx.stream:
            async for item in method(ctx):
                answer = {"response": item, "usage": ctx.usage}
                self.cassettes.save(key, endpoint, ctx, kind, answer, secrets)
                yield item
                return
        chunks: list[dict[str, Any]] = []
        start = time.monotonic()
        async for item in method(ctx):
            offset = round(time.monotonic() - start, 4)
            chunks.append(
                {"t": offset, "sse": Cassettes.events(item)} if type(item) is bytes else {"t": offset, "chunk": item}
            )
            yield item
        self.cassettes.save(key, endpoint, ctx, kind, {"chunks": chunks, "usage": ctx.usage}, secrets)

    async def _replay(self, ctx: RequestContext, answer: dict[str, Any]) -> AsyncIterator[Any]:
        if answer.get("usage") is not None:
            ctx.usage = answer["usage"]
        if "response" in answer:
            yield answer["response"]
            return
        timed, start = self.config.replay_timing == "recorded", time.monotonic()
        for entry in answer["chunks"]:
            if timed and (wait := entry.get("t", 0) - (time.monotonic() - start)) > 0:
                await asyncio.sleep(wait)
            yield Cassettes.frame(entry["sse"]) if "sse" in entry else entry["chunk"]


def _as_stream(response: dict[str, Any], to_chunks: ToChunks, usage: bool) -> dict[str, Any]:
    """A recorded non-streamed answer replayed as a stream (a recorded stream is replayed as it came)."""
    return {"chunks": [{"chunk": c} for c in to_chunks(response["response"], usage)], "usage": response.get("usage")}


def _as_json(stream: dict[str, Any], to_completion: ToCompletion) -> dict[str, Any]:
    """A recorded stream replayed as one non-streamed answer (its chunks joined)."""
    chunks = [c for e in stream["chunks"] for c in (e["sse"] if "sse" in e else [e["chunk"]])]
    return {"response": to_completion(chunks, stream.get("usage")), "usage": stream.get("usage")}


def _secrets(target: Backend, ctx: RequestContext) -> list[str]:
    """Values never to write: the target's ``SecretStr`` settings, URL passwords, the client's key."""
    from urllib.parse import urlsplit

    from pydantic import SecretStr

    found = [ctx.client_key] if ctx.client_key else []
    for value in vars(target.config).values():
        if isinstance(value, SecretStr):
            found.append(value.get_secret_value())
        elif isinstance(value, str) and "@" in value and "://" in value:
            parts = urlsplit(value)
            found += [parts.password] if parts.password else []
    return [s for s in found if s and len(s) >= 4]


@hookimpl
def gateway_register_backends(register: Callable[[str, type[Backend]], None]) -> None:
    register("replay", ReplayBackend)
