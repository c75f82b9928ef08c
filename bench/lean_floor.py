"""The lean floor: bench/floor.py with the gateway's own upstream client (``gateway.upstream.http_client``)
in place of aiohttp's: an aiohttp server, uvloop, and no features at all (no validation, no plugins, no
logging), moving the upstream's bytes as they arrive. What the gateway's pass-through costs before any of
its features; bench/run.py measures it beside the gateway and bench/floor.py.

``python3 bench/lean_floor.py --port 9301 --upstream http://127.0.0.1:9100/v1``
"""

from __future__ import annotations

import argparse

import yarl
from aiohttp import web

from gateway.upstream.http_client import HttpClient


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    client_key = web.AppKey("client", HttpClient)
    path = yarl.URL(upstream).raw_path.rstrip("/") + "/chat/completions"

    async def client(app: web.Application):  # type: ignore[no-untyped-def]
        headers = {"Authorization": "Bearer sk-bench-key", "Content-Type": "application/json"}
        app[client_key] = HttpClient(upstream, headers=headers)
        yield
        await app[client_key].close()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        upstream_response = await app[client_key].request("POST", path, body, None)
        try:
            if upstream_response.content_type != "text/event-stream":
                return web.Response(body=await upstream_response.read(), content_type="application/json")
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            async for data in upstream_response.iter_any():
                await response.write(data)
            await response.write_eof()
            return response
        finally:
            upstream_response.release()

    app.cleanup_ctx.append(client)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9301)
    parser.add_argument("--upstream", default="http://127.0.0.1:9100/v1")
    args = parser.parse_args()
    import uvloop

    web.run_app(make_app(args.upstream), host="127.0.0.1", port=args.port, access_log=None, print=None,
                loop=uvloop.new_event_loop())  # fmt: skip


if __name__ == "__main__":
    main()
