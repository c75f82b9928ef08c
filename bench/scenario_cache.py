"""Scenario: what a response-cache hit costs, in the gateway's CPU-µs per request, with the memory
store and with the Redis store, beside the pass-through (the main gateway, cache off), non-streamed and
streamed. bench/run.py runs it after the core figures; alone (about 2 minutes):

    python3 bench/scenario_cache.py     # prints the table; needs wrk and redis-server

Two more gateways from config/examples/openai.yaml with ``plugins: cache: {enabled: true}``, one of
them with ``state: {store: redis}`` to a redis-server of its own (pinned beside the load). wrk sends
one body again and again, so after the first request every answer is a hit; each response is checked
(200, ``x-gateway-cache: hit``, the whole content, ``[DONE]`` for a stream).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    GATEWAY_CPU,
    LOAD_CPU,
    ROOT,
    WRK_SCRIPT,
    _pin,
    chat_body,
    cpu_per_request,
    cpu_seconds,
    free_port,
    gateway_env,
    need_wrk,
    process,
)
from upstream import CONTENT

#: Appended to harness.WRK_SCRIPT, this ``response`` replaces its check: a hit, whole, as a stream or not.
HIT_CHECK = """
function response(status, headers, body)
  local ok = status == 200 and headers["X-Gateway-Cache"] == "hit"
  ok = ok and string.find(body, '"content":"%s"', 1, true) ~= nil
  if stream then ok = ok and string.sub(body, -14) == "data: [DONE]\\n\\n" end
  if ok then good = good + 1 else bad = bad + 1 end
end
"""
KINDS = (("non_stream", False), ("stream", True))


def hits(pid: int, url: str, stream: bool, seconds: float, connections: int = 64) -> dict[str, Any]:
    """A wrk run of cache hits, every response checked; the CPU-µs ``pid`` spent per hit."""
    params = {"headers": "", "body": chat_body(stream).decode(), "stream": str(stream).lower()}
    script = WRK_SCRIPT % {**params, "events": 0, "last": 0, "content": CONTENT} + HIT_CHECK % CONTENT
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "-s", f.name, url]
    before = cpu_seconds(pid)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, preexec_fn=_pin(LOAD_CPU)).stdout
    finally:
        os.unlink(f.name)
    spent = cpu_seconds(pid) - before
    checked = re.search(r"CHECKED good=(\d+) bad=(\d+)", out)
    assert checked, out
    good, bad = int(checked[1]), int(checked[2])
    if bad or "Socket errors" in out:
        raise SystemExit(f"wrk against {url}: {bad} bad responses\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    return {"requests": good, "rps": rps, "cpu_us": spent / good * 1e6}


def _config(tmp: Path, name: str, extra: dict[str, Any]) -> Path:
    tree = yaml.safe_load((ROOT / "config/examples/openai.yaml").read_text())
    tree.setdefault("plugins", {})["cache"] = {"enabled": True}
    tree.update(extra)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def run(bench: Any) -> dict[str, Any]:
    seconds = bench.args.seconds
    results: dict[str, Any] = {}
    for kind, stream in KINDS:  # the pass-through, measured again beside the hits
        results[f"pass_through_{kind}"] = cpu_per_request(bench.gateway.pid, bench.gateway.url, stream, seconds)
    redis_port = free_port()
    redis_cmd = ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    state = {"state": {"store": "redis", "url": f"redis://127.0.0.1:{redis_port}/0", "timeout_ms": 250}}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        redis = stack.enter_context(process(redis_cmd, redis_port, LOAD_CPU))
        for name, extra in (("memory", {}), ("redis", state)):
            port = free_port()
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(_config(tmp, name, extra))]
            with process([*cmd, "--port", str(port)], port, GATEWAY_CPU, bench.env) as gateway:
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for kind, stream in KINDS:
                    first = ["curl", "-s", "-o", "/dev/null", "-H", "Content-Type: application/json"]
                    subprocess.run([*first, "-d", chat_body(stream), url], check=True)  # the miss
                    hits(gateway.pid, url, stream, 1)  # warm-up
                    redis_before = cpu_seconds(redis.pid)
                    results[f"{name}_{kind}"] = measured = hits(gateway.pid, url, stream, seconds)
                    if name == "redis":
                        measured["redis_cpu_us"] = (cpu_seconds(redis.pid) - redis_before) / measured["requests"] * 1e6
    return results


def report(r: dict[str, Any]) -> str:
    lines = [
        "Cache hits (bench/scenario_cache.py): the gateway's CPU per request",
        "",
        "| | non-stream CPU µs | req/s | stream CPU µs | req/s |",
        "|---|---|---|---|---|",
    ]
    names = {"pass_through": "pass-through (cache off)", "memory": "hit, memory store", "redis": "hit, Redis store"}
    for name, label in names.items():
        n, s = r[f"{name}_non_stream"], r[f"{name}_stream"]
        lines.append(f"| {label} | {n['cpu_us']:.0f} | {n['rps']:,.0f} | {s['cpu_us']:.0f} | {s['rps']:,.0f} |")
    lines.append(
        f"\nredis-server's own CPU per hit: {r['redis_non_stream']['redis_cpu_us']:.0f} µs (non-stream), "
        f"{r['redis_stream']['redis_cpu_us']:.0f} µs (stream)."
    )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="The cost of a cache hit (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=8, help="length of each saturation run")
    args = parser.parse_args()
    need_wrk()
    up_port, gw_port = free_port(), free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    env = gateway_env(upstream_url)
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU))
        config = tmp / "gateway.yaml"
        config.write_text((ROOT / "config/examples/openai.yaml").read_text())
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", str(gw_port)]
        gateway = stack.enter_context(process(cmd, gw_port, GATEWAY_CPU, env))
        target = SimpleNamespace(pid=gateway.pid, url=f"http://127.0.0.1:{gw_port}/v1/chat/completions")
        for _, stream in KINDS:
            cpu_per_request(target.pid, target.url, stream, 1, strict=False)  # warm-up
        print(report(run(SimpleNamespace(args=args, gateway=target, env=env))))


if __name__ == "__main__":
    os.chdir(ROOT)
    main()
