"""The http_template backend against fake chat APIs on 127.0.0.1 (tests/upstreams/chat_api.py)."""

from __future__ import annotations

import socket
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient

from gateway.config import ConfigError
from gateway.testing import make_app
from tests.upstreams import UsageRecorder
from tests.upstreams.chat_api import USAGE, ChatAPI, Reply

KEY = "chat-api-secret-1234567890"
SEED_BODY = {"message": "{{ last_user_message }}", "history": "{{ history }}"}
CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the weather like today?"},
    {"role": "assistant", "content": 'It is "sunny".\nAnything else?'},
    {"role": "user", "content": [{"type": "text", "text": "And"}, {"type": "text", "text": "tomorrow?"}]},
]
#: A different API: nested answer, usage and finish reason, the parameters in the body.
GENERATE: dict[str, Any] = {
    "body": {
        "prompt": "{{ last_user_message }}",
        "system": "{{ system }}",
        "model": "{{ model }}",
        "stream": "{{ stream }}",
        "options": {
            "temperature": "{{ parameters.temperature }}",
            "max_tokens": "{{ parameters.max_tokens || `256` }}",
            "top_p": "{{ parameters.top_p }}",
        },
        "turns": "{{ length(messages) }}",
        "tag": "chat for {{ model }}",
    },
    "response": {
        "text": "output.choices[0].text",
        "finish_reason": "meta.stop",
        "prompt_tokens": "meta.tokens.input",
        "completion_tokens": "meta.tokens.output",
    },
    "finish_reasons": {"max_tokens": "length", "end": "stop"},
}
NDJSON: dict[str, Any] = {
    "format": "ndjson",
    "text": "token",
    "done": "done",
    "finish_reason": "stop",
    "prompt_tokens": "usage.in",
    "completion_tokens": "usage.out",
}
SSE: dict[str, Any] = {"format": "sse", "text": "delta.text", "done_data": "[DONE]"}


@pytest.fixture
async def api(aiohttp_server: Any) -> ChatAPI:
    fake = ChatAPI()
    server = await aiohttp_server(fake.app)
    fake.base = str(server.make_url(""))  # type: ignore[attr-defined]
    return fake


def config(url: str, **options: Any) -> dict[str, Any]:
    backend = {
        "name": "chat",
        "type": "http_template",
        "url": url,
        "models": ["custom-chat"],
        "timeout": 10,
    }  # short only where a test is about it
    backend.update(options)  # a test may replace the url too
    if "response" not in options and "stream" not in options:
        backend["response"] = {"text": "reply"}
    if "body" not in options:
        backend["body"] = SEED_BODY
    return {"backends": [backend]}


async def start(gateway: Any, api: ChatAPI, path: str = "/chatting", **options: Any) -> TestClient:
    return await gateway(config(api.base + path, **options))  # type: ignore[attr-defined]


def chat(messages: Any = None, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": "custom-chat",
        "messages": messages or [{"role": "user", "content": "Hi"}],
        "stream": stream,
        **extra,
    }


async def events(resp: Any) -> list[Any]:
    """The data payloads of an SSE response, parsed (``[DONE]`` as the string)."""
    raw = await resp.read()
    out = []
    for event in raw.split(b"\n\n"):
        if event:
            assert event.startswith(b"data: "), event
            data = event.removeprefix(b"data: ")
            out.append("[DONE]" if data == b"[DONE]" else orjson.loads(data))
    return out


def text_of(chunks: list[Any]) -> str:
    return "".join(
        c["choices"][0]["delta"].get("content") or "" for c in chunks if isinstance(c, dict) and c["choices"]
    )


async def error_of(resp: Any, status: int) -> dict[str, Any]:
    assert resp.status == status, await resp.text()
    return (await resp.json())["error"]


# What the upstream receives --------------------------------------------------------------------


async def test_a_multi_turn_chat_sends_the_last_user_message_and_the_history_before_it(
    gateway: Any, api: ChatAPI
) -> None:
    client = await start(gateway, api)
    resp = await client.post("/v1/chat/completions", json=chat(CONVERSATION, temperature=0.3))
    assert resp.status == 200, await resp.text()
    assert api.last.body == {
        "message": "And\ntomorrow?",
        "history": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the weather like today?"},
            {"role": "assistant", "content": 'It is "sunny".\nAnything else?'},
        ],
    }
    assert api.last.headers["Content-Type"] == "application/json"
    answer = await resp.json()
    assert answer["object"] == "chat.completion"
    assert answer["model"] == "custom-chat"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "You said: And\ntomorrow?", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"]["completion_tokens"] == 6  # estimated: 23 characters
    assert answer["usage"]["prompt_tokens"] > 20


