"""The overhead benchmark: what the gateway itself costs per request and per stream, as a multiple of
two floors measured in the same run.

    python3 bench/run.py            # about 8 minutes; writes bench/results.md and bench/results.json

Everything runs on 127.0.0.1: bench/upstream.py (a mock OpenAI API that is not the bottleneck), wrk
as the load generator, and the processes under test, all started at once and measured in turns
(``--rounds`` interleaved rounds; each figure is the median of its rounds, so every ratio comes from
one run on one machine state):

- ``gateway``: `config/examples/openai.yaml` as a new user runs it, to the upstream (every built-in
  plugin, validation, the access log);
- ``floor``: bench/floor.py, a bare aiohttp server and aiohttp client, no features;
- ``lean floor``: bench/lean_floor.py, an aiohttp server and the gateway's own lean client, no features;
- the gateway with one feature on: API keys and one memory rate limit; request body logging; and
  /metrics scraped every second.

With two cores or more each process under test is pinned to core 0 (sched_setaffinity) and the load
to core 1. The primary figure is CPU time per request: the process's utime+stime from /proc divided
by the requests completed. Streams are measured twice: the upstream writing all 20 chunks in one
write, and each chunk alone (``mock-split``). Every response is checked (status, the full content,
``[DONE]``), so a fast error can never pass for speed.

Scenarios: every ``bench/scenario_*.py`` module with ``run(bench: Bench) -> dict | None`` and
``report(result: dict) -> str`` runs after the core figures (the gateway and the upstream still up);
its result lands under its name in results.json and its report in results.md.

Needs wrk (Debian: `apt-get install wrk`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    BENCH,
    GATEWAY_CPU,
    LOAD_CPU,
    PINNED,
    ROOT,
    cpu_per_request,
    free_port,
    gateway_env,
    machine,
    need_wrk,
    process,
    rss_mb,
    sequential,
    wrk,
)
from memory import hold_streams
from upstream import CHUNKS

#: What is measured: (kind, stream, model); ``mock-split`` makes the upstream write each event alone.
KINDS = {
    "non_stream": (False, "mock"),
    "stream": (True, "mock"),
    "stream_split": (True, "mock-split"),
}
GATEWAY_KEY = "sk-gw-bench-0123456789"


@dataclass
class Target:
    """A process under test: its command, the headers wrk sends it, the kinds it is measured on."""

    name: str
    cmd: list[str]
    kinds: tuple[str, ...] = tuple(KINDS)
    headers: dict[str, str] = field(default_factory=dict)
    scrape: bool = False  # GET /metrics every second while it is measured
    port: int = 0
    pid: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"


@dataclass
class Bench:
    """What a scenario gets: the arguments, the upstream's URL, the main gateway (up), the helpers."""

    args: argparse.Namespace
    upstream_url: str
    gateway: Target
    env: dict[str, str]
    wrk = staticmethod(wrk)
    cpu_per_request = staticmethod(cpu_per_request)
    process = staticmethod(process)
    free_port = staticmethod(free_port)


def gateway_config(tmp: Path, name: str, plugins: dict[str, Any] | None = None) -> Path:
    """config/examples/openai.yaml, with ``plugins`` sections added (a feature switched on)."""
    tree = yaml.safe_load((ROOT / "config/examples/openai.yaml").read_text())
    tree.setdefault("plugins", {}).update(plugins or {})
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def targets(tmp: Path, upstream_url: str) -> list[Target]:
    def gateway(name: str, plugins: dict[str, Any] | None = None, **options: Any) -> Target:
        config = gateway_config(tmp, name, plugins)
        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config)]
        return Target(name, cmd, **options)

    def floor(name: str, script: str) -> Target:
        return Target(name, [sys.executable, f"bench/{script}", "--upstream", upstream_url])

    some = ("non_stream", "stream")
    auth = {
        "auth_api_keys": {"mode": "required", "keys": [{"name": "bench", "key": GATEWAY_KEY}]},
        "rate_limit": {"default": {"requests_per_minute": 100_000_000}},
    }
    return [
        gateway("gateway"),
        floor("floor", "floor.py"),
        floor("lean_floor", "lean_floor.py"),
        gateway("auth_and_limit", auth, kinds=some, headers={"Authorization": f"Bearer {GATEWAY_KEY}"}),
        gateway("body_logging", {"request_logging": {"bodies": {"enabled": True}}}, kinds=some),
        gateway("metrics_scraped", kinds=some, scrape=True),
    ]


