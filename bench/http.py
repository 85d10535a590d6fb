"""HTTP serve mode against the TCP transport (issue 8's benchmark).

``execute`` on the mock (no latency), driven from a separate load-generator process over loopback:

* **http keep-alive**: ``POST /rpc`` on N kept-alive HTTP/1.1 connections, one request at a time
  on each (HTTP/1.1 has no multiplexing), so N in flight;
* **tcp, N connections**: the same JSON-RPC line on N TCP connections, one request at a time on
  each: the like-for-like comparison (target: HTTP at least 60% of it);
* **tcp, 1 connection pipelined**: N in flight on one TCP connection (``bench/loadgen.py``'s way, as
  in bench/core.py), for reference: the most a client can get from llm-rpc.

The load generator is a raw asyncio ``Protocol`` (no HTTP library) so that the client costs as
little as possible on the 2-core machine; each server runs alone in its own process. Rounds
alternate the targets; the medians are reported and written to ``bench/results/http.json``, with
the HTTP/TCP ratio taken within each round (the machine is shared) and each server's CPU time
per request (both servers saturate their core: this is their cost, whatever the client's).

    python -m bench.http                      # 5 rounds of 3 s, 64 connections
    python -m bench.http --rounds 1 --duration 2 --connections 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
BODY = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hello","model":"bench-model"}}'


# -- the load generator (runs in its own process) -----------------------------------------------------------


class _Driver(asyncio.Protocol):
    """One connection: send a request, wait for its whole reply, send the next, until told to stop."""

    def __init__(self, request: bytes, http: bool, stats: _Stats, pipeline: int) -> None:
        self.request = request
        self.http = http
        self.stats = stats
        self.pipeline = pipeline
        self.buffer = b""
        self.sent: list[float] = []
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        now = time.perf_counter()
        self.sent = [now] * self.pipeline
        transport.write(self.request * self.pipeline)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        done = 0
        while True:
            n = self._complete()
            if n < 0:
                break
            self.buffer = self.buffer[n:]
            done += 1
        if done:
            now = time.perf_counter()
            stats = self.stats
            for _ in range(done):
                started = self.sent.pop(0)
                if stats.start <= started < stats.stop:
                    stats.latencies.append(now - started)
            if now < stats.stop and self.transport is not None:
                self.sent.extend([now] * done)
                self.transport.write(self.request * done)
            elif not self.sent and self.transport is not None:
                self.transport.close()

    def _complete(self) -> int:
        """Bytes of the first whole reply in the buffer, or -1."""
        buffer = self.buffer
        if not self.http:
            end = buffer.find(b"\n")
            if end >= 0 and b'"error"' in buffer[:end]:
                self.stats.errors += 1
            return end + 1 if end >= 0 else -1
        head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return -1
        head = buffer[:head_end].lower()
        at = head.find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None]) if at >= 0 else 0
        total = head_end + 4 + length
        if len(buffer) < total:
            return -1
        if not head.startswith(b"http/1.1 200") or b'"error"' in buffer[head_end:total]:
            self.stats.errors += 1
        return total

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _Stats:
    def __init__(self, start: float, stop: float) -> None:
        self.start = start
        self.stop = stop
        self.latencies: list[float] = []
        self.errors = 0


async def _drive(kind: str, port: int, connections: int, pipeline: int, duration: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    if kind == "http":
        request = (
            b"POST /rpc HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
        )
    else:
        request = BODY + b"\n"
    start = time.perf_counter() + 0.5  # warm-up
    stats = _Stats(start, start + duration)
    drivers = []
    for _ in range(connections):
        _, driver = await loop.create_connection(
            lambda: _Driver(request, kind == "http", stats, pipeline), "127.0.0.1", port
        )
        drivers.append(driver)
    await asyncio.wait_for(asyncio.gather(*(d.closed for d in drivers)), duration + 30)
    latencies = sorted(stats.latencies)
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / duration, 1),
        "p50_ms": round(statistics.median(latencies) * 1000, 3) if latencies else None,
        "p99_ms": round(latencies[int(0.99 * len(latencies))] * 1000, 3) if latencies else None,
        "errors": stats.errors,
    }


def _client_main(argv: list[str]) -> None:
    kind, port, connections, pipeline, duration = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), float(argv[4])
    result = asyncio.run(_drive(kind, port, connections, pipeline, duration))
    sys.stdout.write(json.dumps(result) + "\n")


# -- the driver ------------------------------------------------------------------------------------------------


def _server(flag: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_RPC_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [PY, "-m", "llm_rpc", "serve", flag, "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the server exited before listening")
        if b'"listening"' in line:
            return proc, int(json.loads(line)["port"])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux), or NaN where /proc is not there."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(kind: str, connections: int, pipeline: int, duration: float) -> dict[str, Any]:
    proc, port = _server("--http" if kind == "http" else "--tcp")
    try:
        cpu_before = _cpu_seconds(proc.pid)
        done = subprocess.run(
            [PY, "-m", "bench.http", "--client", kind, str(port), str(connections), str(pipeline), str(duration)],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            timeout=duration + 60,
        )
        cpu = _cpu_seconds(proc.pid) - cpu_before
        result: dict[str, Any] = json.loads(done.stdout)
        # The server's CPU over the whole run (warm-up and drain included) per request it served.
        served = result["rps"] * (duration + 0.5)
        result["server_cpu_us"] = round(cpu / served * 1e6, 1) if served else None
        return result
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(rounds: int, duration: float, connections: int) -> dict[str, Any]:
    targets = [
        (f"http keep-alive, {connections} connections", "http", connections, 1),
        (f"tcp, {connections} connections", "tcp", connections, 1),
        (f"tcp, 1 connection, {connections} pipelined", "tcp", 1, connections),
    ]
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in targets}
    for _ in range(rounds):
        for name, kind, conns, pipeline in targets:
            samples[name].append(_measure(kind, conns, pipeline, duration))
    rows = []
    for name, runs in samples.items():
        rows.append(
            {
                "target": name,
                "rps": round(statistics.median(r["rps"] for r in runs), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
                "errors": sum(r["errors"] for r in runs),
                "server_cpu_us": statistics.median(r["server_cpu_us"] for r in runs),
                "runs": [r["rps"] for r in runs],
            }
        )
    # The machine is shared: a ratio taken within each round (same minute) is steadier than the
    # ratio of medians, so that is the headline.
    http_runs, tcp_runs = samples[targets[0][0]], samples[targets[1][0]]
    ratios = [h["rps"] / t["rps"] for h, t in zip(http_runs, tcp_runs, strict=True) if t["rps"]]
    out = {
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "python": sys.version.split()[0],
        "rounds": rounds,
        "duration_s": duration,
        "rows": rows,
        "http_over_tcp": round(statistics.median(ratios), 3) if ratios else None,
        "http_over_tcp_per_round": [round(r, 3) for r in ratios],
        "server_cpu_ratio": round(rows[1]["server_cpu_us"] / rows[0]["server_cpu_us"], 3),
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "http.json").write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| target | req/s | p50 ms | p99 ms | server CPU µs/request | errors |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['target']} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['server_cpu_us']:.0f} | {r['errors']} |"
        )
    per_round = ", ".join(f"{r:.0%}" for r in results["http_over_tcp_per_round"])
    lines.append(
        f"\nHTTP / TCP req/s, same number of connections: {results['http_over_tcp']:.0%} (median of rounds: "
        f"{per_round}; target: at least 60%); TCP's server CPU per request over HTTP's: "
        f"{results['server_cpu_ratio']:.0%}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        _client_main(sys.argv[2:])
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    main(args.rounds, args.duration, args.connections)
