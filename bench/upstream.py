"""A mock OpenAI-compatible upstream that is not the bottleneck: a bare asyncio protocol (uvloop when
installed) answering keep-alive HTTP/1.1 with canned bytes.

- ``POST .../chat/completions`` with ``"stream": true``: a 20-chunk SSE stream (then the usage chunk
  when asked for, and ``data: [DONE]``), the whole answer in ONE write, as a provider's chunks often
  arrive several to a read;
- model ``mock-split``: the same stream, each event its own write, ``SPLIT_GAP`` seconds apart (so
  that each reaches the reader alone);
- without ``stream``: one ``chat.completion`` JSON;
- model ``mock-slow``: the stream sends one chunk per second (for holding many streams open);
- ``GET .../models``: the model list.

``python3 bench/upstream.py --port 9100``
"""

from __future__ import annotations

import argparse
import asyncio
import json

CHUNKS = 20
SPLIT_GAP = 0.002
MODELS_SERVED = ("mock", "mock-split", "mock-slow")
WORDS = [f"w{i:02d} " for i in range(CHUNKS)]
CONTENT = "".join(WORDS)
USAGE = {"prompt_tokens": 12, "completion_tokens": CHUNKS, "total_tokens": 12 + CHUNKS}


def _completion(model: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": USAGE,
            "system_fingerprint": "fp_bench",
        },
        separators=(",", ":"),
    ).encode()


def _events(model: str, with_usage: bool) -> list[bytes]:
    extra = {"usage": None} if with_usage else {}
    out = []
    for i, word in enumerate(WORDS):
        delta = {"role": "assistant", "content": word} if i == 0 else {"content": word}
        finish = "stop" if i == CHUNKS - 1 else None
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
        out.append(b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n")
    if with_usage:
        last = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": model,
                "system_fingerprint": "fp_bench", "choices": [], "usage": USAGE}  # fmt: skip
        out.append(b"data: " + json.dumps(last, separators=(",", ":")).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return out


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: str, content_type: str, length: int | None) -> bytes:
    size = f"Content-Length: {length}\r\n" if length is not None else "Transfer-Encoding: chunked\r\n"
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{size}"
        "x-request-id: req_bench\r\nx-ratelimit-remaining-requests: 9999\r\n\r\n"
    ).encode()


CANNED: dict[tuple[str, bool, bool], list[bytes]] = {}


def _answer(model: str, stream: bool, with_usage: bool) -> list[bytes]:
    """The writes of one answer, built once per kind: a stream in one write, or (``mock-split``,
    ``mock-slow``) one write per event."""
    key = (model, stream, with_usage)
    if key not in CANNED:
        if stream:
            events = [_chunked(e) for e in _events(model, with_usage)] + [b"0\r\n\r\n"]
            writes = [_head("200 OK", "text/event-stream", None) + events[0], *events[1:]]
            CANNED[key] = writes if model in ("mock-split", "mock-slow") else [b"".join(writes)]
        else:
            body = _completion(model)
            CANNED[key] = [_head("200 OK", "application/json", len(body)) + body]
    return CANNED[key]


MODELS = json.dumps(
    {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "bench"} for m in MODELS_SERVED]}
).encode()


class Upstream(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body, self.buffer = self.buffer[end + 4 : end + 4 + length], self.buffer[end + 4 + length :]
            self.handle(head.split(" ", 2), body)

    def handle(self, request_line: list[str], body: bytes) -> None:
        method, path = request_line[0], request_line[1]
        if method == "GET" and path.endswith("/models"):
            self.transport.write(_head("200 OK", "application/json", len(MODELS)) + MODELS)
            return
        request = json.loads(body)
        model = request.get("model", "mock")
        stream = bool(request.get("stream"))
        with_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        writes = _answer(model, stream, with_usage)
        if len(writes) > 1:
            asyncio.get_running_loop().create_task(self.trickle(writes, 1.0 if model == "mock-slow" else SPLIT_GAP))
            return
        self.transport.write(writes[0])

    async def trickle(self, writes: list[bytes], gap: float) -> None:
        for i, data in enumerate(writes):
            if i:
                await asyncio.sleep(gap)
            if self.transport.is_closing():
                return
            self.transport.write(data)


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Upstream, host, port, backlog=4096, reuse_address=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
