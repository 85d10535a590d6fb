"""What llm-rpc adds over the direct client (issue 3's benchmark).

Against ``bench/upstream.py`` (a fast local OpenAI-compatible upstream, in its own process):

* **direct**: the same chat request POSTed with the HTTP client llm-rpc uses
  (``llm_rpc.providers._client.new_client``), N calls in flight, from a separate process;
* **llm-rpc**: ``execute`` pipelined over one TCP connection (and over stdio) to an
  ``llm-rpc serve`` process whose one backend is that upstream (``openai-compatible``).

At 1 in flight the difference of the p50 latencies is what llm-rpc adds per call (target: at most
0.15 ms); at 64 and 256 in flight against a 200 ms upstream, throughput against the ideal
(in-flight / latency; target: 85% at 64). Medians over interleaved rounds, same run.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.http_clients import upstream
from bench.loadgen import run

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
EXECUTE = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":{"prompt":"Hello","model":"bench-model"}}'

DIRECT = r"""
import asyncio, json, statistics, sys, time
from llm_rpc.providers._client import new_client
port, in_flight, duration = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
body = json.dumps({"model": "bench-model", "messages": [{"role": "user", "content": "Hello"}]}).encode()
async def main():
    client = new_client(base_url=f"http://127.0.0.1:{port}/v1", headers={"content-type": "application/json"})
    lat = []
    start = time.perf_counter(); warm = start + 0.3; stop = warm + duration
    async def loop():
        while True:
            t = time.perf_counter()
            if t >= stop: return
            r = await client.post("/chat/completions", content=body)
            r.json()
            done = time.perf_counter()
            if t >= warm: lat.append(done - t)
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    await client.aclose()
    lat.sort()
    print(json.dumps({"rps": len(lat) / duration, "p50_ms": statistics.median(lat) * 1000,
                      "p99_ms": lat[int(0.99 * len(lat))] * 1000}))
asyncio.run(main())
"""


INPROCESS = r"""
import asyncio, json, os, statistics, sys, time
from llm_rpc import Router
config, in_flight, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
async def main():
    router = Router.from_config(config)
    lat = []; overhead = []
    start = time.perf_counter(); warm = start + 0.3; stop = warm + duration
    async def loop():
        while True:
            t = time.perf_counter()
            if t >= stop: return
            result = await router.execute(prompt="Hello", model="bench-model")
            done = time.perf_counter()
            if t >= warm:
                lat.append(done - t)
                if result.overhead_us is not None: overhead.append(result.overhead_us)
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    await router.aclose()
    lat.sort()
    print(json.dumps({"rps": len(lat) / duration, "p50_ms": statistics.median(lat) * 1000,
                      "p99_ms": lat[int(0.99 * len(lat))] * 1000,
                      "overhead_us_p50": statistics.median(overhead) if overhead else None}))
asyncio.run(main())
"""


def _inprocess(config: Path, in_flight: int, duration: float) -> dict[str, Any]:
    import os

    env = {**os.environ, "LLM_RPC_BENCH_KEY": "bench-not-a-real-key-0000"}
    done = subprocess.run(
        [PY, "-c", INPROCESS, str(config), str(in_flight), str(duration)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _direct(port: int, in_flight: int, duration: float) -> dict[str, Any]:
    done = subprocess.run(
        [PY, "-c", DIRECT, str(port), str(in_flight), str(duration)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _config(port: int, directory: Path) -> Path:
    path = directory / "bench.toml"
    path.write_text(
        f"""
[router]
retries = 0

[[backends]]
name = "upstream"
provider = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "LLM_RPC_BENCH_KEY"
models = ["bench-model"]
"""
    )
    return path


def _gateway(transport: str, config: Path, in_flight: int, duration: float) -> dict[str, Any]:
    flag = ["--stdio"] if transport == "stdio" else ["--tcp", "127.0.0.1:0"]
    argv = [PY, "-m", "llm_rpc", "serve", *flag, "--config", str(config)]
    import os

    os.environ["LLM_RPC_BENCH_KEY"] = "bench-not-a-real-key-0000"
    result = run(transport, argv, EXECUTE, in_flight, duration)
    return result.as_dict()


def main(rounds: int = 2, duration: float = 2.0) -> dict[str, Any]:
    rows: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    cells = [(0.0, 1), (0.0, 64), (200.0, 64), (200.0, 256)]
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(rounds):
            for latency, in_flight in cells:
                with upstream(latency) as (port, _pid):
                    config = _config(port, Path(tmp))
                    rows.setdefault(("direct httpx2", latency, in_flight), []).append(
                        _direct(port, in_flight, duration)
                    )
                    rows.setdefault(("llm-rpc in-process Router", latency, in_flight), []).append(
                        _inprocess(config, in_flight, duration)
                    )
                    for transport in ("tcp", "stdio"):
                        rows.setdefault((f"llm-rpc {transport}", latency, in_flight), []).append(
                            _gateway(transport, config, in_flight, duration)
                        )
    table = []
    for (who, latency, in_flight), samples in rows.items():
        table.append(
            {
                "client": who,
                "latency_ms": latency,
                "in_flight": in_flight,
                "rps": round(statistics.median(s["rps"] for s in samples), 1),
                "p50_ms": round(statistics.median(s["p50_ms"] for s in samples), 3),
                "p99_ms": round(statistics.median(s["p99_ms"] for s in samples), 3),
            }
        )
    out = {"rows": table, "measured_at": time.strftime("%Y-%m-%d %H:%M")}
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "gateway.json").write_text(json.dumps(out, indent=2) + "\n")
    print(markdown(out))
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "| client | upstream latency | in flight | req/s | ideal | p50 ms | p99 ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        ideal = f"{r['rps'] / (r['in_flight'] / (r['latency_ms'] / 1000)):.0%}" if r["latency_ms"] else "-"
        lines.append(
            f"| {r['client']} | {r['latency_ms']:g} ms | {r['in_flight']} | {r['rps']:,.0f} | {ideal} "
            f"| {r['p50_ms']:.3f} | {r['p99_ms']:.3f} |"
        )
    by = {(r["client"], r["latency_ms"], r["in_flight"]): r for r in results["rows"]}
    direct = by.get(("direct httpx2", 0.0, 1))
    if direct:
        for who in ("llm-rpc in-process Router", "llm-rpc tcp", "llm-rpc stdio"):
            ours = by.get((who, 0.0, 1))
            if ours:
                added = (ours["p50_ms"] - direct["p50_ms"]) * 1000
                lines.append(f"\n{who} adds {added:.0f} µs per call at p50, 1 in flight")
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.get_event_loop_policy()
    main()