async def test_a_single_message_has_an_empty_history(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert (await resp.json())["choices"][0]["message"]["content"] == "You said: Hi"
    assert api.last.body == {"message": "Hi", "history": []}


async def test_the_key_goes_as_a_bearer_header(gateway: Any, aiohttp_server: Any) -> None:
    api = ChatAPI(key=KEY)
    server = await aiohttp_server(api.app)
    client = await gateway(config(str(server.make_url("/chatting")), api_key=KEY))
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer client-key"})
    assert resp.status == 200, await resp.text()
    assert api.last.headers["Authorization"] == f"Bearer {KEY}"
    info = await (await client.get("/info")).text()
    assert KEY not in info


async def test_without_a_key_no_authorization_header_is_sent(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, api_key="", headers={"X-Api-Key": "", "X-Team": "blue"})
    resp = await client.post("/v1/chat/completions", json=chat(), headers={"Authorization": "Bearer client-key"})
    assert resp.status == 200, await resp.text()
    sent = {k.lower() for k in api.last.headers}
    assert "authorization" not in sent
    assert "x-api-key" not in sent  # an empty value (an unset ${VAR:-}) is not sent
    assert api.last.headers["X-Team"] == "blue"


async def test_a_wrong_configured_key_is_a_502_naming_the_backends_credentials(
    gateway: Any, aiohttp_server: Any
) -> None:
    api = ChatAPI(key=KEY)
    server = await aiohttp_server(api.app)
    client = await gateway(config(str(server.make_url("/chatting")), api_key="wrong-key-123456"))
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 502)
    assert error["code"] == "upstream_auth_error"
    assert error["message"] == (
        "Backend 'chat' refused the gateway's credentials for it (HTTP 401): check the backend's configured "
        "key or token; the upstream said: Invalid API key"
    )


async def test_another_api_with_parameters_nested_reply_usage_and_finish_reason(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, "/v2/generate", **GENERATE)
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    body = chat(messages, temperature=0.2, max_completion_tokens=50, user="ignored")
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    assert api.last.body == {
        "prompt": "Hello",
        "system": "Be brief.",
        "model": "custom-chat",
        "stream": False,
        "options": {"temperature": 0.2, "max_tokens": 50},  # top_p absent: left out
        "turns": 2,
        "tag": "chat for custom-chat",
    }
    answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "You said: Hello"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    await client.post("/v1/chat/completions", json=chat())
    assert api.last.body["options"] == {"max_tokens": 256}
    assert "system" not in api.last.body


async def test_a_model_mapped_by_the_models_table_reaches_the_template(gateway: Any, api: ChatAPI) -> None:
    cfg = config(api.base + "/v2/generate", **GENERATE)  # type: ignore[attr-defined]
    cfg["models"] = [{"name": "custom-chat", "backend": "chat", "model": "internal-7b"}]
    client = await gateway(cfg)
    resp = await client.post("/v1/chat/completions", json=chat())
    assert (await resp.json())["model"] == "custom-chat"
    assert api.last.body["model"] == "internal-7b"


async def test_n_above_one_is_a_clear_400(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api)
    error = await error_of(await client.post("/v1/chat/completions", json=chat(n=2)), 400)
    assert error["param"] == "n"
    assert api.requests == []


# Simulated streaming --------------------------------------------------------------------------


async def test_a_json_api_streams_to_the_client_word_by_word(gateway: Any, api: ChatAPI) -> None:
    api.reply(Reply(text="One two three four"))
    client = await start(gateway, api)
    body = chat(stream=True, stream_options={"include_usage": True})
    resp = await client.post("/v1/chat/completions", json=body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    chunks = await events(resp)
    assert chunks[-1] == "[DONE]"
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[:-1] if c["choices"]]
    assert contents == ["One ", "two ", "three ", "four", None]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["choices"] == [] and chunks[-2]["usage"]["completion_tokens"] == 5
    assert all(c["model"] == "custom-chat" for c in chunks[:-1])
    assert api.last.body == {"message": "Hi", "history": []}


# Streaming upstreams --------------------------------------------------------------------------


async def test_an_ndjson_stream_is_relayed_event_by_event(gateway: Any, api: ChatAPI) -> None:
    api.reply(Reply(text="Streaming is fun"))
    client = await start(gateway, api, "/stream.ndjson", stream=NDJSON, finish_reasons={"end": "stop"})
    body = chat(stream=True, stream_options={"include_usage": True})
    chunks = await events(await client.post("/v1/chat/completions", json=body))
    assert [c["choices"][0]["delta"].get("content") for c in chunks[:-2]] == ["Streaming ", "is ", "fun", None]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert chunks[-1] == "[DONE]"


