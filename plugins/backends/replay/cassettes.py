"""The replay backend's cassette files: one readable JSON document per request key."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from gateway.streaming import decode_items, encode_event

if TYPE_CHECKING:
    from gateway.context import RequestContext

REDACTED = "[redacted]"


class Cassettes:
    """``<dir>/<key>.json``: ``{"key", "request": {"endpoint", "model", "body"}, "answers": {"json"?, "stream"?}}``."""

    def __init__(self, directory: str) -> None:
        self.dir = Path(directory)

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def load(self, key: str) -> dict[str, Any] | None:
        try:
            return orjson.loads(self.path(key).read_bytes())
        except FileNotFoundError:
            return None

    def save(
        self, key: str, endpoint: str, ctx: RequestContext, kind: str, answer: dict[str, Any], secrets: list[str]
    ) -> None:
        """Add (or replace) the ``kind`` answer of ``key``'s cassette, atomically, secrets redacted."""
        assert ctx.body is not None and ctx.deployment is not None
        cassette = self.load(key) or {"key": key, "answers": {}}
        cassette["request"] = {"endpoint": endpoint, "model": ctx.deployment.model, "body": ctx.body}
        cassette["answers"][kind] = {**answer, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        text = orjson.dumps(cassette, option=orjson.OPT_INDENT_2).decode()
        for secret in secrets:
            text = text.replace(orjson.dumps(secret).decode()[1:-1], REDACTED)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(text + "\n", encoding="utf-8")
        tmp.replace(self.path(key))

    @staticmethod
    def events(block: bytes) -> list[dict[str, Any]]:
        """The events of one pass-through SSE block, as recorded."""
        return decode_items(block)

    @staticmethod
    def frame(events: list[dict[str, Any]]) -> bytes:
        """A recorded SSE block as the framed bytes it was replayed from."""
        return b"".join(encode_event(e) for e in events)
