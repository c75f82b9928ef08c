"""The contract of each hook as seen through HTTP: ``gateway_request_finished`` exactly once,
``gateway_setup_app`` and ``gateway_cleanup_ctx``, ``gateway_authenticate``, ``gateway_handle_error``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from gateway import GatewayError, Principal, hookimpl
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.testing import MOCK_MODEL, make_app, mock_config


def chat_body(stream: bool = False, content: str = "hello there", **extra: Any) -> dict[str, Any]:
    return {"model": MOCK_MODEL, "messages": [{"role": "user", "content": content}], "stream": stream, **extra}


async def reply_of(resp: Any) -> str:
    assert resp.status == 200, await resp.text()
    return (await resp.json())["choices"][0]["message"]["content"]


# gateway_request_finished: exactly once per request --------------------------------------------


class Finished:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, int, BaseException | None]] = []

    @hookimpl
    async def gateway_request_finished(self, ctx: Any, error: Any) -> None:
        await asyncio.sleep(0)
        self.calls.append((ctx.client_request_id, ctx.endpoint, ctx.status, error))  # the id the test sent

    async def wait_for(self, request_id: str) -> list[tuple[str, str, int, BaseException | None]]:
        """The calls for ``request_id``, once there is one (and a moment for a second one)."""
        for _ in range(200):
            if any(call[0] == request_id for call in self.calls):
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.05)
        return [call for call in self.calls if call[0] == request_id]


async def test_request_finished_once_on_success(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "ok-1"})
    assert resp.headers["X-Request-ID"] == "ok-1"
    assert await reply_of(resp) == "hello there"
    assert await finished.wait_for("ok-1") == [("ok-1", "chat.completions", 200, None)]


async def test_request_finished_once_on_error(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post(
        "/v1/chat/completions", json={**chat_body(), "model": "nope"}, headers={"X-Request-ID": "e-1"}
    )
    assert resp.status == 404
    [(_, _, status, error)] = await finished.wait_for("e-1")
    assert status == 404
    assert isinstance(error, GatewayError)

    resp = await client.post("/v1/chat/completions", data=b"{not json", headers={"X-Request-ID": "e-2"})
    assert resp.status == 400
    [(_, _, status, error)] = await finished.wait_for("e-2")
    assert status == 400 and error is not None

    resp = await client.get("/no/such/path", headers={"X-Request-ID": "e-3"})
    assert resp.status == 404
    assert len(await finished.wait_for("e-3")) == 1


async def test_request_finished_once_for_a_stream(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(None, [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers={"X-Request-ID": "s-1"})
    text = await resp.text()
    assert resp.status == 200 and text.endswith("data: [DONE]\n\n")
    assert await finished.wait_for("s-1") == [("s-1", "chat.completions", 200, None)]


async def test_request_finished_once_for_a_broken_stream(gateway: Any) -> None:
    finished = Finished()
    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}), [finished])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True), headers={"X-Request-ID": "s-2"})
    text = await resp.text()
    assert resp.status == 200 and '"error"' in text and "[DONE]" not in text
    [(_, _, status, error)] = await finished.wait_for("s-2")
    assert status == 200 and isinstance(error, GatewayError)


async def test_request_finished_failure_does_not_break_the_response(gateway: Any) -> None:
    finished = Finished()

    class Broken:
        @hookimpl(tryfirst=True)
        def gateway_request_finished(self, ctx: Any, error: Any) -> None:
            raise RuntimeError("observer bug")

    client = await gateway(None, [finished, Broken()])
    resp = await client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "b-1"})
    assert await reply_of(resp) == "hello there"
    assert len(await finished.wait_for("b-1")) == 1


# gateway_setup_app and gateway_cleanup_ctx -----------------------------------------------------


class CustomRoute:
    @hookimpl
    def gateway_setup_app(self, app: web.Application, config: Any) -> None:
        async def hello(request: web.Request) -> web.Response:
            return web.json_response({"hello": config.default_model})

        app.router.add_get("/custom/hello", hello)


async def test_setup_app_route_gets_the_middleware_and_cors(gateway: Any) -> None:
    client = await gateway(None, [CustomRoute()])
    resp = await client.get("/custom/hello", headers={"X-Request-ID": "custom-1", "Origin": "http://site.example"})
    assert resp.status == 200
    assert await resp.json() == {"hello": MOCK_MODEL}
    assert resp.headers["X-Request-ID"] == "custom-1"
    assert resp.headers["Access-Control-Allow-Origin"] == "http://site.example"

    preflight = await client.options(
        "/custom/hello", headers={"Origin": "http://site.example", "Access-Control-Request-Method": "GET"}
    )
    assert preflight.status == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://site.example"


async def test_cleanup_ctx_runs_startup_and_cleanup(aiohttp_client: Any) -> None:
    events: list[str] = []

    class Lifecycle:
        @hookimpl
        def gateway_cleanup_ctx(self, app: web.Application, config: Any) -> Any:
            async def lifecycle(app: web.Application) -> AsyncIterator[None]:
                events.append(f"start:{config.default_model}")
                yield
                events.append("cleanup")

            return lifecycle

    class Nothing:
        @hookimpl
        def gateway_cleanup_ctx(self, app: web.Application, config: Any) -> None:
            return None

    client = await aiohttp_client(make_app(plugins=[Lifecycle(), Nothing()]))
    assert events == [f"start:{MOCK_MODEL}"]
    assert (await client.get("/health")).status == 200
    await client.close()
    assert events == [f"start:{MOCK_MODEL}", "cleanup"]


# gateway_authenticate --------------------------------------------------------------------------


class Seen:
    """Records the principal later hooks see."""

    def __init__(self) -> None:
        self.process: list[str | None] = []
        self.finished: list[str | None] = []
        self.called = False

    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        self.process.append(ctx.principal.name if ctx.principal else None)

    @hookimpl
    def gateway_request_finished(self, ctx: Any, error: Any) -> None:
        self.finished.append(ctx.principal.name if ctx.principal else None)


class Authenticator:
    def __init__(self, name: str | None, *, is_async: bool = False) -> None:
        self.principal = Principal(name=name) if name else None
        self.is_async = is_async
        self.calls = 0

    @hookimpl
    def gateway_authenticate(self, ctx: Any) -> Any:
        self.calls += 1
        if not self.is_async:
            return self.principal

        async def later() -> Any:
            await asyncio.sleep(0)
            return self.principal

        return later()


async def test_principal_is_visible_to_later_hooks(gateway: Any) -> None:
    seen = Seen()
    client = await gateway(None, [seen, Authenticator("alice")])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    for _ in range(100):
        if seen.finished:
            break
        await asyncio.sleep(0.005)
    assert seen.process == ["alice"]
    assert seen.finished == ["alice"]


async def test_no_principal_when_no_plugin_authenticates(gateway: Any) -> None:
    seen = Seen()
    client = await gateway(None, [seen])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    assert seen.process == [None]


async def test_authentication_error_is_401(gateway: Any) -> None:
    class Refuse:
        @hookimpl
        async def gateway_authenticate(self, ctx: Any) -> None:
            raise AuthenticationError("bad key")

    seen = Seen()
    client = await gateway(None, [seen, Refuse()])
    resp = await client.post("/v1/chat/completions", json=chat_body())
    assert resp.status == 401
    error = (await resp.json())["error"]
    assert error["code"] == "invalid_api_key"
    assert error["message"] == "bad key"
    assert error["type"] == "invalid_request_error"
    assert seen.process == []  # refused before pre-processing

    resp = await client.get("/v1/models")
    assert resp.status == 401


async def test_permission_denied_is_403(gateway: Any) -> None:
    class Deny:
        @hookimpl
        def gateway_authenticate(self, ctx: Any) -> None:
            raise PermissionDeniedError("not you")

    client = await gateway(None, [Deny()])
    resp = await client.post("/v1/chat/completions", json=chat_body())
    assert resp.status == 403
    assert (await resp.json())["error"]["code"] == "permission_denied"


async def test_first_non_none_principal_wins(gateway: Any) -> None:
    seen = Seen()
    passes, alice, bob = Authenticator(None, is_async=True), Authenticator("alice", is_async=True), Authenticator("bob")
    # called LIFO: passes, then alice; bob is never asked
    client = await gateway(None, [seen, bob, alice, passes])
    assert await reply_of(await client.post("/v1/chat/completions", json=chat_body())) == "hello there"
    assert seen.process == ["alice"]
    assert (passes.calls, alice.calls, bob.calls) == (1, 1, 0)


# gateway_handle_error --------------------------------------------------------------------------


class TeapotError(GatewayError):
    status = 418
    type = "teapot_error"
    code = "im_a_teapot"


class Kettle(Exception):
    pass


class RaisesKettle:
    @hookimpl
    def gateway_process_request(self, ctx: Any) -> None:
        if "kettle" in ctx.body["messages"][-1]["content"]:
            raise Kettle("the kettle boiled over")
        if "other" in ctx.body["messages"][-1]["content"]:
            raise ValueError("something else")


class KettleRenderer:
    def __init__(self) -> None:
        self.errors: list[BaseException] = []

    @hookimpl
    async def gateway_handle_error(self, ctx: Any, error: BaseException) -> GatewayError | None:
        self.errors.append(error)
        if isinstance(error, Kettle):
            return TeapotError(f"short and stout: {error}")
        return None


async def test_handle_error_plugin_wins_over_the_default(gateway: Any) -> None:
    renderer = KettleRenderer()
    client = await gateway(None, [RaisesKettle(), renderer])
    resp = await client.post("/v1/chat/completions", json=chat_body(content="kettle"))
    assert resp.status == 418
    assert await resp.json() == {
        "error": {
            "message": "short and stout: the kettle boiled over",
            "type": "teapot_error",
            "param": None,
            "code": "im_a_teapot",
        }
    }
    assert isinstance(renderer.errors[-1], Kettle)

    # None from the plugin: the trylast default renders a 500 that does not leak the message
    resp = await client.post("/v1/chat/completions", json=chat_body(content="other"), headers={"X-Request-ID": "o-1"})
    assert resp.status == 500
    body = await resp.json()
    assert "something else" not in body["error"]["message"]
    assert resp.headers["X-Gateway-Request-ID"] in body["error"]["message"]  # the gateway's id, the log's
    assert isinstance(renderer.errors[-1], ValueError)

    # and gateway errors still render as they are
    resp = await client.post("/v1/chat/completions", json={**chat_body(), "model": "nope"})
    assert resp.status == 404


async def test_handle_error_without_the_plugin_is_a_500(gateway: Any) -> None:
    client = await gateway(None, [RaisesKettle()])
    resp = await client.post("/v1/chat/completions", json=chat_body(content="kettle"))
    assert resp.status == 500
    assert "kettle" not in (await resp.json())["error"]["message"]


async def test_handle_error_applies_to_a_stream_that_broke_off(gateway: Any) -> None:
    class MapUpstream:
        @hookimpl(tryfirst=True)
        def gateway_handle_error(self, ctx: Any, error: BaseException) -> GatewayError:
            return TeapotError("mapped")

    client = await gateway(mock_config(failure={"mode": "midstream", "after_chunks": 2}), [MapUpstream()])
    resp = await client.post("/v1/chat/completions", json=chat_body(stream=True))
    text = await resp.text()
    assert resp.status == 200
    assert text.rstrip().endswith('"code":"im_a_teapot"}}')
    assert "mapped" in text
