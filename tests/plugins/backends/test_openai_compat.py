"""The openai_compat backend against a fake OpenAI API on 127.0.0.1 (tests/upstreams/openai.py)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import unquote

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway import hookimpl
from gateway.context import RequestContext
from tests.upstreams.openai import OpenAIUpstream, Reply

KEY = "sk-upstream-secret-1234567890"
CLIENT_KEY = "sk-client-own-key-0987654321"
MESSAGES = [{"role": "user", "content": "Hi"}]


def compat_config(base_url: str, models: Any = None, **options: Any) -> dict[str, Any]:
    backend = {"name": "up", "type": "openai_compat", "base_url": base_url, "api_key": KEY, "timeout": 10}
    return {
        "backends": [{**backend, **options}],
        "models": models if models is not None else [{"name": "*", "backend": "up"}],
    }


class Usage:
    """Records ``ctx.usage`` and the error of every finished request."""

    def __init__(self) -> None:
        self.seen: list[tuple[Any, BaseException | None]] = []

    @hookimpl
    def gateway_request_finished(self, ctx: RequestContext, error: BaseException | None) -> None:
        self.seen.append((ctx.usage, error))


async def start(gateway: Any, upstream: OpenAIUpstream, plugins: Any = (), **options: Any) -> TestClient:
    return await gateway(compat_config(upstream.base_url, **options), plugins)


def chat(stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": stream, **extra}


def events(raw: bytes) -> list[bytes]:
    """The data payloads of an SSE body, in order."""
    return [e.removeprefix(b"data: ") for e in raw.split(b"\n\n") if e]


# Requests -------------------------------------------------------------------------------------


async def test_the_body_goes_upstream_untouched_with_the_key(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream, headers={"OpenAI-Organization": "org-1"})
    body = chat(temperature=0.2, some_new_parameter={"nested": [1, 2]}, user="u-1")
    resp = await client.post("/v1/chat/completions", json=body, headers={"Authorization": "Bearer ignored"})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "Hello from upstream"
    assert answer["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
    sent = upstream.last
    assert sent.path == "/v1/chat/completions"
    assert sent.body == body
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["OpenAI-Organization"] == "org-1"
    assert sent.headers["Content-Type"] == "application/json"  # servers with strict JSON extractors (TGI's axum)


async def test_a_configured_content_type_is_sent_once(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream, headers={"content-type": "application/json; charset=utf-8"})
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    assert upstream.last.headers["Content-Type"] == "application/json; charset=utf-8"


async def test_a_mapped_model_goes_upstream_and_the_answer_names_the_client_model(
    gateway: Any, upstream: OpenAIUpstream
) -> None:
    client = await start(gateway, upstream, models=[{"name": "fast", "backend": "up", "model": "gpt-4o-mini"}])
    resp = await client.post("/v1/chat/completions", json={**chat(), "model": "fast"})
    assert (await resp.json())["model"] == "fast"
    assert upstream.last.body["model"] == "gpt-4o-mini"

    resp = await client.post("/v1/chat/completions", json={**chat(stream=True), "model": "fast"})
    chunks = [orjson.loads(e) for e in events(await resp.read())[:-1]]
    assert chunks and {c["model"] for c in chunks} == {"fast"}


async def test_the_upstream_model_name_is_kept_when_the_client_asked_for_it(
    gateway: Any, upstream: OpenAIUpstream
) -> None:
    upstream.reply(Reply(model="gpt-4o-mini-2024-07-18"))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert (await resp.json())["model"] == "gpt-4o-mini-2024-07-18"  # as OpenAI itself answers


@pytest.mark.parametrize(
    ("forward", "sent", "expected"),
    [
        (True, {"Authorization": f"Bearer {CLIENT_KEY}"}, f"Bearer {CLIENT_KEY}"),
        (True, {"Authorization": f"bearer{CLIENT_KEY}"}, f"Bearer {CLIENT_KEY}"),
        (True, {}, f"Bearer {KEY}"),
        (False, {"Authorization": f"Bearer {CLIENT_KEY}"}, f"Bearer {KEY}"),
    ],
)
async def test_key_modes(
    gateway: Any, upstream: OpenAIUpstream, forward: bool, sent: dict[str, str], expected: str
) -> None:
    client = await start(gateway, upstream, forward_client_key=forward)
    resp = await client.post("/v1/chat/completions", json=chat(), headers=sent)
    assert resp.status == 200
    assert upstream.last.headers["Authorization"] == expected


async def test_no_key_sends_no_authorization(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream, api_key=None)
    await client.post("/v1/chat/completions", json=chat())
    assert "Authorization" not in upstream.last.headers


async def test_azure_deployment_urls_api_version_and_key_header(gateway: Any, upstream: OpenAIUpstream) -> None:
    base = upstream.base_url.removesuffix("/v1") + "/openai"
    config = compat_config(
        base,
        models=[{"name": "gpt-4o-mini", "backend": "up", "model": "my-deployment"}],
        deployment_urls=True,
        api_version="2024-06-01",
        api_key_header="api-key",
    )
    client = await gateway(config)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200, await resp.text()
    sent = upstream.last
    assert sent.path == "/openai/deployments/my-deployment/chat/completions"
    assert sent.query == {"api-version": "2024-06-01"}
    assert sent.headers["api-key"] == KEY and "Authorization" not in sent.headers


@pytest.mark.parametrize("model", ["../../../v1", "../x?y=", "..", "gpt#frag", "a/b"])
async def test_a_model_name_never_leaves_its_url_segment(aiohttp_server: Any, gateway: Any, model: str) -> None:
    """Deployment URLs with a pattern route put the client's model name in the path: it is one
    segment, escaped, so ``..``, ``/``, ``?`` or ``#`` cannot send the gateway's key to another path."""
    from aiohttp import web

    seen: list[str] = []

    async def anywhere(request: web.Request) -> web.Response:
        seen.append(request.raw_path)
        return web.json_response(
            {"error": {"message": "The API deployment for this resource does not exist."}}, status=404
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anywhere)
    server = await aiohttp_server(app)
    client = await gateway(compat_config(str(server.make_url("/openai")), deployment_urls=True))
    resp = await client.post("/v1/chat/completions", json=chat(model=model))
    assert resp.status == 404
    if model == "..":
        assert seen == []  # a model that cannot be a segment is not found, and nothing is sent
    else:
        (path,) = seen
        segment = path.removeprefix("/openai/deployments/").removesuffix("/chat/completions")
        assert "/" not in segment and unquote(segment) == model, path


