"""The overhead benchmark: what the gateway itself costs per request and per stream.

    python3 bench/run.py            # about 3 minutes; writes bench/results.md and bench/results.json

Everything runs on 127.0.0.1: bench/upstream.py (a mock OpenAI API that is not the bottleneck), the
gateway on bench/gateway.yaml (model `mock` through openai_compat to that upstream, as shipped:
every plugin, validation and the access log), and wrk as the load generator. With two or more cores
the gateway is pinned to core 0 (taskset) and the upstream and wrk to core 1. Every response is
checked (status, the full content, `[DONE]`), so a fast error can never pass for speed. Each figure
is also measured straight against the upstream: the no-gateway limit.

Needs wrk (Debian: `apt-get install wrk`) and taskset (util-linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from upstream import CHUNKS, CONTENT

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TICK = os.sysconf("SC_CLK_TCK")
PINNED = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
GATEWAY_CPU, LOAD_CPU = "0", "1"


def body(stream: bool, model: str = "mock") -> bytes:
    return json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "Say twenty words."}], "stream": stream}
    ).encode()


# Processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cmd: list[str], cpu: str | None) -> list[str]:
    return ["taskset", "-c", cpu, *cmd] if PINNED and cpu is not None else cmd


@contextmanager
def process(cmd: list[str], port: int, cpu: str | None, env: dict[str, str] | None = None, log: Path | None = None):
    out = open(log or os.devnull, "wb")
    proc = subprocess.Popen(pinned(cmd, cpu), cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(cmd)} did not start (see {log})")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped and living children (workers), in seconds."""
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# Load: wrk ------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%(body)s]]
local stream = %(stream)s
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) good = 0; bad = 0 end
function response(status, headers, body)
  local ok = status == 200
  if ok and stream then
    local _, events = string.gsub(body, "data: ", "")
    ok = events == %(events)d and string.sub(body, -14) == "data: [DONE]\\n\\n"
    for i = 0, %(last)d do
      ok = ok and string.find(body, string.format('"w%%02d "', i), 1, true) ~= nil
    end
  elseif ok then
    ok = string.find(body, '"content":"%(content)s"', 1, true) ~= nil
  end
  if ok then good = good + 1 else bad = bad + 1 end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("CHECKED good=%%d bad=%%d\\n", g, b))
