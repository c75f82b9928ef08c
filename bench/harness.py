"""The benchmark's parts: processes pinned to a core, wrk with every response checked, CPU time and
resident memory from /proc. bench/run.py composes them; a scenario module (bench/scenario_*.py, see
bench/run.py) uses them too."""

from __future__ import annotations

import os
import re
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from upstream import CHUNKS, CONTENT

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
TICK = os.sysconf("SC_CLK_TCK")
#: With two cores or more the process under test gets core 0 alone; the load (wrk, the upstream) core 1.
PINNED = len(os.sched_getaffinity(0)) >= 2
GATEWAY_CPU, LOAD_CPU = 0, 1


def chat_body(stream: bool, model: str = "mock") -> bytes:
    return b'{"model":"%s","messages":[{"role":"user","content":"Say twenty words."}],"stream":%s}' % (
        model.encode(),
        b"true" if stream else b"false",
    )


# Processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _pin(cpu: int | None):
    if not PINNED or cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


@contextmanager
def process(cmd: list[str], port: int, cpu: int | None, env: dict[str, str] | None = None, log: Path | None = None):
    """Run ``cmd`` (pinned to ``cpu``) until the block ends; it is up once ``port`` accepts."""
    out = open(log or os.devnull, "ab")
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=out, preexec_fn=_pin(cpu)
    )
    try:
        deadline = time.monotonic() + 30
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
    """utime + stime of a process and its living children (workers), in seconds."""
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


def machine() -> dict[str, Any]:
    """What the figures were measured on: CPU model, cores, load average at the start."""
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        "unknown",
    )  # fmt: skip
    return {"cpu_model": model, "cpus": os.cpu_count(), "load_before": os.getloadavg()}


def gateway_env(upstream_url: str) -> dict[str, str]:
    """The environment config/examples/openai.yaml reads, pointed at bench/upstream.py."""
    return {"OPENAI_API_BASE": upstream_url, "OPENAI_API_KEY": "sk-bench-key", "OPENAI_MODEL": "mock"}


# Load: wrk ------------------------------------------------------------------------------------

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
%(headers)s
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


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")


def wrk(
    url: str,
    stream: bool,
    seconds: float,
    model: str = "mock",
    headers: dict[str, str] | None = None,
    connections: int = 64,
    strict: bool = True,
) -> dict[str, Any]:
    """A wrk run of ``seconds``; every response checked. ``strict``: any bad response or socket
    error stops the benchmark (a warm-up is not strict)."""
    script = WRK_SCRIPT % {
        "headers": "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in (headers or {}).items()),
        "body": chat_body(stream, model).decode(),
        "stream": "true" if stream else "false",
        "events": CHUNKS + 1,
        "last": CHUNKS - 1,
        "content": CONTENT,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s", "--latency"]
    try:
        out = subprocess.run(
            [*cmd, "-s", f.name, url], capture_output=True, text=True, check=True, preexec_fn=_pin(LOAD_CPU)
        ).stdout
    finally:
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


def cpu_per_request(pid: int, url: str, stream: bool, seconds: float, **options: Any) -> dict[str, Any]:
    """Saturation figures, and the CPU microseconds ``pid`` spent per completed request."""
    before = cpu_seconds(pid)
    result = wrk(url, stream, seconds, **options)
    result["cpu_us"] = (cpu_seconds(pid) - before) / result["requests"] * 1e6
    return result


# Latency at low load: one request at a time ---------------------------------------------------


def sequential(port: int, stream: bool, count: int) -> dict[str, float]:
    """p50/p99 of the whole response and of its first body byte, over ``count`` requests in a row
    on one keep-alive connection."""
    payload = chat_body(stream)
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
