"""What one Redis-backed limit costs: the same request with and without a ``requests_per_minute``
limit counted in a real redis-server on 127.0.0.1 (``state.store: redis``).

    python3 bench/redis_limit.py     # about 2 minutes; writes bench/results-redis.md and .json

The gateway runs bench/gateway.yaml (as in bench/run.py), and again with ``state: {store: redis}``
and a limit no request reaches (so every request is counted and none refused). Figures, each the
median of ``--rounds`` alternating runs: the gateway process's CPU µs per request at saturation (wrk,
non-stream), the added latency p50/p99 one request at a time, and Redis commands per request
(``INFO commandstats``). Also the limit's own path in one process (``SharedStore.acquire`` and
``finish``, as a request makes them), in CPU µs per request (``time.process_time``). With two or
more cores the gateway is pinned to core 0, the upstream, Redis and wrk to core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BENCH, GATEWAY_CPU, LOAD_CPU, PINNED, cpu_per_request, free_port, pinned, process, sequential, wrk

LIMIT = {"default": {"requests_per_minute": 1_000_000_000}}  # counted, never reached


@contextmanager
def redis_server(port: int):
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(pinned(cmd, LOAD_CPU), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def redis_calls(port: int) -> dict[str, int]:
    """Calls per command since start (``INFO commandstats``)."""
    calls = {}
    for line in redis_command(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_"):
            name, _, rest = line.partition(":")
            calls[name[8:]] = int(rest.split(",")[0].split("=")[1])
    return calls


def limited_config(redis_port: int) -> Path:
    config = yaml.safe_load((BENCH / "gateway.yaml").read_text())
    config["state"] = {"store": "redis", "url": f"redis://127.0.0.1:{redis_port}/0", "timeout_ms": 50}
    config.setdefault("plugins", {})["rate_limit"] = LIMIT
    path = Path(tempfile.gettempdir()) / "bench-gateway-redis.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def measure(config: str, env: dict[str, str], gw_port: int, seconds: float, count: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "gateway", "serve", "--config", config]
    log = Path(tempfile.gettempdir()) / "bench-gateway-redis.log"
    with process(cmd, gw_port, GATEWAY_CPU, env, log) as gateway:
        url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        wrk(url, False, 2, strict=False)  # warm-up
        result = cpu_per_request(gateway.pid, url, False, seconds)
        result["sequential"] = sequential(gw_port, False, count)
        result["sequential_requests"] = count
    return result


async def in_process(redis_port: int, count: int) -> float:
    """CPU µs per request of the limit's own path: acquire, then finish (a request without slots
    or tokens has nothing to finish), over one pooled connection."""
    from gateway.state import StateConfig, open_store
    from gateway_plugins.rate_limit.shared import SharedStore
    from gateway_plugins.rate_limit.store import Charge

    store = open_store(StateConfig(store="redis", url=f"redis://127.0.0.1:{redis_port}/1", timeout_ms=1000))
    shared = SharedStore(store)
    charges = [Charge("k:bench:requests", LIMIT["default"]["requests_per_minute"])]
    try:
        for _ in range(200):
            await shared.acquire(charges)
        started = time.process_time()
        for _ in range(count):
            grant = await shared.acquire(charges)
            await shared.finish([], [])
        assert grant.granted
        return (time.process_time() - started) / count * 1e6
    finally:
        await shared.close()
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="The cost of one Redis-backed limit (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=8, help="length of each saturation run")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in each low-load run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each; medians are reported")
    parser.add_argument("--out", type=Path, default=BENCH / "results-redis")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")
    up_port, gw_port, redis_port = free_port(), free_port(), free_port()
    env = {"BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1", "BENCH_GATEWAY_PORT": str(gw_port)}
    runs: dict[str, list[dict[str, Any]]] = {"none": [], "redis": []}
    results: dict[str, Any] = {"pinned": PINNED, "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}
    with ExitStack() as stack:
        stack.enter_context(process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU))
        stack.enter_context(redis_server(redis_port))
        configs = {"none": "bench/gateway.yaml", "redis": str(limited_config(redis_port))}
        for round_ in range(args.rounds):
            for name, config in configs.items():
                print(f"round {round_ + 1}: {name}", flush=True)
                before = redis_calls(redis_port)
                run = measure(config, env, gw_port, args.seconds, args.sequential)
                after = redis_calls(redis_port)
                served = run["requests"] + run["sequential_requests"]
                run["redis_commands_per_request"] = sum(after.values()) - sum(before.values()) - 1  # less INFO
                run["redis_commands_per_request"] /= served
                run["evalsha_per_request"] = (after.get("evalsha", 0) - before.get("evalsha", 0)) / served
                runs[name].append(run)
        print("in process: SharedStore.acquire + finish", flush=True)
        results["in_process_cpu_us"] = asyncio.run(in_process(redis_port, 20_000))
    for name, measured in runs.items():
        results[name] = {
            "cpu_us": statistics.median(r["cpu_us"] for r in measured),
            "rps": statistics.median(r["rps"] for r in measured),
            "p50_ms": statistics.median(r["sequential"]["p50_ms"] for r in measured),
            "p99_ms": statistics.median(r["sequential"]["p99_ms"] for r in measured),
            "redis_commands_per_request": statistics.median(r["redis_commands_per_request"] for r in measured),
            "evalsha_per_request": statistics.median(r["evalsha_per_request"] for r in measured),
            "runs": measured,
        }
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


def report(r: dict[str, Any]) -> str:
    none, redis = r["none"], r["redis"]
    where = "gateway pinned to core 0; upstream, redis-server and wrk to core 1" if r["pinned"] else "not pinned"
    return (
        "# One Redis-backed limit: the cost\n\n"
        f"`python3 bench/redis_limit.py`, {r['date']} ({where}), Python {r['python']}; medians of "
        f"{len(none['runs'])} alternating runs. Non-stream requests through bench/gateway.yaml, without a limit "
        "and with one `requests_per_minute` counted in redis-server on 127.0.0.1.\n\n"
        "| | gateway CPU µs/request | req/s (64 conns) | p50 / p99 ms, one at a time | Redis commands/request |\n"
        "|---|---|---|---|---|\n"
        f"| no limit | {none['cpu_us']:.0f} | {none['rps']:,.0f} | {none['p50_ms']:.3f} / {none['p99_ms']:.3f} | "
        f"{none['redis_commands_per_request']:.2f} |\n"
        f"| one Redis limit | {redis['cpu_us']:.0f} | {redis['rps']:,.0f} | {redis['p50_ms']:.3f} / "
        f"{redis['p99_ms']:.3f} | {redis['redis_commands_per_request']:.2f} "
        f"(EVALSHA {redis['evalsha_per_request']:.2f}) |\n\n"
        f"Added per limited request: {redis['cpu_us'] - none['cpu_us']:.0f} CPU µs end to end (saturation), "
        f"{redis['p50_ms'] - none['p50_ms']:.3f} ms p50 and {redis['p99_ms'] - none['p99_ms']:.3f} ms p99 of "
        f"latency, {redis['redis_commands_per_request']:.2f} round trips. The limit's own path in one process "
        f"(SharedStore.acquire + finish over the pool): {r['in_process_cpu_us']:.1f} CPU µs per request.\n"
    )


if __name__ == "__main__":
    main()
