"""What llm-rpc adds over the direct client (issue 3's benchmark).

Against ``bench/upstream.py`` (a fast local OpenAI-compatible upstream, in its own process):

* **direct**: the same chat request POSTed with the HTTP client llm-rpc uses
  (``llm_rpc.providers._client.new_client``), N calls in flight, from a separate process;
* **llm-rpc**: ``execute`` pipelined over one TCP connection (and over stdio) to an
  ``llm-rpc serve`` process whose one backend is that upstream (``openai-compatible``).

At 1 in flight the difference of the p50 latencies is what llm-rpc adds per call (target: at most
0.15 ms); at 64 and 256 in flight against a 200 ms upstream, throughput against the ideal
(in-flight / latency; target: 85% at 64). Medians over interleaved rounds, same run.

Each row runs in one or more *flavours* (``--flavours``): the anyio backend and, on asyncio, the
loop (``serve --loop``), for the server and for the client processes alike; ``--baseline DIR``
adds the same rows run from another checkout of llm-rpc (for instance ``git worktree add DIR
HEAD~1``), interleaved with this one's, so that old and new are compared in the same run::

    .venv/bin/python -m bench.gateway --flavours asyncio,trio --baseline /tmp/llm-rpc-before
"""

from __future__ import annotations

import argparse
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
    url = client.build_request("POST", "/chat/completions").url
    # As HttpBackend sends (post_bytes where the checkout has it: a baseline may not).
    fast = getattr(client, "post_bytes", None)
    lat = []
    start = time.perf_counter(); warm = start + 0.3; stop = warm + duration
    async def loop():
        while True:
            t = time.perf_counter()
            if t >= stop: return
            r = await (fast(url, body, {}) if fast else client.post(url, content=body))
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


#: flavour -> (anyio backend, ``serve --loop``; None: serve's default).
FLAVOURS: dict[str, tuple[str, str | None]] = {
    "asyncio": ("asyncio", None),
    "asyncio-std": ("asyncio", "asyncio"),
    "uvloop": ("asyncio", "uvloop"),
    "trio": ("trio", None),
}


class Flavour:
    """How one row's processes run: which checkout of llm-rpc, which backend, which loop."""

    def __init__(self, name: str, source: Path) -> None:
        self.name = name
        self.backend, self.loop = FLAVOURS[name]
        self.source = source
        self.label = name if source == ROOT else f"{name}, baseline"

    def prelude(self) -> str:
        """Run before DIRECT and INPROCESS: llm_rpc from ``source``, and the scripts' asyncio.run
        (and, under trio, asyncio.gather) replaced by anyio's on the flavour's backend and loop."""
        code = f"import sys; sys.path.insert(0, {str(self.source)!r})\n"
        if self.backend == "asyncio" and self.loop != "uvloop":
            return code
        options = {"use_uvloop": True} if self.loop == "uvloop" else {}
        code += "import asyncio, anyio\n"
        run = f"anyio.run(lambda: coro, backend={self.backend!r}, backend_options={options!r})"
        code += f"asyncio.run = lambda coro: {run}\n"
        if self.backend == "trio":
            code += (
                "async def _gather(*coros):\n"
                "    async with anyio.create_task_group() as tg:\n"
                "        for c in coros:\n"
                "            tg.start_soon(lambda c=c: c)\n"
                "asyncio.gather = _gather\n"
            )
        return code

    def serve_argv(self) -> list[str]:
        """``llm-rpc serve`` from ``source``, on the flavour's backend and loop."""
        if self.source == ROOT:
            argv = [PY, "-m", "llm_rpc", "serve"]
        else:
            code = f"import sys, runpy; sys.path.insert(0, {str(self.source)!r}); "
            code += "runpy.run_module('llm_rpc', run_name='__main__')"
            argv = [PY, "-c", code, "serve"]
        argv += ["--backend", self.backend]
        if self.loop is not None and self.source == ROOT:
            argv += ["--loop", self.loop]
        return argv


