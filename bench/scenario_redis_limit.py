"""Scenario: what one Redis-backed limit costs. The same non-stream request through
config/examples/openai.yaml without a limit and with one ``requests_per_minute`` counted in a real
redis-server on 127.0.0.1 (``state.store: redis``; a limit no request reaches, so every request is
counted and none refused).

Run by bench/run.py after its core figures, or alone (``python3 bench/scenario_redis_limit.py``:
about 2 minutes, writes bench/results-redis.md and .json). Figures, each the median of
``--rounds`` interleaved runs: the gateway process's CPU µs per request at saturation (wrk, 64
connections), latency p50/p99 one request at a time, Redis commands per request (``INFO
commandstats``); and the limit's own path in one process (``SharedStore.acquire`` as a request makes
it, over the lean connection), in CPU µs per request (``time.process_time``). The gateways are
pinned to core 0; the upstream, redis-server and wrk to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BENCH,
    GATEWAY_CPU,
    LOAD_CPU,
    ROOT,
    _pin,
    cpu_per_request,
    free_port,
    gateway_env,
    machine,
    need_wrk,
    process,
    sequential,
    wrk,
)

LIMIT = {"default": {"requests_per_minute": 1_000_000_000}}  # counted, never reached


@contextmanager
def redis_server(port: int):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_pin(LOAD_CPU))
    try:
        deadline = time.monotonic() + 5
        while redis_command(port, "PING") != "+PONG":
            if time.monotonic() > deadline:
                raise SystemExit("redis-server did not start")
            time.sleep(0.05)
        yield proc
    finally:
        proc.kill()
        proc.wait(5)


def redis_command(port: int, *words: str) -> str:
    """One command's reply (a status line, or a bulk string's text), "" when Redis does not answer."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall((f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)).encode())
            data = b""
            while b"\r\n" not in data:
                data += sock.recv(65536)
            head, _, rest = data.partition(b"\r\n")
            if not head.startswith(b"$"):
                return head.decode()
            while len(rest) < int(head[1:]) + 2:
                rest += sock.recv(65536)
            return rest[: int(head[1:])].decode()
    except OSError:
        return ""


def redis_calls(port: int) -> int:
    """Round trips Redis served since it started: its ``EVALSHA`` and ``EVAL`` calls, the only
    commands the gateway sends per request (``INFO commandstats``; the commands scripts run inside,
    such as GET, SET and TIME, are counted apart and are not round trips)."""
    total = 0
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            total += int(line.partition(":")[2].split(",")[0].split("=")[1])
    return total


def config(tmp: Path, name: str, redis_port: int) -> Path:
    tree = yaml.safe_load((ROOT / "config/examples/openai.yaml").read_text())
    if name != "no_limit":
        tree.setdefault("plugins", {})["rate_limit"] = LIMIT
    if name == "redis_limit":
        # 1 s, not the example's 50 ms: a timed-out call would be served uncounted and flatter the figure
        tree["state"] = {"store": "redis", "url": f"redis://127.0.0.1:{redis_port}/0", "timeout_ms": 1000}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