async def test_upstream_rate_limit_headers_and_request_id_are_forwarded(gateway: Any, upstream: OpenAIUpstream) -> None:
    upstream.default = Reply(headers={"x-ratelimit-remaining-requests": "99", "x-ratelimit-limit-tokens": "1000"})
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.headers["x-ratelimit-remaining-requests"] == "99"
    assert resp.headers["x-ratelimit-limit-tokens"] == "1000"
    assert resp.headers["x-request-id"] == "req_1"  # the provider's id, for its support
    assert resp.headers["x-gateway-request-id"] != "req_1"

    resp = await client.post("/v1/chat/completions", json=chat(stream=True), headers={"X-Request-ID": "mine"})
    await resp.read()
    assert resp.headers["x-request-id"] == "mine"  # an id the client sent is echoed
    assert resp.headers["x-gateway-request-id"] not in ("mine", "req_1")  # the gateway's own, always
    assert resp.headers["x-ratelimit-remaining-requests"] == "99"


# Streams --------------------------------------------------------------------------------------


async def test_a_stream_passes_the_upstream_events_through_byte_for_byte(
    gateway: Any, upstream: OpenAIUpstream
) -> None:
    client = await start(gateway, upstream)
    body = chat(stream=True, stream_options={"include_usage": True})
    resp = await client.post("/v1/chat/completions", json=body)
    raw = await resp.read()
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert upstream.last.body == body

    direct = await (await client.session.post(upstream.base_url + "/chat/completions", json=body)).read()
    assert raw == direct  # the same events, [DONE] included
    assert raw.endswith(b"data: [DONE]\n\n") and raw.count(b"[DONE]") == 1
    assert orjson.loads(events(raw)[-2])["usage"]["total_tokens"] == 15