end
"""


def wrk(url: str, stream: bool, seconds: float, connections: int = 64, strict: bool = True) -> dict[str, Any]:
    """A wrk run of ``seconds``; every response checked. ``strict``: any bad response or socket
    error stops the benchmark (a warm-up is not strict)."""
    script = WRK_SCRIPT % {
        "body": body(stream).decode(),
        "stream": "true" if stream else "false",
        "events": CHUNKS + 1,
        "last": CHUNKS - 1,
        "content": CONTENT,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = [
        "wrk",
        "-t2",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "--latency",
        "-s",
        f.name,
        url,
    ]
    out = subprocess.run(pinned(cmd, LOAD_CPU), capture_output=True, text=True, check=True).stdout
    os.unlink(f.name)
    checked = re.search(r"CHECKED good=(\d+) bad=(\d+)", out)
    assert checked, out
    good, bad = int(checked[1]), int(checked[2])
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if strict and (bad or errors):
        raise SystemExit(f"wrk against {url}: {bad} bad responses, {errors and errors[0]}\n{out}")
    return {
        "requests": good,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1]),  # type: ignore[index]
        "p50_ms": _ms(re.search(r"50%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
        "p99_ms": _ms(re.search(r"99%\s+([\d.]+\w+)", out)[1]),  # type: ignore[index]
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(\w+)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def cpu_per_request(pid: int, url: str, stream: bool, seconds: float) -> dict[str, Any]:
    """Saturation figures, and the CPU microseconds ``pid`` spent per completed request."""
    before = cpu_seconds(pid)
    result = wrk(url, stream, seconds)
    result["cpu_us"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
    return result


# Latency at low load: one request at a time ---------------------------------------------------


def sequential(port: int, stream: bool, count: int) -> dict[str, float]:
    """p50/p99 of the whole response and of its first body byte, over ``count`` requests in a row
    on one keep-alive connection."""
    payload = body(stream)
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    totals, firsts = [], []
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendall(request)
            data, first = b"", None
            while True:
                data += sock.recv(65536)
                head_end = data.find(b"\r\n\r\n")
                if first is None and head_end >= 0 and (b"data:" in data if stream else len(data) > head_end + 4):
                    first = time.perf_counter()
                if head_end >= 0 and _complete(data, head_end):
                    break
            totals.append(time.perf_counter() - start)
            firsts.append((first or time.perf_counter()) - start)
            assert b" 200 " in data[:16] and (b"data: [DONE]" in data if stream else CONTENT.encode() in data), data
    return {"p50_ms": _pct(totals, 50), "p99_ms": _pct(totals, 99), "first_byte_p50_ms": _pct(firsts, 50)}


def _complete(data: bytes, head_end: int) -> bool:
    head = data[:head_end].lower()
    length = re.search(rb"content-length: (\d+)", head)
    if length:
        return len(data) >= head_end + 4 + int(length[1])
    return data.endswith(b"0\r\n\r\n")


def _pct(values: list[float], pct: int) -> float:
    return statistics.quantiles(values, n=100)[pct - 1] * 1000 if len(values) > 1 else values[0] * 1000


# Memory: many open streams --------------------------------------------------------------------


async def _hold_streams(port: int, count: int, measure: Any) -> float:
    payload = body(True, "mock-slow")
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    writers = []

    async def open_one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
        writer.write(request)
        data = b""
        while b"data:" not in data:
            chunk = await reader.read(4096)
            if not chunk:
                raise RuntimeError(f"stream closed early: {data[:200]!r}")
            data += chunk

    for start in range(0, count, 100):  # connect in batches, like clients arriving
        await asyncio.gather(*(open_one() for _ in range(min(100, count - start))))
    value = measure()
    for writer in writers:
        writer.close()
    return value


def hold_streams(port: int, pid: int, count: int) -> float:
    return asyncio.run(asyncio.wait_for(_hold_streams(port, count, lambda: rss_mb(pid)), 120))


# The run --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description="The gateway overhead benchmark (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=10, help="length of each saturation run")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in each low-load run")
    parser.add_argument("--streams", type=int, default=1000, help="open streams held for the memory figure")
    parser.add_argument("--leak-requests", type=int, default=100_000, help="requests of the leak check (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the scaling run (1: skip)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    up_port, gw_port = free_port(), free_port()
    env = {"BENCH_UPSTREAM_URL": f"http://127.0.0.1:{up_port}/v1", "BENCH_GATEWAY_PORT": str(gw_port)}
    gateway_cmd = [sys.executable, "-m", "gateway", "serve", "--config", "bench/gateway.yaml"]
    results: dict[str, Any] = {"pinned": PINNED, "cpus": os.cpu_count(), "python": sys.version.split()[0]}
    log = Path(tempfile.gettempdir()) / "bench-gateway.log"
    with ExitStack() as stack:
        upstream = stack.enter_context(
            process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU)
        )
        gateway = stack.enter_context(process(gateway_cmd, gw_port, GATEWAY_CPU, env, log))
        gw_url, up_url = (
            f"http://127.0.0.1:{gw_port}/v1/chat/completions",
            f"http://127.0.0.1:{up_port}/v1/chat/completions",
        )
        results["rss_idle_mb"] = rss_mb(gateway.pid)
        print("warming up", flush=True)
        wrk(gw_url, False, 3, strict=False)
        wrk(gw_url, True, 2, strict=False)

        for kind, stream in (("non_stream", False), ("stream", True)):
            print(f"saturation, {kind}", flush=True)
            results[f"gateway_{kind}"] = cpu_per_request(gateway.pid, gw_url, stream, args.seconds)
            results[f"direct_{kind}"] = cpu_per_request(upstream.pid, up_url, stream, args.seconds)
            print(f"low load, {kind}", flush=True)
            results[f"gateway_{kind}"]["sequential"] = sequential(gw_port, stream, args.sequential)
            results[f"direct_{kind}"]["sequential"] = sequential(up_port, stream, args.sequential)

        print(f"memory, {args.streams} open streams", flush=True)
        results["streams"] = args.streams
        results["rss_streams_mb"] = hold_streams(gw_port, gateway.pid, args.streams)
        if args.leak_requests:
            print(f"leak check, {args.leak_requests} requests", flush=True)
            time.sleep(2)  # the held streams are gone
            before = rss_mb(gateway.pid)
            seconds = args.leak_requests / results["gateway_non_stream"]["rps"] * 1.2 + 1  # at least that many
            done = wrk(gw_url, False, seconds)["requests"]
            results["leak"] = {"requests": done, "rss_before_mb": before, "rss_after_mb": rss_mb(gateway.pid)}

    print("floor: a bare aiohttp pass-through", flush=True)
    floor_cmd = [sys.executable, "bench/floor.py", "--port", str(gw_port), "--upstream", env["BENCH_UPSTREAM_URL"]]
    with ExitStack() as stack:
        stack.enter_context(process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, LOAD_CPU))
        floor = stack.enter_context(process(floor_cmd, gw_port, GATEWAY_CPU))
        wrk(gw_url, False, 2, strict=False)
        for kind, stream in (("non_stream", False), ("stream", True)):
            results[f"floor_{kind}"] = cpu_per_request(floor.pid, gw_url, stream, args.seconds)

    if args.workers > 1:
        scaling = {}
        for workers in (1, args.workers):
            print(f"scaling, {workers} worker(s), unpinned", flush=True)
            with ExitStack() as stack:
                stack.enter_context(
                    process([sys.executable, "bench/upstream.py", "--port", str(up_port)], up_port, None)
                )
                stack.enter_context(process([*gateway_cmd, "--workers", str(workers)], gw_port, None, env, log))
                wrk(gw_url, False, 2, strict=False)
                scaling[workers] = wrk(gw_url, False, args.seconds)["rps"]
        results["scaling_rps"] = scaling

    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


def report(r: dict[str, Any]) -> str:
    def row(name: str, kind: str) -> str:
        g, d = r[f"gateway_{kind}"], r[f"direct_{kind}"]
        gs, ds = g["sequential"], d["sequential"]
        return (
            f"| {name} | {g['cpu_us']:.0f} | {d['cpu_us']:.0f} | {g['rps']:,.0f} ({g['rps'] / d['rps']:.0%}) | "
            f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f} | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} | "
            f"{gs['p50_ms'] - ds['p50_ms']:.3f} / {gs['p99_ms'] - ds['p99_ms']:.3f} | "
            f"{gs['first_byte_p50_ms'] - ds['first_byte_p50_ms']:.3f} |"
        )

    where = "gateway pinned to core 0, upstream and wrk to core 1" if r["pinned"] else "not pinned"
    lines = [
        "# Benchmark results",
        "",
        f"`python3 bench/run.py` on {r['cpus']} CPUs ({where}), Python {r['python']}. The gateway runs "
        "bench/gateway.yaml: model `mock` through openai_compat to bench/upstream.py, access log on. "
        "Saturation: wrk, 64 connections; every response checked. Direct: the same load straight to the upstream.",
        "",
        "| | gateway CPU µs/request | upstream alone CPU µs/request | req/s (of direct) | "
        "p50 / p99 ms at 64 conns | direct p50 / p99 ms | added latency p50 / p99 ms, one at a time | "
        "added time to first byte p50 ms |",
        "|---|---|---|---|---|---|---|---|",
        row("non-stream", "non_stream"),
        row(f"{CHUNKS}-chunk stream", "stream"),
        "",
        "The floor, measured the same way: a bare aiohttp pass-through with uvloop and no features (bench/floor.py): "
        f"{r['floor_non_stream']['cpu_us']:.0f} CPU µs per request ({r['floor_non_stream']['rps']:,.0f} req/s), "
        f"{r['floor_stream']['cpu_us']:.0f} per stream ({r['floor_stream']['rps']:,.0f} req/s). The gateway costs "
        f"{r['gateway_non_stream']['cpu_us'] / r['floor_non_stream']['cpu_us']:.2f} times that per request and "
        f"{r['gateway_stream']['cpu_us'] / r['floor_stream']['cpu_us']:.2f} times per stream.",
        "",
        f"Resident memory: {r['rss_idle_mb']:.0f} MB idle, {r['rss_streams_mb']:.0f} MB holding "
        f"{r['streams']:,} open streams to the slow upstream.",
    ]
    if "leak" in r:
        leak = r["leak"]
        lines.append(
            f"Leak check: {leak['requests']:,} requests, RSS {leak['rss_before_mb']:.1f} MB before, "
            f"{leak['rss_after_mb']:.1f} MB after."
        )
    if "scaling_rps" in r:
        s = r["scaling_rps"]
        lines.append(
            "Workers (unpinned, sharing the machine with wrk and the upstream): "
            + ", ".join(f"{w} worker(s) {rps:,.0f} req/s" for w, rps in s.items())
            + "."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
