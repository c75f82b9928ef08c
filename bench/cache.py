"""What a response-cache hit costs: the gateway's CPU-µs per request for a hit (memory store and Redis
store) against a pass-through (cache off), non-streamed and streamed.

    python3 bench/cache.py          # about 2 minutes; writes bench/cache_results.md and .json

The same set-up as bench/run.py (whose helpers it uses): bench/upstream.py, the gateway on
bench/gateway.yaml (plus ``plugins: cache:`` and, for Redis, ``state: {store: redis}`` with a
redis-server of its own), wrk; the gateway pinned to core 0, the rest to core 1. wrk sends one request
body again and again, so after the first request every answer is a hit; each is checked (status 200,
the whole content, ``[DONE]`` for streams) and a response without ``x-gateway-cache: hit`` counts as
bad. Needs wrk and redis-server (Debian: ``apt-get install wrk redis-server``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, GATEWAY_CPU, LOAD_CPU, ROOT, body, cpu_per_request, cpu_seconds, free_port, pinned, process
from upstream import CONTENT

HIT_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%(body)s]]
local stream = %(stream)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) good = 0; bad = 0 end
function response(status, headers, body)
  local ok = status == 200 and headers["X-Gateway-Cache"] == "hit"
  ok = ok and string.find(body, '"content":"%(content)s"', 1, true) ~= nil
  if stream then ok = ok and string.sub(body, -14) == "data: [DONE]\\n\\n" end
  if ok then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("CHECKED good=%%d bad=%%d\\n", g, b))
end
"""


def hits(pid: int, url: str, stream: bool, seconds: float, connections: int = 64) -> dict[str, Any]:
    """A wrk run of cache hits (every response checked); the CPU-µs ``pid`` spent per hit."""
    script = HIT_SCRIPT % {"body": body(stream).decode(), "stream": str(stream).lower(), "content": CONTENT}
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", f.name, url]
    before = cpu_seconds(pid)
    out = subprocess.run(pinned(cmd, LOAD_CPU), capture_output=True, text=True, check=True).stdout
    spent = cpu_seconds(pid) - before
    os.unlink(f.name)
    checked = re.search(r"CHECKED good=(\d+) bad=(\d+)", out)
    assert checked, out
    good, bad = int(checked[1]), int(checked[2])
    if bad or "Socket errors" in out:
        raise SystemExit(f"wrk against {url}: {bad} bad responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return {"requests": good, "rps": rps, "cpu_us": spent / good * 1e6}


def config(extra: str) -> Path:
    text = (BENCH / "gateway.yaml").read_text() + "\n" + extra
    path = Path(tempfile.gettempdir()) / f"bench-cache-{os.getpid()}-{abs(hash(extra))}.yaml"
    path.write_text(text)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="The cost of a cache hit (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=8, help="length of each saturation run")
    parser.add_argument("--out", type=Path, default=BENCH / "cache_results")
    args = parser.parse_args()
    for tool in ("wrk", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is needed: apt-get install {tool}")
    up_port, gw_port, redis_port = free_port(), free_port(), free_port()
    env = {"BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1", "BENCH_GATEWAY_PORT": str(gw_port)}
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    setups = {
        "pass_through": "",
        "memory": "plugins:\n  cache: {enabled: true}\n",
        "redis": (
            "plugins:\n  cache: {enabled: true}\n"
            f"state: {{store: redis, url: 'redis://127.0.0.1:{redis_port}/0', timeout_ms: 250}}\n"
        ),
    }
    results: dict[str, Any] = {}
    log = Path(tempfile.gettempdir()) / "bench-cache-gateway.log"
    with ExitStack() as stack:
        stack.enter_context(process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU))
        redis = stack.enter_context(process(redis_cmd, redis_port, LOAD_CPU))
        for name, extra in setups.items():
            path = config(extra)
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(path)]
            with process(cmd, gw_port, GATEWAY_CPU, env, log) as gateway:
                for kind, stream in (("non_stream", False), ("stream", True)):
                    print(f"{name}, {kind}", flush=True)
                    if name == "pass_through":
                        cpu_per_request(gateway.pid, url, stream, 2)  # warm-up
                        results[f"{name}_{kind}"] = cpu_per_request(gateway.pid, url, stream, args.seconds)
                    else:
                        first = ["curl", "-s", "-o", "/dev/null", "-H", "Content-Type: application/json"]
                        subprocess.run([*first, "-d", body(stream), url], check=True)  # the miss
                        hits(gateway.pid, url, stream, 2)  # warm-up
                        redis_before = cpu_seconds(redis.pid)
                        results[f"{name}_{kind}"] = run = hits(gateway.pid, url, stream, args.seconds)
                        if name == "redis":
                            run["redis_cpu_us"] = (cpu_seconds(redis.pid) - redis_before) / run["requests"] * 1e6
            path.unlink()
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


def report(r: dict[str, Any]) -> str:
    lines = [
        "| | CPU µs/request, non-stream | req/s | CPU µs/request, stream | req/s |",
        "|---|---|---|---|---|",
    ]
    names = {"pass_through": "pass-through (cache off)", "memory": "hit, memory store", "redis": "hit, Redis store"}
    for name, label in names.items():
        n, s = r[f"{name}_non_stream"], r[f"{name}_stream"]
        lines.append(f"| {label} | {n['cpu_us']:.0f} | {n['rps']:,.0f} | {s['cpu_us']:.0f} | {s['rps']:,.0f} |")
    if "redis_cpu_us" in r.get("redis_non_stream", {}):
        lines.append(
            f"\nredis-server's own CPU per hit: {r['redis_non_stream']['redis_cpu_us']:.0f} µs (non-stream), "
            f"{r['redis_stream']['redis_cpu_us']:.0f} µs (stream)."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