def _inprocess(config: Path, in_flight: int, duration: float, flavour: Flavour) -> dict[str, Any]:
    import os

    env = {**os.environ, "LLM_RPC_BENCH_KEY": "bench-not-a-real-key-0000"}
    done = subprocess.run(
        [PY, "-c", flavour.prelude() + INPROCESS, str(config), str(in_flight), str(duration)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
        env=env,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _direct(port: int, in_flight: int, duration: float, flavour: Flavour) -> dict[str, Any]:
    done = subprocess.run(
        [PY, "-c", flavour.prelude() + DIRECT, str(port), str(in_flight), str(duration)],
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


def _gateway(transport: str, config: Path, in_flight: int, duration: float, flavour: Flavour) -> dict[str, Any]:
    flag = ["--stdio"] if transport == "stdio" else ["--tcp", "127.0.0.1:0"]
    argv = [*flavour.serve_argv(), *flag, "--config", str(config)]
    import os

    os.environ["LLM_RPC_BENCH_KEY"] = "bench-not-a-real-key-0000"
    result = run(transport, argv, EXECUTE, in_flight, duration)
    return result.as_dict()


CELLS = ((0.0, 1), (0.0, 64), (200.0, 64), (200.0, 256))
KINDS = ("direct", "inprocess", "tcp", "stdio")
#: kind -> the row's name (the flavour is added in brackets).
NAMES = {
    "direct": "direct new_client()",
    "inprocess": "llm-rpc in-process Router",
    "tcp": "llm-rpc tcp",
    "stdio": "llm-rpc stdio",
}


def main(
    rounds: int = 2,
    duration: float = 2.0,
    flavours: tuple[str, ...] = ("asyncio",),
    baseline: Path | None = None,
    cells: tuple[tuple[float, int], ...] = CELLS,
    kinds: tuple[str, ...] = KINDS,
    output: Path | None = None,
) -> dict[str, Any]:
    rows: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
    runs = [Flavour(name, source) for name in flavours for source in (ROOT, baseline) if source is not None]
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            order = runs if round_index % 2 == 0 else runs[::-1]
            for latency, in_flight in cells:
                with upstream(latency) as (port, _pid):
                    config = _config(port, Path(tmp))
                    for flavour in order:
                        for kind in kinds:
                            if kind == "direct":
                                sample = _direct(port, in_flight, duration, flavour)
                            elif kind == "inprocess":
                                sample = _inprocess(config, in_flight, duration, flavour)
                            else:
                                sample = _gateway(kind, config, in_flight, duration, flavour)
                            who = f"{NAMES[kind]} [{flavour.label}]"
                            rows.setdefault((who, latency, in_flight), []).append(sample)
                            print(
                                f"  round {round_index + 1}: {who:48} {latency:3.0f} ms {in_flight:4} in flight: "
                                f"{sample['rps']:8.1f} req/s",
                                file=sys.stderr,
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
    out = {
        "rows": table,
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "rounds": rounds,
        "flavours": list(flavours),
        "baseline": str(baseline) if baseline else None,
    }
    output = output or ROOT / "bench" / "results" / "gateway.json"
    output.parent.mkdir(exist_ok=True)
    output.write_text(json.dumps(out, indent=2) + "\n")
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
    for client in dict.fromkeys(r["client"] for r in results["rows"]):
        if not client.startswith(NAMES["direct"]):
            continue
        flavour = client[len(NAMES["direct"]) :]
        direct = by.get((client, 0.0, 1))
        for kind in ("inprocess", "tcp", "stdio"):
            ours = by.get((NAMES[kind] + flavour, 0.0, 1))
            if direct and ours:
                added = (ours["p50_ms"] - direct["p50_ms"]) * 1000
                lines.append(f"\n{NAMES[kind]}{flavour} adds {added:.0f} µs per call at p50, 1 in flight")
    return "\n".join(lines)


def _cli() -> None:
    parser = argparse.ArgumentParser(description="llm-rpc against the direct client (issue 3, issue 9)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds measured per cell")
    parser.add_argument("--flavours", default="asyncio", help="comma-separated, of: " + ",".join(FLAVOURS))
    parser.add_argument("--baseline", type=Path, default=None, help="another llm-rpc checkout, run beside this one")
    parser.add_argument(
        "--cells", default=",".join(f"{lat:g}:{n}" for lat, n in CELLS), help="LATENCY_MS:IN_FLIGHT,..."
    )
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated, of: " + ",".join(KINDS))
    parser.add_argument("--output", type=Path, default=None, help="default: bench/results/gateway.json")
    args = parser.parse_args()
    flavours = tuple(f for f in args.flavours.split(",") if f)
    kinds = tuple(k for k in args.kinds.split(",") if k)
    if unknown := sorted(set(flavours) - set(FLAVOURS)) + sorted(set(kinds) - set(KINDS)):
        raise SystemExit(f"unknown: {unknown}")
    cells = tuple((float(c.split(":")[0]), int(c.split(":")[1])) for c in args.cells.split(",") if c)
    main(args.rounds, args.duration, flavours, args.baseline, cells, kinds, args.output)


if __name__ == "__main__":
    asyncio.get_event_loop_policy()
    _cli()