def scraping(port: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            answer.read()


def measure(target: Target, kind: str, seconds: float) -> dict[str, Any]:
    stream, model = KINDS[kind]
    stop = threading.Event()
    scraper = threading.Thread(target=scraping, args=(target.port, stop), daemon=True) if target.scrape else None
    if scraper is not None:
        scraper.start()
    try:
        return cpu_per_request(target.pid, target.url, stream, seconds, model=model, headers=target.headers)
    finally:
        stop.set()


def main() -> None:
    parser = argparse.ArgumentParser(description="The gateway overhead benchmark (see the module docstring).")
    parser.add_argument("--seconds", type=float, default=5, help="length of each saturation run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every measurement")
    parser.add_argument("--sequential", type=int, default=2000, help="requests in each low-load run")
    parser.add_argument("--streams", type=int, default=1000, help="open streams held for the memory figure")
    parser.add_argument("--leak-requests", type=int, default=100_000, help="requests of the leak check (0: skip)")
    parser.add_argument("--workers", type=int, default=2, help="workers for the scaling run (1: skip)")
    parser.add_argument("--only", nargs="*", help="measure only these targets (gateway, floor, lean_floor...)")
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    args = parser.parse_args()
    need_wrk()

    up_port = free_port()
    upstream_url = f"http://127.0.0.1:{up_port}/v1"
    env = gateway_env(upstream_url)
    results: dict[str, Any] = {"pinned": PINNED, "python": sys.version.split()[0], **machine()}
    results["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    log = Path(tempfile.gettempdir()) / "bench-gateway.log"
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        upstream_cmd = [sys.executable, "bench/upstream.py", "--port", str(up_port)]
        upstream = stack.enter_context(process(upstream_cmd, up_port, LOAD_CPU))
        chosen = [t for t in targets(tmp, upstream_url) if not args.only or t.name in args.only or t.name == "gateway"]
        for target in chosen:
            target.port = free_port()
            cmd = [*target.cmd, "--port", str(target.port)]
            target.pid = stack.enter_context(process(cmd, target.port, GATEWAY_CPU, env, log)).pid
        gateway = chosen[0]
        results["rss_idle_mb"] = rss_mb(gateway.pid)
        print("warming up", flush=True)
        for target in chosen:
            for kind in target.kinds:
                stream, model = KINDS[kind]
                wrk(target.url, stream, 1, model=model, headers=target.headers, strict=False)

        runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
        plan = [(t, kind) for t in chosen for kind in t.kinds]
        for r in range(args.rounds):
            shift = r * len(plan) // max(args.rounds, 1)  # each round starts elsewhere in the plan
            for target, kind in plan[shift:] + plan[:shift]:
                print(f"round {r + 1}/{args.rounds}: {target.name}, {kind}", flush=True)
                runs.setdefault(target.name, {}).setdefault(kind, []).append(measure(target, kind, args.seconds))
        results["cpu"] = {name: {kind: _median(rs) for kind, rs in kinds.items()} for name, kinds in runs.items()}
        results["cpu_rounds"] = {n: {k: [x["cpu_us"] for x in rs] for k, rs in ks.items()} for n, ks in runs.items()}

        print("low load, one request at a time", flush=True)
        results["sequential"] = {
            f"{who}_{kind}": sequential(port, stream, args.sequential)
            for kind, stream in (("non_stream", False), ("stream", True))
            for who, port in (("gateway", gateway.port), ("direct", up_port))
        }
        print(f"memory, {args.streams} open streams", flush=True)
        results["streams"] = args.streams
        results["rss_streams_mb"] = hold_streams(gateway.port, gateway.pid, args.streams)
        if args.leak_requests:
            print(f"leak check, {args.leak_requests} requests", flush=True)
            time.sleep(2)  # the held streams are gone
            before = rss_mb(gateway.pid)
            rps = results["cpu"]["gateway"]["non_stream"]["rps"]
            done = wrk(gateway.url, False, args.leak_requests / rps * 1.2 + 1)["requests"]  # at least that many
            results["leak"] = {"requests": done, "rss_before_mb": before, "rss_after_mb": rss_mb(gateway.pid)}

        bench = Bench(args, upstream_url, gateway, env)
        for path in sorted(BENCH.glob("scenario_*.py")):
            print(f"scenario {path.stem}", flush=True)
            result = importlib.import_module(path.stem).run(bench)
            if result is not None:
                results.setdefault("scenarios", {})[path.stem] = result
        del upstream

    if args.workers > 1:
        scaling = {}
        for workers in (1, args.workers):
            print(f"scaling, {workers} worker(s), unpinned", flush=True)
            port = free_port()
            with ExitStack() as stack:
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
                stack.enter_context(process(upstream_cmd, up_port, None))
                cmd = [*targets(tmp, upstream_url)[0].cmd, "--port", str(port), "--workers", str(workers)]
                stack.enter_context(process(cmd, port, None, env, log))
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                wrk(url, False, 2, strict=False)
                scaling[workers] = wrk(url, False, args.seconds)["rps"]
        results["scaling_rps"] = scaling

    results["load_after"] = __import__("os").getloadavg()
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(report(results))
    print(report(results))


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def report(r: dict[str, Any]) -> str:
    cpu = r["cpu"]
    names = {"non_stream": "non-stream", "stream": f"{CHUNKS}-chunk stream, one upstream write",
             "stream_split": f"{CHUNKS}-chunk stream, each chunk its own write"}  # fmt: skip
    where = "each process under test pinned to core 0, upstream and wrk to core 1" if r["pinned"] else "not pinned"
    load = ", ".join(f"{x:.2f}" for x in r["load_before"])
    lines = [
        "# Benchmark results",
        "",
        f"`python3 bench/run.py`, {r['started']}, on {r['cpus']} CPUs ({r['cpu_model']}; {where}; load average "
        f"{load} at the start), Python {r['python']}. Gateway: config/examples/openai.yaml to bench/upstream.py. "
        "CPU µs of the process per request under wrk (64 connections, every response checked), the median of "
        f"{len(next(iter(next(iter(r['cpu_rounds'].values())).values())))} interleaved rounds.",
        "",
    ]
    if "floor" in cpu and "lean_floor" in cpu:
        lines += [
            "| | gateway CPU µs | floor.py µs | lean_floor.py µs | gateway / floor.py | gateway / lean floor "
            "| gateway req/s | p50 / p99 ms at 64 conns |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for kind, name in names.items():
            g, f, lean = cpu["gateway"][kind], cpu["floor"][kind], cpu["lean_floor"][kind]
            lines.append(
                f"| {name} | {g['cpu_us']:.0f} | {f['cpu_us']:.0f} | {lean['cpu_us']:.0f} | "
                f"{g['cpu_us'] / f['cpu_us']:.2f}x | {g['cpu_us'] / lean['cpu_us']:.2f}x | {g['rps']:,.0f} | "
                f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f} |"
            )
    features = [n for n in ("auth_and_limit", "body_logging", "metrics_scraped") if n in cpu]
    if features:
        lines += ["", "Features, each on its own (added CPU µs per request over the gateway above):", "",
                  "| feature | non-stream µs (added) | stream µs (added) |", "|---|---|---|"]  # fmt: skip
        label = {"auth_and_limit": "API keys + one memory rate limit", "body_logging": "request body logging on",
                 "metrics_scraped": "/metrics scraped every second"}  # fmt: skip
        for n in features:
            cells = [
                f"{cpu[n][k]['cpu_us']:.0f} ({cpu[n][k]['cpu_us'] - cpu['gateway'][k]['cpu_us']:+.0f})"
                for k in ("non_stream", "stream")
            ]
            lines.append(f"| {label[n]} | {' | '.join(cells)} |")
    s = r["sequential"]
    lines += [
        "",
        "One request at a time (keep-alive), added to the upstream's own latency, p50 / p99 ms: "
        + "; ".join(
            f"{kind.replace('_', '-')} {s[f'gateway_{kind}']['p50_ms'] - s[f'direct_{kind}']['p50_ms']:.3f} / "
            f"{s[f'gateway_{kind}']['p99_ms'] - s[f'direct_{kind}']['p99_ms']:.3f}"
            for kind in ("non_stream", "stream")
        )
        + ".",
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
        lines.append(
            "Workers (unpinned, sharing the machine with wrk and the upstream): "
            + ", ".join(f"{w} worker(s) {rps:,.0f} req/s" for w, rps in r["scaling_rps"].items())
            + "."
        )
    for name, result in r.get("scenarios", {}).items():
        lines += ["", importlib.import_module(name).report(result).rstrip()]
    lines.append(f"Load average at the end: {', '.join(f'{x:.2f}' for x in r['load_after'])}.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