async def test_a_streaming_only_api_answers_non_streaming_clients_collected(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, "/stream.ndjson", stream=NDJSON)
    resp = await client.post("/v1/chat/completions", json=chat())
    answer = await resp.json()
    assert answer["choices"][0]["message"]["content"] == "You said: None"  # the seed body has no prompt
    assert answer["choices"][0]["finish_reason"] == "stop"  # "end" is not OpenAI's, and not mapped
    assert answer["usage"]["prompt_tokens"] == USAGE["in"]


async def test_an_sse_stream_ends_at_its_done_data(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, "/stream.sse", stream=SSE, body={"prompt": "{{ last_user_message }}"})
    chunks = await events(await client.post("/v1/chat/completions", json=chat(stream=True)))
    assert text_of(chunks[:-1]) == "You said: Hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1] == "[DONE]"


async def test_with_both_mappings_the_client_chooses_whether_the_api_streams(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, "/v2/generate", **GENERATE, stream=NDJSON)
    answer = await (await client.post("/v1/chat/completions", json=chat())).json()
    assert api.last.body["stream"] is False
    assert answer["choices"][0]["finish_reason"] == "length"
    chunks = await events(await client.post("/v1/chat/completions", json=chat(stream=True)))
    assert api.last.body["stream"] is True
    assert text_of(chunks[:-1]) == "You said: Hi"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # "end", mapped


# Answers that do not fit the mapping ----------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"answer": "hello"}', "without the reply text at `reply` (`response.text` in its config)"),
        (b'{"reply": {"text": "hello"}}', 'answered {"text":"hello"} at `reply`'),
        (b"<html>Bad gateway</html>", "answered with something that is not JSON: <html>Bad gateway</html>"),
    ],
)
async def test_an_answer_the_mapping_does_not_fit_is_a_502_naming_the_path(
    gateway: Any, api: ChatAPI, raw: bytes, says: str
) -> None:
    client = await start(gateway, api)
    for stream in (False, True):
        api.reply(Reply(raw=raw))
        error = await error_of(await client.post("/v1/chat/completions", json=chat(stream=stream)), 502)
        assert error["code"] == "bad_gateway"
        assert says in error["message"]
        assert "'chat'" in error["message"]


async def test_a_reported_error_in_a_200_answer_is_a_502(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, response={"text": "reply", "error": "error.message"})
    api.reply(Reply(raw=b'{"reply": null, "error": {"message": "quota exceeded"}}'))
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 502)
    assert error["message"] == "Backend 'chat' reported an error: quota exceeded"


async def test_a_bad_usage_value_names_its_path(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, response={"text": "reply", "prompt_tokens": "n"})
    api.reply(Reply(raw=b'{"reply": "ok", "n": "seven"}'))
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 502)
    assert '"seven" at `n` (`response.prompt_tokens` in its config), which is not a token count' in error["message"]


async def test_a_stream_without_text_anywhere_is_a_502_before_any_chunk(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, "/stream.ndjson", stream={**NDJSON, "text": "delta"})
    error = await error_of(await client.post("/v1/chat/completions", json=chat(stream=True)), 502)
    assert "without the reply text at `delta` (`stream.text` in its config) in any event" in error["message"]


# Upstream failures ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "expected", "message"),
    [
        (400, {"detail": "message too long"}, 400, "message too long"),
        (404, "no such route", 404, "no such route"),
        (429, {"detail": "slow down"}, 429, "Backend 'chat' is rate limited: slow down"),
        (500, {"detail": "model crashed"}, 502, "Backend 'chat' failed with HTTP 500: model crashed"),
        (503, "<h1>maintenance</h1>", 502, "Backend 'chat' failed with HTTP 503: <h1>maintenance</h1>"),
    ],
)
async def test_error_statuses_map_like_every_backend(
    gateway: Any, api: ChatAPI, status: int, error: Any, expected: int, message: str
) -> None:
    client = await start(gateway, api)
    for stream in (False, True):
        api.reply(Reply(status=status, error=error))
        got = await error_of(await client.post("/v1/chat/completions", json=chat(stream=stream)), expected)
        assert got["message"] == message


async def test_a_body_the_api_refuses_is_its_422(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, body={"message": "{{ last_user_message }}"})
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 422)
    assert "expected exactly the fields message and history" in error["message"]


async def test_the_key_never_shows_in_an_error(gateway: Any, api: ChatAPI) -> None:
    client = await start(gateway, api, api_key=KEY)
    api.reply(Reply(status=500, error={"detail": f"bad key Bearer {KEY}"}))
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 502)
    assert KEY not in error["message"] and "***" in error["message"]


