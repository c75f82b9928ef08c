"""The request's frame (``gateway.middleware``): nothing of a request outlives it. The request and its
context must not keep each other alive, nor ``ctx.error``'s traceback the frames holding the body, so
a rejected 100 MB body is freed when its request ends, not when the cyclic collector next runs."""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest

from gateway import hookimpl
from gateway.context import RequestContext
from gateway.testing import MOCK_MODEL

BIG = 900_000  # under aiohttp's 1 MB warning for a raw bytes body


class Watch:
    """Weak references to each finished request and its context (and to the exception that ended it)."""

    def __init__(self) -> None:
        self.refs: list[weakref.ref[Any]] = []

    @hookimpl(trylast=True)
    def gateway_request_finished(self, ctx: RequestContext, error: BaseException | None) -> None:
        self.refs.append(weakref.ref(ctx.request))
        if error is not None:
            self.refs.append(weakref.ref(error))


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "body",
    [
        b'{"model": "' + MOCK_MODEL.encode() + b'", "messages": [{"role": "user", "content": "' + b"x" * BIG + b'"}]}',
        b'{"model": "' + MOCK_MODEL.encode() + b'", "messages": "' + b"x" * BIG + b'"}',  # invalid: 400
        b"{not json" + b"x" * BIG,  # 400 from the parser
    ],
    ids=["answered", "invalid", "not-json"],
)
async def test_a_request_and_its_body_are_freed_when_it_ends_without_the_cyclic_collector(
    gateway: Any, no_gc: None, body: bytes
) -> None:
    watch = Watch()
    client = await gateway(plugins=[watch])
    for _ in range(3):  # each on its own connection: aiohttp keeps a kept-alive one's last request
        headers = {"Content-Type": "application/json", "Connection": "close"}
        resp = await client.post("/v1/chat/completions", data=body, headers=headers)
        await resp.read()
    for _ in range(50):  # aiohttp lets go of the request once its handler task is done
        if len(watch.refs) >= 3 and all(ref() is None for ref in watch.refs):
            break
        await asyncio.sleep(0.01)
    alive = [ref() for ref in watch.refs if ref() is not None]
    assert not alive, [type(obj).__name__ for obj in alive]


async def test_the_last_body_of_a_kept_alive_connection_is_not_kept_either(gateway: Any) -> None:
    body = b'{"model": "' + MOCK_MODEL.encode() + b'", "messages": "' + b"x" * BIG + b'"}'  # 400
    client = await gateway()
    resp = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    await resp.read()  # a first request: the connection and its buffers exist
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(2):
            resp = await client.post("/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
            assert resp.status == 400
            await resp.read()
        await asyncio.sleep(0.05)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < BIG // 2, held