async def in_process(redis_port: int, count: int, concurrent: int = 1) -> float:
    """CPU µs per request of the limit's own path: ``SharedStore.acquire`` of one request window,
    ``concurrent`` callers at once (their calls auto-pipelined: one write per event-loop iteration)."""
    from gateway.state import StateConfig, open_store
    from gateway_plugins.rate_limit.shared import SharedStore
    from gateway_plugins.rate_limit.store import Charge

    store = open_store(StateConfig(store="redis", url=f"redis://127.0.0.1:{redis_port}/1", timeout_ms=1000))
    shared = SharedStore(store)
    charges = [Charge("k:bench:requests", LIMIT["default"]["requests_per_minute"])]
    try:
        for _ in range(200):
            await shared.acquire(charges)

        async def caller() -> None:
            for _ in range(count // concurrent):
                await shared.acquire(charges)

        started = time.process_time()
        await asyncio.gather(*(caller() for _ in range(concurrent)))
        return (time.process_time() - started) / (count // concurrent * concurrent) * 1e6
    finally:
        await shared.close()
        await store.close()


def _loop_run(coro: Any) -> Any:
    """On uvloop, as the gateway runs, when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(bench: Any) -> dict[str, Any]:
    """Measure (see the module docstring); ``bench``: bench/run.py's ``Bench`` (args, env)."""
    args = bench.args
    rounds, seconds, count = args.rounds, args.seconds, min(args.sequential, 2000)
    redis_port = free_port()
    log = Path(tempfile.gettempdir()) / "bench-gateway-redis.log"
    runs: dict[str, list[dict[str, Any]]] = {"no_limit": [], "memory_limit": [], "redis_limit": []}
    result: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        stack.enter_context(redis_server(redis_port))
        ports = {}
        for name in runs:
            ports[name] = free_port()
            cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config(tmp, name, redis_port)), "--port"]
            pid = stack.enter_context(process([*cmd, str(ports[name])], ports[name], GATEWAY_CPU, bench.env, log)).pid
            ports[name] = (ports[name], pid)
            wrk(f"http://127.0.0.1:{ports[name][0]}/v1/chat/completions", False, 2, strict=False)  # warm-up
        for r in range(rounds):
            for name in runs if r % 2 == 0 else reversed(list(runs)):
                port, pid = ports[name]
                print(f"redis_limit round {r + 1}/{rounds}: {name}", flush=True)
                before = redis_calls(redis_port)
                measured = cpu_per_request(pid, f"http://127.0.0.1:{port}/v1/chat/completions", False, seconds)
                measured.update(sequential(port, False, count))
                measured["redis_commands_per_request"] = (redis_calls(redis_port) - before) / (
                    measured["requests"] + count
                )
                runs[name].append(measured)
        result["in_process_cpu_us"] = _loop_run(in_process(redis_port, 20_000))
        result["in_process_concurrent_cpu_us"] = _loop_run(in_process(redis_port, 64_000, 64))
    for name, measured in runs.items():
        result[name] = {
            key: statistics.median(m[key] for m in measured)
            for key in ("cpu_us", "rps", "p50_ms", "p99_ms", "redis_commands_per_request")
        }
        result[name]["cpu_rounds"] = [round(m["cpu_us"], 1) for m in measured]
    for name in ("memory_limit", "redis_limit"):  # the same round's no-limit run: the machine's state cancels
        pairs = zip(result[name]["cpu_rounds"], result["no_limit"]["cpu_rounds"], strict=True)
        result[name]["added_cpu_us_paired"] = statistics.median(a - b for a, b in pairs)
    result["rounds"] = rounds
    result["load_after"] = os.getloadavg()
    return result


def report(r: dict[str, Any]) -> str:
    none, redis = r["no_limit"], r["redis_limit"]
    return (
        "### One Redis-backed limit (bench/scenario_redis_limit.py)\n\n"
        f"{r['started']}{_load(r)}, medians of {r['rounds']} interleaved rounds; non-stream requests through "
        "config/examples/openai.yaml, without a limit and with one `requests_per_minute` in redis-server "
        "on 127.0.0.1.\n\n"
        "| | gateway CPU µs/request | req/s (64 conns) | p50 / p99 ms, one at a time | Redis round trips/request |\n"
        "|---|---|---|---|---|\n"
        + "".join(
            f"| {label} | {x['cpu_us']:.0f} | {x['rps']:,.0f} | {x['p50_ms']:.3f} / {x['p99_ms']:.3f} | "
            f"{x['redis_commands_per_request']:.2f} |\n"
            for label, x in (("no limit", none), ("one memory limit", r["memory_limit"]), ("one Redis limit", redis))
        )
        + "\n"
        f"Added per limited request: {redis['added_cpu_us_paired']:.0f} CPU µs at saturation (the median of "
        f"each round's difference to the no-limit run; {redis['cpu_us'] - none['cpu_us']:.0f} between the "
        f"medians; one memory limit: {r['memory_limit']['added_cpu_us_paired']:.0f}), "
        f"{redis['p50_ms'] - none['p50_ms']:.3f} ms at p50 and {redis['p99_ms'] - none['p99_ms']:.3f} ms at p99, "
        f"{redis['redis_commands_per_request']:.2f} round trips. The limit's own path in one process "
        f"(SharedStore.acquire over the lean connection): {r['in_process_concurrent_cpu_us']:.1f} CPU µs per "
        f"request with 64 callers at once (their calls auto-pipelined), {r['in_process_cpu_us']:.1f} one call at a "
        "time (a write and a read each).\n"
    )


def _load(r: dict[str, Any]) -> str:
    marks = [(when, r[key]) for when, key in (("start", "load_before"), ("end", "load_after")) if key in r]
    return "".join(f", load average {', '.join(f'{x:.2f}' for x in v)} at the {when}" for when, v in marks)


def main() -> None:
    parser = argparse.ArgumentParser(description="The cost of one Redis-backed limit (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=6, help="length of each saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in each low-load run")
    parser.add_argument("--out", type=Path, default=BENCH / "results-redis")
    args = parser.parse_args()
    need_wrk()
    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    env = gateway_env(upstream_url)
    with process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU):
        result = {**machine(), "python": sys.version.split()[0], **run(SimpleNamespace(args=args, env=env))}
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(result))
    print(report(result))


if __name__ == "__main__":
    main()