async def test_an_unreachable_api_is_a_clear_502(gateway: Any) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = await gateway(config(f"http://127.0.0.1:{port}/chatting"))
    for stream in (False, True):
        error = await error_of(await client.post("/v1/chat/completions", json=chat(stream=stream)), 502)
        assert error["message"] == "Backend 'chat' is unreachable: connection refused."
        assert error["code"] == "bad_gateway"


@pytest.mark.parametrize("reply", [Reply(delay=1.0), Reply(hang=True)], ids=["slow", "hanging"])
async def test_a_silent_api_is_a_504(gateway: Any, api: ChatAPI, reply: Reply) -> None:
    client = await start(gateway, api, timeout=0.2)
    for stream in (False, True):
        api.reply(reply)
        error = await error_of(await client.post("/v1/chat/completions", json=chat(stream=stream)), 504)
        assert error["code"] == "upstream_timeout"


async def test_a_stream_that_ends_after_its_finish_reason_without_done_is_complete(gateway: Any, api: ChatAPI) -> None:
    """The NDJSON stream's last event reports the finish reason but not ``done``: complete."""
    client = await start(gateway, api, "/stream.ndjson", stream=NDJSON)
    api.reply(Reply(text="one two", done_flag=False))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n") and b'"error"' not in raw and b"one " in raw


@pytest.mark.parametrize(
    ("path", "mapping", "reply", "code", "says"),
    [
        ("/stream.ndjson", NDJSON, Reply(die_after=2), "bad_gateway", "broke the connection"),
        ("/stream.sse", SSE, Reply(die_after=2), "bad_gateway", "broke the connection"),
        ("/stream.ndjson", NDJSON, Reply(done=False), "bad_gateway", "ended its stream before the end"),
        ("/stream.sse", SSE, Reply(done=False), "bad_gateway", "ended its stream before the end"),
        ("/stream.ndjson", NDJSON, Reply(hang_after=2), "upstream_timeout", "did not respond within 0.5 seconds"),
    ],
    ids=["ndjson-dies", "sse-dies", "ndjson-no-done", "sse-no-done", "ndjson-hangs"],
)
async def test_a_stream_that_breaks_off_ends_with_an_error_event(
    gateway: Any, api: ChatAPI, path: str, mapping: Any, reply: Reply, code: str, says: str
) -> None:
    # a short timeout only where it is the point: a loaded machine must not turn a break into a 504
    client = await start(gateway, api, path, stream=mapping, timeout=0.5 if reply.hang_after else 10)
    api.reply(Reply(text="one two three four", **{k: v for k, v in vars(reply).items() if k != "text"}))
    resp = await client.post("/v1/chat/completions", json=chat(stream=True))
    assert resp.status == 200
    chunks = await events(resp)
    assert text_of(chunks[:-1]).startswith("one two")
    assert chunks[-1]["error"]["code"] == code
    assert says in chunks[-1]["error"]["message"]
    api.reply(Reply(text="one two three four", **{k: v for k, v in vars(reply).items() if k != "text"}))
    error = await error_of(await client.post("/v1/chat/completions", json=chat()), 504 if "timeout" in code else 502)
    assert says in error["message"]


async def test_a_stream_event_that_is_not_json_is_an_error_event(gateway: Any, aiohttp_server: Any) -> None:
    from aiohttp import web

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for piece in (b'{"tok', b'en": "fine "}\r', b'\n{"token": "so far"}\r\n\r\n{not', b" json}\n"):
            await response.write(piece)  # lines cut anywhere, CRLF, blank lines
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/", handler)
    server = await aiohttp_server(app)
    client = await gateway(config(str(server.make_url("/")), stream=NDJSON))
    chunks = await events(await client.post("/v1/chat/completions", json=chat(stream=True)))
    assert text_of(chunks[:-1]) == "fine so far"
    assert chunks[-1]["error"]["message"] == "Backend 'chat' sent a stream line that is not JSON: {not json}"


# Config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"body": {"message": "{{ last_message }}"}}, "backends[0].body: Value error, message: unknown variable"),
        ({"response": {"text": "reply["}}, "backends[0].response.text: Value error, invalid JMESPath expression"),
        ({"response": None}, "backends[0]: Value error, `response` (a JSON answer) or `stream`"),
        ({"url": "chat.example.com"}, "backends[0].url: Value error, must start with http:// or https://"),
        ({"stream": {"text": "t"}}, "backends[0].stream.format: Field required"),
        ({"method": "DELETE"}, "backends[0].method: Input should be 'POST', 'PUT', 'PATCH' or 'GET'"),
        ({"finish_reasons": {"eos": "done"}}, "backends[0].finish_reasons.eos: Input should be 'stop', 'length'"),
    ],
)
def test_bad_config_fails_at_start_up_naming_the_key(options: Any, problem: str) -> None:
    cfg = config(**{"url": "http://127.0.0.1:1/chatting", **options})
    if options.get("response", 1) is None:
        del cfg["backends"][0]["response"]
    with pytest.raises(ConfigError) as raised:
        make_app(cfg)
    assert problem in str(raised.value)