async def test_usage_is_counted_for_a_stream_that_did_not_ask_for_it(gateway: Any, upstream: OpenAIUpstream) -> None:
    usage = Usage()
    client = await start(gateway, upstream, plugins=[usage])
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    raw = await resp.read()
    assert upstream.last.body["stream_options"] == {"include_usage": True}  # the gateway asked for it
    assert b'"usage"' not in raw  # ... and the client sees the stream it asked for
    chunks = [orjson.loads(e) for e in events(raw)[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from upstream"
    assert usage.seen[-1] == ({"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}, None)


async def test_stream_usage_off_leaves_the_request_alone(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream, stream_usage=False)
    await (await client.post("/v1/chat/completions", json=chat(stream=True))).read()
    assert "stream_options" not in upstream.last.body


@pytest.mark.parametrize("reply", [Reply(crlf=True), Reply(one_write=True), Reply(chunk_delay=0.01)])
async def test_any_framing_reaches_the_client_as_whole_events(
    gateway: Any, upstream: OpenAIUpstream, reply: Reply
) -> None:
    upstream.default = reply
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    raw = await resp.read()
    assert b"\r" not in raw
    payloads = events(raw)
    assert payloads[-1] == b"[DONE]"
    text = "".join(orjson.loads(p)["choices"][0]["delta"].get("content") or "" for p in payloads[:-1])
    assert text == "Hello from upstream"


async def http_chunks(client: TestClient, body: dict[str, Any]) -> list[bytes]:
    """The HTTP chunks of the gateway's answer as they come on the wire: one per write."""
    import asyncio

    reader, writer = await asyncio.open_connection(client.host, client.port)
    data = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(data), data)
    )
    raw = await reader.read()
    writer.close()
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    pieces = []
    while True:
        size, _, rest = rest.partition(b"\r\n")
        if int(size, 16) == 0:
            return pieces
        pieces.append(rest[: int(size, 16)])
        rest = rest[int(size, 16) + 2 :]


@pytest.mark.parametrize("one_write", [True, False])
async def test_events_that_arrive_together_go_out_together_each_whole(
    gateway: Any, upstream: OpenAIUpstream, one_write: bool
) -> None:
    """Delivered the way the upstream delivered it: a stream that came in one read leaves in one
    write, [DONE] and the end of the response with it; one whose events came one by one leaves one
    by one, each event whole."""
    upstream.default = Reply(one_write=one_write, chunk_delay=0 if one_write else 0.02)
    client = await start(gateway, upstream)
    pieces = await http_chunks(client, chat(stream=True))
    if one_write:
        (piece,) = pieces
        assert piece.endswith(b"\n\ndata: [DONE]\n\n") and piece.count(b"data: ") == 6  # role, 3 words, stop, [DONE]
    else:
        assert len(pieces) == 6 and pieces[-1] == b"data: [DONE]\n\n"
        assert all(p.startswith(b"data: {") and p.endswith(b"}\n\n") and p.count(b"\n\n") == 1 for p in pieces[:-1])


def delta_event(content: str | None, finish: str | None = None, end: bytes = b"\n\n") -> bytes:
    delta = {} if content is None else {"content": content}
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini", "choices": [choice]}
    return b"data: " + orjson.dumps(chunk) + end


async def raw_sse_upstream(aiohttp_server: Any, *writes: bytes) -> str:
    """An upstream that answers every chat request with ``writes``, as they are; its base URL."""
    from aiohttp import web

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for data in writes:
            await response.write(data)
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return str((await aiohttp_server(app)).make_url("/v1"))


@pytest.mark.parametrize(
    "done",
    [b"data: [DONE]\n\n", b"data:[DONE]\n\n", b"data: [DONE]\r\n\r\n", b"data: [DONE]\n"],
    ids=["spaced", "unspaced", "crlf", "no-blank-line"],
)
async def test_done_is_an_event_of_its_own_never_text_in_a_chunk(
    aiohttp_server: Any, gateway: Any, done: bytes
) -> None:
    """A reply that talks about SSE (``data: [DONE]`` in its text) is neither cut short nor split
    mid-JSON; the [DONE] event ends the stream however it is written."""
    talk = "The stream ends with data: [DONE]\n\n and then"
    base_url = await raw_sse_upstream(
        aiohttp_server, delta_event(talk), delta_event(" it closes."), delta_event(None, "stop") + done
    )
    client = await gateway(compat_config(base_url, stream_usage=False))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    payloads = events(await resp.read())
    assert payloads[-1] == b"[DONE]" and payloads.count(b"[DONE]") == 1
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == talk + " it closes."
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_an_upstream_refusing_stream_options_is_asked_without_them(aiohttp_server: Any, gateway: Any) -> None:
    """Azure before 2024-10-21 (and others) refuse ``stream_options``: the gateway added them itself,
    so it retries at once without them and remembers; a client that asked for them gets the 400."""
    from aiohttp import web

    bodies: list[dict[str, Any]] = []

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        bodies.append(body)
        if "stream_options" in body:
            error = {
                "message": "Unrecognized request argument supplied: stream_options",
                "type": "invalid_request_error",
            }
            return web.json_response({"error": {**error, "param": None, "code": None}}, status=400)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(delta_event("Hi") + delta_event(None, "stop") + b"data: [DONE]\n\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    client = await gateway(compat_config(str((await aiohttp_server(app)).make_url("/v1"))))
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=chat(stream=True))
        assert resp.status == 200
        assert events(await resp.read())[-1] == b"[DONE]"
    assert ["stream_options" in b for b in bodies] == [True, False, False]  # refused once, then never sent
    resp = await client.post("/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True}))
    assert resp.status == 400 and "stream_options" in (await error_of(resp))["message"]


async def test_a_json_answer_to_a_stream_request_is_streamed(gateway: Any, upstream: OpenAIUpstream) -> None:
    upstream.default = Reply(json_for_stream=True)
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    payloads = events(await resp.read())
    assert payloads[-1] == b"[DONE]"
    chunks = [orjson.loads(p) for p in payloads[:-1]]
    assert chunks[0]["object"] == "chat.completion.chunk"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "Hello from upstream"


async def test_the_pass_through_path_parses_no_json_per_chunk(
    gateway: Any, upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A regression guard on cost that does not depend on timing: orjson.loads calls are counted."""
    import gateway.streaming as streaming
    import gateway_plugins.backends.openai_compat as compat
    import gateway_plugins.backends.openai_compat.stream as compat_stream

    calls = []

    class Counting:
        dumps = staticmethod(orjson.dumps)
        JSONDecodeError = orjson.JSONDecodeError

        @staticmethod
        def loads(data: Any) -> Any:
            calls.append(data)
            return orjson.loads(data)

    monkeypatch.setattr(compat, "orjson", Counting)
    monkeypatch.setattr(compat_stream, "orjson", Counting)
    monkeypatch.setattr(streaming, "orjson", Counting)
    upstream.default = Reply(content=" ".join(["word"] * 40))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert len(events(await resp.read())) == 43  # role, 40 words, finish, [DONE]
    assert len(calls) == 1  # the usage event, once, at the end


def test_a_block_is_read_event_by_event_only_from_its_usage_event_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """A regression guard on cost: the events before the usage event of a block go through unsplit."""
    import gateway_plugins.backends.openai_compat as compat
    import gateway_plugins.backends.openai_compat.stream as compat_stream

    read = []
    monkeypatch.setattr(
        compat_stream, "_data", lambda event, real=compat_stream._data: read.append(event) or real(event)
    )
    backend = compat.OpenAICompatBackend(
        compat.OpenAICompatConfig(name="up", type="openai_compat", base_url="http://h/v1")
    )
    ctx = RequestContext(request=None, request_id="t", generation=None, stream=True)  # type: ignore[arg-type]
    content = b"".join(b'data: {"choices":[{"delta":{"content":"w%d"}}],"usage":null}\n\n' % i for i in range(40))
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":40,"total_tokens":43}}\n\n'
    events = compat_stream.Events(backend, ctx, True, None, ())
    assert events.feed(content + usage + b"data: [DONE]\n\n") == content.replace(b',"usage":null', b"")
    assert events.done and events.failure is None
    assert ctx.usage == {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}
    assert len(read) == 1


async def test_a_renamed_stream_names_the_client_model_in_every_block_whatever_the_upstream_writes(
    aiohttp_server: Any, gateway: Any
) -> None:
    """The rename learns the upstream's field from the first block and replaces it as bytes after;
    a block naming another model, or spacing it otherwise, is still rewritten."""
    spaced = delta_event("c").replace(b'"model":"gpt-4o-mini"', b'"model" : "gpt-4o-mini-2024"')
    writes = [delta_event("a"), delta_event("b") + delta_event("c").replace(b"gpt-4o-mini", b"gpt-4o"), spaced]
    base_url = await raw_sse_upstream(aiohttp_server, *writes, delta_event(None, "stop") + b"data: [DONE]\n\n")
    client = await gateway(compat_config(base_url, [{"name": "fast", "backend": "up", "model": "gpt-4o-mini"}]))
    resp = await client.post("/v1/chat/completions", json={**chat(stream=True), "model": "fast"})
    chunks = [orjson.loads(e) for e in events(await resp.read())[:-1]]
    assert [c["model"] for c in chunks] == ["fast"] * 5
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "abcc"


@pytest.mark.parametrize(
    "garbage", [b"hello world", b"data: {not json", b"data: [1, 2]", b"event: x\nhello", b"event: message\nid: 7"]
)
async def test_garbage_from_the_upstream_ends_the_stream_with_an_error_event(
    aiohttp_server: Any, gateway: Any, garbage: bytes
) -> None:
    """What is not ``data: {...}`` never reaches the client: the events before it do, then the
    gateway's bad_gateway error event, no [DONE]; with the openai SDK the client gets an APIError
    (not a JSON decode error)."""
    from openai import APIError, AsyncOpenAI

    base_url = await raw_sse_upstream(
        aiohttp_server, delta_event("Hi"), garbage + b"\n\n" + delta_event(" there"), b"data: [DONE]\n\n"
    )
    client = await gateway(compat_config(base_url))
    raw = await (await client.post("/v1/chat/completions", json=chat(stream=True))).read()
    payloads = events(raw)
    assert garbage not in raw and b"[DONE]" not in raw and b"there" not in raw
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["content"] == "Hi"
    error = orjson.loads(payloads[-1])["error"]
    assert error["code"] == "bad_gateway" and "'up'" in error["message"] and "malformed" in error["message"]

    oai = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    with pytest.raises(APIError, match="malformed"):
        async for _ in await oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True):  # type: ignore[arg-type]
            pass
    await oai.close()


@pytest.mark.parametrize("before", [b":::\n\n", b": keep-alive\n\n", b"event: message\nid: 7\nretry: 10\n"])
async def test_comments_and_sse_fields_are_not_garbage(aiohttp_server: Any, gateway: Any, before: bytes) -> None:
    """``:::`` is an SSE comment (a line starting with a colon): clients skip it, so it passes, as do
    a keep-alive comment and the fields an event may carry beside its data."""
    from openai import AsyncOpenAI

    base_url = await raw_sse_upstream(
        aiohttp_server, delta_event("Hi"), before + delta_event(" there"), b"data: [DONE]\n\n"
    )
    client = await gateway(compat_config(base_url, stream_usage=False))
    oai = AsyncOpenAI(base_url=str(client.make_url("/v1")), api_key="unused", max_retries=0)
    stream = await oai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True)  # type: ignore[arg-type]
    assert "".join([c.choices[0].delta.content or "" async for c in stream]) == "Hi there"
    await oai.close()


async def big_event_upstream(aiohttp_server: Any, size: int) -> str:
    """An upstream whose one event of ``size`` bytes of content arrives in 64 KiB writes."""
    from aiohttp import web

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        head, tail = delta_event("<>").split(b"<>")
        piece = b"x" * 65536
        try:
            await response.write(head)
            for _ in range(size // len(piece)):
                if request.transport is None or request.transport.is_closing():
                    return response  # the gateway gave up on it
                await response.write(piece)
            await response.write(tail + delta_event(None, "stop") + b"data: [DONE]\n\n")
        except ConnectionError:
            pass
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat_completions)
    return str((await aiohttp_server(app)).make_url("/v1"))


@pytest.mark.parametrize("megabytes", [20, 80])
async def test_an_event_over_max_event_size_ends_the_stream_with_an_error_event(
    aiohttp_server: Any, gateway: Any, megabytes: int
) -> None:
    base_url = await big_event_upstream(aiohttp_server, megabytes << 20)
    client = await gateway(compat_config(base_url, timeout=10))
    raw = await (await client.post("/v1/chat/completions", json=chat(stream=True))).read()
    (payload,) = events(raw)
    error = orjson.loads(payload)["error"]
    assert error["code"] == "bad_gateway" and f"over {8 << 20} bytes" in error["message"]


async def test_a_big_event_under_max_event_size_passes_whole(aiohttp_server: Any, gateway: Any) -> None:
    base_url = await big_event_upstream(aiohttp_server, 3 << 20)
    client = await gateway(compat_config(base_url, max_event_size=4 << 20, stream_usage=False, timeout=10))
    payloads = events(await (await client.post("/v1/chat/completions", json=chat(stream=True))).read())
    assert payloads[-1] == b"[DONE]" and len(orjson.loads(payloads[0])["choices"][0]["delta"]["content"]) == 3 << 20


# Failures -------------------------------------------------------------------------------------


async def error_of(resp: Any) -> dict[str, Any]:
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


async def test_an_upstream_4xx_keeps_its_status_and_details(gateway: Any, upstream: OpenAIUpstream) -> None:
    error = {
        "error": {
            "message": "This model's maximum context length is 128000 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    upstream.reply(Reply(status=400, error=error))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 400
    assert await error_of(resp) == error["error"]


@pytest.mark.parametrize("status", [401, 403])
@pytest.mark.parametrize("stream", [False, True])
async def test_an_upstream_401_to_the_gateways_own_key_is_a_502_naming_its_credentials(
    gateway: Any, upstream: OpenAIUpstream, status: int, stream: bool
) -> None:
    """Not ``invalid_api_key``: the client's key is fine, the backend's configured one is not; the
    key the upstream echoes never shows."""
    error = {"error": {"message": f"Incorrect API key provided: {KEY}.", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}}  # fmt: skip
    upstream.reply(Reply(status=status, error=error))
    client = await start(gateway, upstream, forward_client_key=True)  # no client key: the backend's own went
    resp = await client.post("/v1/chat/completions", json=chat(stream=stream))
    assert resp.status == 502
    found = await error_of(resp)
    assert found["code"] == "upstream_auth_error" and found["type"] == "upstream_error"
    assert f"Backend 'up' refused the gateway's credentials for it (HTTP {status})" in found["message"]
    assert KEY not in found["message"] and "***" in found["message"]


async def test_an_upstream_401_to_a_forwarded_client_key_stays_a_401(gateway: Any, upstream: OpenAIUpstream) -> None:
    error = {"error": {"message": f"Incorrect API key provided: {CLIENT_KEY}.", "type": "invalid_request_error",
                       "param": None, "code": "invalid_api_key"}}  # fmt: skip
    upstream.reply(Reply(status=401, error=error))
    client = await start(gateway, upstream, forward_client_key=True)
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {CLIENT_KEY}"})
    assert resp.status == 401
    found = await error_of(resp)
    assert found["code"] == "invalid_api_key" and CLIENT_KEY not in found["message"]


async def test_a_key_in_configured_headers_is_scrubbed_too(gateway: Any, upstream: OpenAIUpstream) -> None:
    """Azure's key given as a header (``api-key``) rather than as ``api_key``, echoed in a 401."""
    error = {"error": {"message": f"Access denied: key {KEY} is invalid.", "code": "401"}}
    upstream.reply(Reply(status=401, error=error))
    client = await start(gateway, upstream, api_key=None, headers={"api-key": KEY})
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502 and upstream.last.headers["api-key"] == KEY
    assert (await error_of(resp))["message"].endswith("the upstream said: Access denied: key *** is invalid.")


async def test_an_upstream_429_keeps_retry_after(gateway: Any, upstream: OpenAIUpstream) -> None:
    upstream.reply(Reply(status=429, headers={"Retry-After": "7"}))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 429 and resp.headers["Retry-After"] == "7"
    assert (await error_of(resp))["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("status", "error"), [(500, None), (503, "upstream connect error"), (529, None)])
async def test_an_upstream_5xx_is_a_502_naming_the_backend(
    gateway: Any, upstream: OpenAIUpstream, status: int, error: Any
) -> None:
    upstream.reply(Reply(status=status, error=error))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert resp.status == 502
    found = await error_of(resp)
    assert found["code"] == "bad_gateway" and "'up'" in found["message"] and str(status) in found["message"]


async def test_a_refused_connection_is_a_502(gateway: Any) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await gateway(compat_config(f"http://127.0.0.1:{port}/v1"))
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502
    found = await error_of(resp)
    assert "'up' is unreachable" in found["message"] and KEY not in found["message"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_silent_upstream_is_a_504(gateway: Any, upstream: OpenAIUpstream, stream: bool) -> None:
    upstream.reply(Reply(hang=True))
    client = await start(gateway, upstream, timeout=0.5)
    resp = await client.post("/v1/chat/completions", json=chat(stream=stream))
    assert resp.status == 504
    assert (await error_of(resp))["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        (Reply(die_after=3), "bad_gateway"),
        (Reply(hang_after=3), "upstream_timeout"),
        (Reply(end_after=3), "bad_gateway"),  # a clean end before any finish_reason
        (Reply(error_event_after=3), "bad_gateway"),
    ],
)
async def test_a_stream_that_breaks_ends_with_one_error_event(
    gateway: Any, upstream: OpenAIUpstream, reply: Reply, code: str
) -> None:
    upstream.reply(reply)
    usage = Usage()
    client = await start(gateway, upstream, plugins=[usage], timeout=0.5)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert resp.status == 200
    payloads = events(await resp.read())
    assert b"[DONE]" not in payloads
    last = orjson.loads(payloads[-1])
    assert last["error"]["code"] == code and "'up'" in last["error"]["message"]
    assert sum(b'"error"' in p for p in payloads) == 1
    assert usage.seen[-1][1] is not None


@pytest.mark.parametrize("crlf", [False, True])
async def test_a_stream_that_ends_after_its_finish_without_done_is_complete(
    gateway: Any, upstream: OpenAIUpstream, crlf: bool
) -> None:
    """Older llama.cpp servers end the stream after the finish_reason chunk without ``[DONE]``: the
    reply is complete, and the client gets the gateway's own ``[DONE]``."""
    upstream.reply(Reply(content="all of it", done=False, crlf=crlf))
    client = await start(gateway, upstream)
    resp = await client.post("/v1/chat/completions", json=chat(stream=True, n=1))
    payloads = events(await resp.read())
    assert payloads[-1] == b"[DONE]" and not any(b'"error"' in p for p in payloads)
    assert orjson.loads(payloads[-2])["choices"][0]["finish_reason"] == "stop"
    upstream.reply(Reply(content="all of it", done=False))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True, n=2))  # one choice of two finished
    assert orjson.loads(events(await resp.read())[-1])["error"]["code"] == "bad_gateway"


async def test_a_chunk_carrying_an_error_ends_the_stream_with_it(aiohttp_server: Any, gateway: Any) -> None:
    """OpenRouter reports a failure mid-stream as a chunk with a top-level ``error`` (its choice
    finishing with "error", not an OpenAI reason), then [DONE]: the client gets the error event."""
    failed = {
        "id": "gen-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "error": {"code": "server_error", "message": "Provider disconnected unexpectedly"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    base_url = await raw_sse_upstream(
        aiohttp_server, delta_event("Half an ans"), b"data: " + orjson.dumps(failed) + b"\n\n" + b"data: [DONE]\n\n"
    )
    client = await gateway(compat_config(base_url))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    payloads = events(await resp.read())
    assert b"[DONE]" not in payloads and b'"finish_reason":"error"' not in b"".join(payloads)
    assert orjson.loads(payloads[0])["choices"][0]["delta"]["content"] == "Half an ans"
    error = orjson.loads(payloads[-1])["error"]
    assert error["code"] == "bad_gateway" and "Provider disconnected unexpectedly" in error["message"]


async def test_a_non_json_answer_is_a_502(aiohttp_server: Any, gateway: Any) -> None:
    from aiohttp import web

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<html>proxy</html>")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", html)
    server = await aiohttp_server(app)
    client = await gateway(compat_config(str(server.make_url("/v1"))))
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 502 and "'up'" in (await error_of(resp))["message"]


# Models ---------------------------------------------------------------------------------------


async def test_models_are_listed_from_the_upstream_and_cached(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream)
    for _ in range(3):
        listing = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in listing["data"]] == upstream.models
    assert sum(r.path == "/v1/models" for r in upstream.requests) == 1
    assert listing["data"][0] == {"id": "gpt-4o-mini", "object": "model", "created": 1700000000, "owned_by": "openai"}
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_a_failing_upstream_listing_serves_the_cached_list(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream, models_ttl=0)
    first = await (await client.get("/v1/models")).json()
    upstream.models_status = 500
    again = await (await client.get("/v1/models")).json()
    assert again == first and sum(r.path == "/v1/models" for r in upstream.requests) == 2


async def test_a_failing_upstream_does_not_break_the_other_backends(gateway: Any, upstream: OpenAIUpstream) -> None:
    upstream.models_status = 503
    config = compat_config(upstream.base_url, models=[{"name": "*", "backend": "up"}])
    config["backends"].append({"name": "mock", "type": "mock", "models": ["mock-gpt-model"]})
    config["models"].insert(0, {"name": "mock-gpt-model", "backend": "mock"})
    client = await gateway(config)
    resp = await client.get("/v1/models")
    assert resp.status == 200
    assert [m["id"] for m in (await resp.json())["data"]] == ["mock-gpt-model"]


async def test_a_failed_listing_is_remembered_briefly(gateway: Any, upstream: OpenAIUpstream) -> None:
    """A down upstream is asked once per MODELS_RETRY, not by every /v1/models (each waiting on it)."""
    upstream.models_status = 503
    client = await start(gateway, upstream)
    for _ in range(3):
        assert (await client.get("/v1/models")).status == 200
    assert sum(r.path == "/v1/models" for r in upstream.requests) == 1


async def test_a_hanging_listing_is_bounded_by_models_timeout(
    aiohttp_server: Any, gateway: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not by the backend's timeout (long, for generations): /v1/models lists the other backends."""
    import asyncio

    from aiohttp import web

    from gateway.upstream import errors as gateway_upstream

    async def silent(request: web.Request) -> web.Response:
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        return web.Response()

    app = web.Application()
    app.router.add_get("/v1/models", silent)
    server = await aiohttp_server(app)
    monkeypatch.setattr(gateway_upstream, "MODELS_TIMEOUT", 0.2)
    config = compat_config(str(server.make_url("/v1")), timeout=30)
    config["backends"].append({"name": "mock", "type": "mock", "models": ["mock-gpt-model"]})
    config["models"].insert(0, {"name": "mock-gpt-model", "backend": "mock"})
    client = await gateway(config)
    resp = await asyncio.wait_for(client.get("/v1/models"), 5)
    assert [m["id"] for m in (await resp.json())["data"]] == ["mock-gpt-model"]


async def test_configured_models_are_listed_without_asking(gateway: Any, upstream: OpenAIUpstream) -> None:
    config = compat_config(upstream.base_url)
    config["backends"][0]["models"] = ["llama3"]
    client = await gateway(config)
    listing = await (await client.get("/v1/models")).json()
    assert [m["id"] for m in listing["data"]] == ["llama3"]
    assert not [r for r in upstream.requests if r.path == "/v1/models"]


async def test_info_never_shows_the_key(gateway: Any, upstream: OpenAIUpstream) -> None:
    client = await start(gateway, upstream)
    text = await (await client.get("/info")).text()
    assert KEY not in text and "openai_compat" in text


def test_a_bad_base_url_fails_at_start_up() -> None:
    from gateway.config import ConfigError
    from gateway.testing import make_app

    with pytest.raises(ConfigError, match=r"backends\[0\]\.base_url: .*http://"):
        make_app(compat_config("api.openai.com/v1"))


MIB = 1024 * 1024


async def test_an_answer_over_max_response_size_is_a_502_read_no_further(
    gateway: Any, upstream: OpenAIUpstream
) -> None:
    """64 MiB sent in pieces against a 1 MiB cap: the lean client stops reading at the cap and closes
    the connection (the upstream gets no further than what the sockets buffer); a declared
    Content-Length over the cap is refused before reading; the next request is served."""
    client = await start(gateway, upstream, max_response_size=MIB)
    upstream.reply(Reply(padding=64 * MIB), Reply(content="x" * (2 * MIB)))
    for _ in range(2):
        resp = await client.post("/v1/chat/completions", json=chat())
        error = await error_of(resp)
        assert resp.status == 502 and error["code"] == "bad_gateway"
        assert error["message"] == "Backend 'up' answered with more than 1048576 bytes (its max_response_size)."
    assert upstream.padded.sent < 16 * MIB
    resp = await client.post("/v1/chat/completions", json=chat())
    assert resp.status == 200


async def test_max_response_size_has_a_sane_default_and_floor(gateway: Any, upstream: OpenAIUpstream) -> None:
    from gateway.config import ConfigError

    client = await start(gateway, upstream)
    upstream.reply(Reply(padding=4 * MIB))  # far above any chat answer, far below the default
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
    with pytest.raises(ConfigError, match="max_response_size"):
        await start(gateway, upstream, max_response_size=10)
