"""Core benchmark (issue 2): pipelined ``execute`` on the mock over stdio and TCP beside the bare
echo floor, dispatch cost per call, and the README one-shot pipe's cold start.

Every figure is a median over interleaved rounds measured in this one run; the machine is shared
and noisy, so read ratios against the floor measured alongside, not absolute numbers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio

from bench.loadgen import LoadResult, run

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
EXECUTE = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":{"prompt":"Hello"}}'
ECHO = b'{"jsonrpc":"2.0","id":0,"method":"echo","params":{"prompt":"Hello"}}'
README_PIPE = '{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hello"}}\n'


def _servers(transport: str) -> dict[str, list[str]]:
    flag = ["--stdio"] if transport == "stdio" else ["--tcp", "127.0.0.1:0"]
    return {
        "llm-rpc execute (mock)": [PY, "-m", "llm_rpc", "serve", *flag],
        "echo, one task per request": [
            PY,
            str(ROOT / "bench" / "echo_server.py"),
            "--mode",
            "task",
            "--transport",
            transport,
        ],
        "echo, answered inline": [
            PY,
            str(ROOT / "bench" / "echo_server.py"),
            "--mode",
            "inline",
            "--transport",
            transport,
        ],
    }


def pipelined(rounds: int, duration: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    samples: dict[tuple[str, str, int], list[LoadResult]] = {}
    for _ in range(rounds):
        for transport in ("stdio", "tcp"):
            for in_flight in (1, 64):
                for name, argv in _servers(transport).items():
                    body = EXECUTE if name.startswith("llm-rpc") else ECHO
                    samples.setdefault((transport, name, in_flight), []).append(
                        run(transport, argv, body, in_flight, duration)
                    )
    for (transport, name, in_flight), results in samples.items():
        rows.append(
            {
                "transport": transport,
                "server": name,
                "in_flight": in_flight,
                "rps": statistics.median(r.rps for r in results),
                "p50_ms": statistics.median(r.p50_ms for r in results),
                "p99_ms": statistics.median(r.p99_ms for r in results),
                "errors": sum(r.errors for r in results),
            }
        )
    return rows


def dispatch_cost(n: int = 50_000) -> dict[str, float]:
    """µs per call through Session.handle_frame, answered inline (no task): decode, validate, find,
    run, encode. ``health`` is the pure dispatch cost; ``execute`` adds the mock call and result."""
    from llm_rpc._inprocess import _LocalServer
    from llm_rpc.core.router import Router
    from llm_rpc.methods import build_table, error_mapper
    from llm_rpc.protocol import Dispatcher

    out: dict[str, float] = {}

    async def measure() -> None:
        dispatcher = Dispatcher(build_table(Router(), _LocalServer()), error_mapper=error_mapper)
        sink: list[bytes] = []
        async with anyio.create_task_group() as tg:
            session = dispatcher.session(tg, sink.append, peer="bench")
            frames = {
                "health": b'{"jsonrpc":"2.0","id":1,"method":"health"}',
                "execute (mock)": EXECUTE.replace(b'"id":0', b'"id":1'),
                "invalid params (-32602)": b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":5}}',
            }
            for name, frame in frames.items():
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(n // 5):
                        session.handle_frame(frame)
                    best = min(best, (time.perf_counter() - start) / (n // 5) * 1e6)
                    sink.clear()
                out[name] = round(best, 2)

    anyio.run(measure)
    return out


def cold_start(runs: int = 15) -> dict[str, float]:
    """Median wall time of the README's one-shot pipe (process start to exit), and of ``python3 -c pass``."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    llm_rpc = [ROOT / ".venv" / "bin" / "llm-rpc"]
    argv = [str(llm_rpc[0]), "serve", "--stdio"] if llm_rpc[0].exists() else [PY, "-m", "llm_rpc", "serve", "--stdio"]

    def timed(cmd: list[str], stdin: str) -> float:
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin.encode(), capture_output=True, env=env, check=True)
        return (time.perf_counter() - start) * 1000

    pipe: list[float] = []
    bare: list[float] = []
    imports: list[float] = []
    for _ in range(runs):
        pipe.append(timed(argv, README_PIPE))
        bare.append(timed([PY, "-c", "pass"], ""))
        imports.append(timed([PY, "-c", "import anyio, msgspec, asyncio"], ""))
    return {
        "one_shot_pipe_ms": round(statistics.median(pipe), 1),
        "python_c_pass_ms": round(statistics.median(bare), 1),
        "bare_imports_ms": round(statistics.median(imports), 1),
    }


def main(rounds: int = 2, duration: float = 2.0) -> dict[str, Any]:
    results = {
        "pipelined": pipelined(rounds, duration),
        "dispatch_us": dispatch_cost(),
        "cold_start": cold_start(),
    }
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "core.json").write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    return results


def markdown(results: dict[str, Any]) -> str:
    lines = ["| transport | server | in flight | req/s | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
    for r in results["pipelined"]:
        cells = [
            r["transport"],
            r["server"],
            r["in_flight"],
            f"{r['rps']:,.0f}",
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    floor = {
        (r["transport"], r["in_flight"]): r["rps"]
        for r in results["pipelined"]
        if r["server"].startswith("echo, one task")
    }
    lines.append("")
    for r in results["pipelined"]:
        if r["server"].startswith("llm-rpc"):
            ratio = r["rps"] / floor[(r["transport"], r["in_flight"])]
            lines.append(
                f"- {r['transport']}, {r['in_flight']} in flight: llm-rpc = {ratio:.2f}x the one-task-per-request echo"
            )
    lines.append("")
    lines.append("| dispatch, answered inline | µs per call |")
    lines.append("|---|---|")
    for name, us in results["dispatch_us"].items():
        lines.append(f"| {name} | {us} |")
    cold = results["cold_start"]
    lines.append("")
    lines.append(
        f"Cold start, README one-shot pipe: {cold['one_shot_pipe_ms']} ms median "
        f"(python3 -c pass: {cold['python_c_pass_ms']} ms; import anyio+msgspec+asyncio: {cold['bare_imports_ms']} ms)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