# The README's examples ------------------------------------------------------------------------


def readme_examples() -> list[Any]:
    """The YAML blocks of the README's http_template section, parsed (fragments dedented)."""
    import re
    import textwrap
    from pathlib import Path

    import yaml

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    section = re.split(r"\n##+ ", readme.split("### http_template: your own chat API", 1)[1], maxsplit=1)[0]
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return [yaml.safe_load(textwrap.dedent(block)) for block in blocks]


async def test_the_readme_examples_serve_the_apis_they_describe(gateway: Any, api: ChatAPI, monkeypatch: Any) -> None:
    seed, acme, streaming = readme_examples()
    monkeypatch.setenv("CHAT_API_URL", api.base + "/chatting")  # type: ignore[attr-defined]
    monkeypatch.setenv("ACME_KEY", "acme-key")
    answer = await (await (await gateway(seed)).post("/v1/chat/completions", json=chat())).json()
    assert answer["choices"][0]["message"]["content"] == "You said: Hi"

    acme = acme[0] | {"url": api.base + "/v2/generate"}  # type: ignore[attr-defined]
    client = await gateway({"backends": [acme]})
    body = chat(CONVERSATION, temperature=0.1) | {"model": "acme-chat"}
    answer = await (await client.post("/v1/chat/completions", json=body)).json()
    assert answer["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "You said: And\ntomorrow?", "refusal": None},
        "logprobs": None,
        "finish_reason": "length",
    }
    assert answer["usage"]["total_tokens"] == 10
    assert api.last.headers["X-Api-Key"] == "acme-key"
    assert api.last.body["options"] == {"temperature": 0.1, "max_tokens": 512}
    assert api.last.body["turns"] == [{"role": m["role"], "content": m["content"]} for m in CONVERSATION[:3]]

    client = await gateway({"backends": [acme | streaming]})
    body = chat(stream=True, stream_options={"include_usage": True}) | {"model": "acme-chat"}
    chunks = await events(await client.post("/v1/chat/completions", json=body))
    assert api.last.body == {"prompt": "Hi", "stream": True}
    assert text_of(chunks[:-1]) == "You said: Hi"
    assert chunks[-3]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-2]["usage"]["total_tokens"] == 10


async def test_usage_counted_by_the_gateway_is_said_to_be_estimated(gateway: Any, api: ChatAPI) -> None:
    """Each path: a JSON answer without counts (estimated), one with them (reported), a stream with
    them and one without (SSE)."""
    recorder = UsageRecorder()
    base = api.base.rstrip("/")  # type: ignore[attr-defined]
    seed = await gateway(config(base + "/chatting"), [recorder])
    await seed.post("/v1/chat/completions", json=chat())
    await seed.post("/v1/chat/completions", json=chat(stream=True))
    reported = await gateway(config(base + "/v2/generate", **GENERATE), [recorder])
    await reported.post("/v1/chat/completions", json=chat())
    ndjson = await gateway(config(base + "/stream.ndjson", stream=NDJSON), [recorder])
    await ndjson.post("/v1/chat/completions", json=chat(stream=True))
    sse = await gateway(config(base + "/stream.sse", stream=SSE), [recorder])
    await sse.post("/v1/chat/completions", json=chat(stream=True))
    assert [estimated for _, estimated in recorder.seen] == [True, True, False, False, True]


async def test_an_answer_over_max_response_size_is_a_502_read_no_further(gateway: Any, api: ChatAPI) -> None:
    """The same through aiohttp's client: 64 MiB in pieces against a 1 MiB cap."""
    mib = 1024 * 1024
    client = await start(gateway, api, max_response_size=mib)
    api.reply(Reply(padding=64 * mib), Reply(raw=b'{"reply": "' + b"x" * (2 * mib) + b'"}'))
    for _ in range(2):
        error = await error_of(await client.post("/v1/chat/completions", json=chat()), 502)
        assert error["message"] == "Backend 'chat' answered with more than 1048576 bytes (its max_response_size)."
    assert api.padded.sent < 16 * mib
    assert (await client.post("/v1/chat/completions", json=chat())).status == 200
