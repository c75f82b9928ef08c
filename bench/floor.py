"""The floor: a bare aiohttp pass-through with uvloop and no features at all (no validation, no
plugins, no logging), moving the upstream's bytes in chunks. What any aiohttp-based gateway costs
at the least; bench/run.py measures it beside the gateway.

``python3 bench/floor.py --port 9300 --upstream http://127.0.0.1:9100/v1``
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def session(app: web.Application):  # type: ignore[no-untyped-def]
        app[session_key] = aiohttp.ClientSession(headers={"Authorization": "Bearer sk-bench-key"})
        yield
        await app[session_key].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with app[session_key].post(
            upstream + "/chat/completions", data=body, headers={"Content-Type": "application/json"}
        ) as upstream_response:
            if upstream_response.content_type != "text/event-stream":
                return web.Response(body=await upstream_response.read(), content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in upstream_response.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    app.cleanup_ctx.append(session)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9300)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    args = parser.parse_args()
    import uvloop

    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop())  # fmt: skip


if __name__ == "__main__":
    main()
