"""``POST /v1/responses`` end to end: the official ``openai`` SDK (sync and async) -> the gateway on the
default config (the mock backend serving ``mock-gpt-model``) and over ``openai_compat`` -> a fake
OpenAI API that answers with tool calls; raw bytes for the exact event order; stored responses
(``previous_response_id``, GET, DELETE) per API key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from gateway.testing import ServerThread, make_app
from tests.upstreams.openai import OpenAIUpstream, Reply

DEFAULT = Path(__file__).parents[2] / "config" / "gateway.yaml"
MODEL = "mock-gpt-model"
PROMPT = "Tell me a joke"
WEATHER: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with ServerThread(make_app(DEFAULT)) as server:
        yield server.url


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAIUpstream]:
    fake = OpenAIUpstream()
    with ServerThread(fake.app) as server:
        fake.base_url = server.url + "/v1"  # type: ignore[attr-defined]
        yield fake


@pytest.fixture(scope="module")
def proxied(upstream: OpenAIUpstream) -> Iterator[str]:
    """The gateway with ``openai_compat`` in front of the fake upstream (model ``gpt-4o-mini``)."""
    config = {
        "backends": [{"name": "openai", "type": "openai_compat", "base_url": upstream.base_url, "api_key": "sk-up"}],  # type: ignore[attr-defined]
        "models": [{"name": "gpt-4o-mini", "backend": "openai"}],
    }
    with ServerThread(make_app(config)) as server:
        yield server.url


@pytest.fixture
def fake(upstream: OpenAIUpstream) -> OpenAIUpstream:
    upstream.replies.clear()
    upstream.requests.clear()
    return upstream


def sdk(url: str, key: str = "sk-caller-a") -> OpenAI:
    return OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=10)


def test_create_answers_a_response_object(url: str) -> None:
    with sdk(url) as client:
        response = client.responses.create(
            model=MODEL, input=PROMPT, instructions="Be brief.", temperature=0.5, metadata={"team": "a"}
        )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == MODEL
    assert PROMPT in response.output_text
    [item] = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    assert response.instructions == "Be brief." and response.temperature == 0.5
    assert response.metadata == {"team": "a"} and response.store is True and response.tools == []
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens


def test_stream_events_are_typed_and_numbered(url: str) -> None:
    with sdk(url) as client:
        events = list(client.responses.create(model=MODEL, input=PROMPT, stream=True))
    kinds = [event.type for event in events]
    assert list(dict.fromkeys(kinds)) == TEXT_EVENTS
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == text and PROMPT in text
    assert final.usage is not None and final.usage.output_tokens > 0
    assert events[0].response.id == final.id  # type: ignore[union-attr]


def test_stream_helper_gives_the_final_response(url: str) -> None:
    with sdk(url) as client, client.responses.stream(model=MODEL, input=PROMPT) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.output_text == "".join(deltas) and final.status == "completed"


async def test_the_async_sdk_creates_and_streams(url: str) -> None:
    async with AsyncOpenAI(base_url=url + "/v1", api_key="k", max_retries=0, timeout=10) as client:
        response = await client.responses.create(model=MODEL, input=PROMPT)
        assert PROMPT in response.output_text
        stream = await client.responses.create(model=MODEL, input=PROMPT, stream=True)
        kinds = [event.type async for event in stream]
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        async with client.responses.stream(model=MODEL, input=PROMPT) as helper:
            final = await helper.get_final_response()
        assert PROMPT in final.output_text


def test_unknown_model_is_not_found(url: str) -> None:
    with sdk(url) as client, pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="no-such-model", input="hi")
    assert caught.value.status_code == 404
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_stored_responses_are_retrieved_continued_and_deleted(url: str) -> None:
    with sdk(url) as client:
        first = client.responses.create(model=MODEL, input="one two")
        assert client.responses.retrieve(first.id).output_text == first.output_text
        second = client.responses.create(model=MODEL, input="three", previous_response_id=first.id)
        assert second.previous_response_id == first.id
        assert second.usage is not None and first.usage is not None
        assert second.usage.input_tokens > first.usage.input_tokens  # the earlier turns went in too
        deleted = client.responses.with_raw_response.delete(first.id)
        assert deleted.http_request.method == "DELETE"
        assert json.loads(deleted.text) == {"id": first.id, "object": "response", "deleted": True}
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(first.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.delete(first.id)


def test_unknown_previous_response_is_a_404_naming_the_param(url: str) -> None:
    with sdk(url) as client, pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, input="hi", previous_response_id="resp_nope")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]
    assert "resp_nope" in caught.value.body["message"]  # type: ignore[index]


def test_store_false_keeps_nothing(url: str) -> None:
    with sdk(url) as client:
        response = client.responses.create(model=MODEL, input="hi", store=False)
        assert response.store is False
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            client.responses.create(model=MODEL, input="hi", previous_response_id=response.id)


def test_one_key_cannot_read_another_keys_responses(url: str) -> None:
    with sdk(url, "sk-caller-a") as a, sdk(url, "sk-caller-b") as b:
        response = a.responses.create(model=MODEL, input="mine")
        with pytest.raises(openai.NotFoundError):
            b.responses.retrieve(response.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.create(model=MODEL, input="hi", previous_response_id=response.id)
        with pytest.raises(openai.NotFoundError):
            b.responses.delete(response.id)
        assert a.responses.retrieve(response.id).id == response.id


async def test_raw_event_order_and_framing(url: str) -> None:
    body = {"model": MODEL, "input": "one two", "stream": True}
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/responses", json=body) as response:
        assert response.status == 200 and response.content_type == "text/event-stream"
        raw = (await response.read()).decode()
    blocks = raw.removesuffix("\n\n").split("\n\n")
    events = [block.split("\n")[0].removeprefix("event: ") for block in blocks]
    datas = [json.loads(block.split("\n")[1].removeprefix("data: ")) for block in blocks]
    assert events == [*TEXT_EVENTS[:4], *["response.output_text.delta"] * 2, *TEXT_EVENTS[5:]]
    assert [d["type"] for d in datas] == events
    assert [d["sequence_number"] for d in datas] == list(range(len(events)))
    assert all(len(block.split("\n")) == 2 for block in blocks)
    assert "[DONE]" not in raw
    assert datas[0]["response"]["status"] == "in_progress" and datas[0]["response"]["output"] == []
    assert datas[-1]["response"]["output"][0]["content"][0]["text"] == datas[6]["text"] == "one two"


async def test_bad_requests_are_openai_errors(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        for body, param in [
            ({"model": MODEL}, "input"),
            ({"model": MODEL, "input": 3}, "input"),
            ({"model": MODEL, "input": "hi", "tools": [{"type": "function"}]}, "tools[0].name"),
            ({"model": MODEL, "input": "hi", "tools": [{"name": "f"}]}, "tools[0]"),
            ({"model": MODEL, "input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
            ({"input": "hi"}, "model"),
            ({"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_file"}]}]}, "input[0].content[0]"),
        ]:
            async with http.post(f"{url}/v1/responses", json=body) as response:
                assert response.status == 400, body
                error = (await response.json())["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param, error


async def test_the_unprefixed_path_and_the_endpoint_name_in_metrics(url: str) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{url}/responses", json={"model": MODEL, "input": "hi"}) as response:
            assert response.status == 200
            assert (await response.json())["object"] == "response"
        async with http.get(f"{url}/metrics") as response:
            metrics = await response.text()
    assert 'endpoint="responses"' in metrics
    assert 'endpoint="responses.retrieve"' in metrics  # the GETs of the tests before


# Over openai_compat: a real-protocol upstream that calls tools ----------------------------------


def test_function_call_round_trip(proxied: str, fake: OpenAIUpstream) -> None:
    fake.reply(Reply(content="", tool_calls=[("get_weather", '{"city": "Paris"}')]), Reply(content="Sunny, 21C."))
    with sdk(proxied) as client:
        first = client.responses.create(
            model="gpt-4o-mini", input="Weather in Paris?", tools=[WEATHER], tool_choice="auto", instructions="Be kind."
        )
        [call] = first.output
        assert call.type == "function_call" and call.id.startswith("fc_")  # type: ignore[union-attr]
        assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}  # type: ignore[union-attr]
        assert call.call_id == "call_0" and call.status == "completed"  # type: ignore[union-attr]
        assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
        result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21"}  # type: ignore[union-attr]
        second = client.responses.create(
            model="gpt-4o-mini", input=[result], previous_response_id=first.id, tools=[WEATHER], instructions="Be kind."
        )
    assert second.output_text == "Sunny, 21C."
    sent = fake.requests[0].body
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": WEATHER["parameters"],
                "description": WEATHER["description"],
                "strict": False,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"
    messages = fake.requests[1].body["messages"]
    assert messages == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_0",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "sunny, 21"},
    ]


def test_streamed_function_call(proxied: str, fake: OpenAIUpstream) -> None:
    fake.reply(Reply(content="Let me look.", tool_calls=[("get_weather", '{"city": "Oslo"}')]), Reply(content="Cold."))
    with sdk(proxied) as client:
        events = list(client.responses.create(model="gpt-4o-mini", input="Oslo?", tools=[WEATHER], stream=True))
        result: Any = {"type": "function_call_output", "call_id": "call_0", "output": "-3"}
        previous = events[-1].response.id  # type: ignore[union-attr]
        with client.responses.stream(model="gpt-4o-mini", input=[result], previous_response_id=previous) as stream:
            assert stream.get_final_response().output_text == "Cold."
    call = {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}
    assert fake.requests[1].body["messages"] == [
        {"role": "user", "content": "Oslo?"},
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_0", "content": "-3"},
    ]
    kinds = [e.type for e in events]
    assert kinds[:4] == TEXT_EVENTS[:4]
    tail = [k for k in kinds if k != "response.output_text.delta" and k != "response.function_call_arguments.delta"]
    assert tail[4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    fragments = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert len(fragments) == 2 and "".join(fragments) == '{"city": "Oslo"}'
    final = events[-1].response  # type: ignore[union-attr]
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].arguments == '{"city": "Oslo"}' and final.output[1].call_id == "call_0"  # type: ignore[union-attr]
    assert [e.output_index for e in events if e.type == "response.output_item.added"] == [0, 1]  # type: ignore[union-attr]
    assert final.usage is not None and final.usage.input_tokens == 11 and final.usage.output_tokens == 4


def test_streamed_continuation_reaches_the_upstream_with_the_earlier_turns(proxied: str, fake: OpenAIUpstream) -> None:
    fake.reply(Reply(content="First answer"), Reply(content="Second answer"))
    with sdk(proxied) as client:
        with client.responses.stream(model="gpt-4o-mini", input="first") as stream:
            first = stream.get_final_response()
        with client.responses.stream(model="gpt-4o-mini", input="second", previous_response_id=first.id) as stream:
            second = stream.get_final_response()
    assert second.output_text == "Second answer"
    assert fake.requests[1].body["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "First answer"},
        {"role": "user", "content": "second"},
    ]
    assert fake.requests[1].body["stream"] is True


def test_request_settings_reach_the_upstream_as_chat(proxied: str, fake: OpenAIUpstream) -> None:
    schema = {
        "type": "object",
        "properties": {"a": {"type": "string"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    image = {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"}
    turns: Any = [
        {"role": "developer", "content": "Answer in JSON."},
        {"role": "user", "content": [{"type": "input_text", "text": "Describe"}, image]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Earlier.", "annotations": []}]},
    ]
    with sdk(proxied) as client:
        client.responses.create(
            model="gpt-4o-mini",
            input=turns,
            max_output_tokens=50,
            top_p=0.5,
            parallel_tool_calls=False,
            user="u1",
            text={"format": {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}},
        )
        echoed = client.responses.create(
            model="gpt-4o-mini",
            input="JSON please",
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            text={"format": {"type": "json_object"}},
        )
    assert fake.last.body["response_format"] == {"type": "json_object"}
    assert fake.last.body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert echoed.text is not None and echoed.text.format is not None and echoed.text.format.type == "json_object"
    assert echoed.tool_choice.type == "function" and echoed.tool_choice.name == "get_weather"  # type: ignore[union-attr]
    sent = fake.requests[-2].body
    assert sent["max_tokens"] == 50 and sent["top_p"] == 0.5 and sent["parallel_tool_calls"] is False
    assert sent["user"] == "u1" and "metadata" not in sent and "store" not in sent
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": schema, "strict": True},
    }
    assert sent["messages"] == [
        {"role": "system", "content": "Answer in JSON."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
            ],
        },
        {"role": "assistant", "content": "Earlier."},
    ]


async def test_an_upstream_failure_after_the_start_is_response_failed(proxied: str, fake: OpenAIUpstream) -> None:
    fake.reply(Reply(content="one two three", die_after=2))
    body = {"model": "gpt-4o-mini", "input": "hi", "stream": True}
    async with aiohttp.ClientSession() as http, http.post(f"{proxied}/v1/responses", json=body) as response:
        assert response.status == 200
        raw = (await response.read()).decode()
    blocks = raw.removesuffix("\n\n").split("\n\n")
    last = json.loads(blocks[-1].split("\n")[1].removeprefix("data: "))
    assert blocks[-1].startswith("event: response.failed\n")
    assert last["type"] == "response.failed" and last["response"]["status"] == "failed"
    assert last["response"]["error"]["code"] == "server_error"
    assert last["sequence_number"] == len(blocks) - 1


def test_an_upstream_failure_before_the_start_is_an_error_status(proxied: str, fake: OpenAIUpstream) -> None:
    fake.fail(1, status=400, error={"error": {"message": "bad thing", "type": "invalid_request_error"}})
    with sdk(proxied) as client, pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-4o-mini", input="hi", stream=True)


def test_a_cut_answer_is_incomplete(proxied: str, fake: OpenAIUpstream) -> None:
    fake.reply(Reply(content="cut short", finish_reason="length"), Reply(content="cut short", finish_reason="length"))
    with sdk(proxied) as client:
        response = client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=2)
        events = list(client.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=2, stream=True))
    assert response.status == "incomplete" and response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


# Over the other backends, each with its real-protocol fake upstream ------------------------------


def _sourcegraph(url: str) -> tuple[dict[str, Any], str]:
    from tests.upstreams.sourcegraph import TOKEN

    return {"name": "sg", "type": "sourcegraph", "endpoint": url, "access_token": TOKEN}, (
        "anthropic::2023-06-01::claude-3.5-sonnet"
    )


def _http_template(url: str) -> tuple[dict[str, Any], str]:
    body = {"message": "{{ last_user_message }}", "history": "{{ history }}"}
    backend = {"name": "chat", "type": "http_template", "url": url + "/chatting", "models": ["custom-chat"]}
    return {**backend, "body": body, "response": {"text": "reply"}}, "custom-chat"


def _anthropic(url: str) -> tuple[dict[str, Any], str]:
    from tests.upstreams.anthropic import API_KEY

    return {"name": "claude", "type": "anthropic", "base_url": url, "api_key": API_KEY}, "claude-sonnet-test"


def _upstream(kind: str) -> Any:
    if kind == "sourcegraph":
        from tests.upstreams.sourcegraph import SourcegraphUpstream

        return SourcegraphUpstream()
    if kind == "http_template":
        from tests.upstreams.chat_api import ChatAPI

        return ChatAPI()
    from tests.upstreams.anthropic import AnthropicUpstream

    return AnthropicUpstream()


@pytest.mark.parametrize("kind", ["sourcegraph", "http_template", "anthropic"])
def test_every_backend_answers_responses(kind: str) -> None:
    fake = _upstream(kind)
    backend = {"sourcegraph": _sourcegraph, "http_template": _http_template, "anthropic": _anthropic}[kind]
    with ServerThread(fake.app) as upstream_server:
        backend_config, model_name = backend(upstream_server.url)
        config = {"backends": [backend_config], "models": [{"name": model_name, "backend": backend_config["name"]}]}
        with ServerThread(make_app(config)) as gateway, sdk(gateway.url) as client:
            first = client.responses.create(model=model_name, input="Hello there", instructions="Be brief.")
            assert first.status == "completed" and first.output_text
            events = list(
                client.responses.create(model=model_name, input="Again", previous_response_id=first.id, stream=True)
            )
    assert events[0].type == "response.created" and events[-1].type == "response.completed"
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert final.output_text and final.previous_response_id == first.id
    assert len(fake.requests) >= 2


PATCH_TOOL: Any = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


def test_custom_tools_as_codex_sends_them(proxied: str, fake: OpenAIUpstream) -> None:
    """A ``custom`` tool (Codex's ``apply_patch``) is a chat function taking its text as ``input``;
    its call comes back as a ``custom_tool_call`` item, streamed or not, and its output continues."""
    arguments = json.dumps({"input": "*** Begin Patch\n*** End Patch"})
    fake.reply(Reply(content="", tool_calls=[("apply_patch", arguments)]))
    fake.reply(Reply(content="", tool_calls=[("apply_patch", arguments)]), Reply(content="Patched."))
    with sdk(proxied) as client:
        first = client.responses.create(model="gpt-4o-mini", input="Fix it", tools=[PATCH_TOOL])
        events = list(client.responses.create(model="gpt-4o-mini", input="Fix it", tools=[PATCH_TOOL], stream=True))
        final = events[-1].response  # type: ignore[union-attr]
        result: Any = {"type": "custom_tool_call_output", "call_id": "call_0", "output": "Done!"}
        last = client.responses.create(
            model="gpt-4o-mini", input=[result], previous_response_id=final.id, tools=[PATCH_TOOL]
        )
    for response in (first, final):
        [call] = response.output
        assert call.type == "custom_tool_call" and call.id.startswith("ctc_")  # type: ignore[union-attr]
        assert call.input == "*** Begin Patch\n*** End Patch" and call.call_id == "call_0"  # type: ignore[union-attr]
    kinds = [e.type for e in events]
    assert kinds[2:6] == [
        "response.output_item.added",
        "response.custom_tool_call_input.delta",
        "response.custom_tool_call_input.done",
        "response.output_item.done",
    ]
    assert last.output_text == "Patched." and last.tools[0].type == "custom"
    tool = fake.requests[0].body["tools"][0]["function"]
    assert tool["name"] == "apply_patch" and tool["parameters"]["required"] == ["input"]
    assert "lark grammar:\nstart: /.+/" in tool["description"]
    compact = json.dumps(json.loads(arguments), separators=(",", ":"))  # the stored call, as the gateway wrote it
    assert fake.requests[2].body["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_0", "type": "function", "function": {"name": "apply_patch", "arguments": compact}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_0", "content": "Done!"},
    ]


def test_codex_tool_list_namespaces_flattened_hosted_tools_not_offered(proxied: str, fake: OpenAIUpstream) -> None:
    """Codex CLI's tool list (as 0.171 sends it): function tools, a ``namespace`` of functions and the
    hosted ``web_search``, which no chat backend can run."""
    close: Any = {"type": "function", "name": "close_agent", "parameters": {"type": "object"}, "strict": False}
    namespace: Any = {"type": "namespace", "name": "multi_agent_v1", "description": "Agents.", "tools": [close]}
    hosted: Any = {"type": "web_search", "external_web_access": False}
    fake.reply(Reply(content="", tool_calls=[("close_agent", '{"target": "a1"}')]))
    with sdk(proxied) as client:
        response = client.responses.create(
            model="gpt-4o-mini", input="Close a1", tools=[WEATHER, namespace, hosted], store=False
        )
    assert [t["function"]["name"] for t in fake.last.body["tools"]] == ["get_weather", "close_agent"]
    [call] = response.output
    assert call.type == "function_call" and call.name == "close_agent"  # type: ignore[union-attr]
    assert call.namespace == "multi_agent_v1"  # type: ignore[union-attr]
    assert [tool.type for tool in response.tools] == ["function", "namespace", "web_search"]
