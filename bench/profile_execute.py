"""CPU per ``execute`` and throughput of an ``llm-rpc serve --tcp`` process under load, optionally profiled.

Two targets, each driven by ``bench/loadgen.py`` (its own process) with N calls pipelined on one TCP
connection:

* **upstream**: one ``openai-compatible`` backend pointing at ``bench/upstream.py`` (no latency);
* **mock**: the built-in mock (no config), answered inline.

For each it reports the throughput, the latency percentiles, the server's CPU time per call
(``/proc/<pid>/stat`` over the whole run, warm-up included, divided by the calls it answered) and
the median ``overhead_us`` of the results. ``--profile pyinstrument`` runs the server under
pyinstrument and prints where its time went; ``--profile py-spy`` records it with py-spy (both are
installed into ``bench/.venv``, never into the package's environment)::

    .venv/bin/python -m bench.profile_execute                      # both targets, 3 rounds, medians
    .venv/bin/python -m bench.profile_execute --target upstream --profile pyinstrument --duration 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from bench.http_clients import upstream
from bench.loadgen import drive

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
BENCH_VENV = ROOT / "bench" / ".venv"
EXECUTE = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":{"prompt":"Hello","model":"bench-model"}}'
KEY = "bench-not-a-real-key-0000"

#: Runs the server under pyinstrument (imported from bench/.venv) and prints its report at SIGTERM.
PYINSTRUMENT = r"""
import glob, os, signal, sys
sys.path.extend(glob.glob(os.path.join(sys.argv[1], "lib", "python3*", "site-packages")))
from pyinstrument import Profiler
profiler = Profiler(interval=0.0002, async_mode="disabled")
def stop(*_):
    profiler.stop()
    with open(sys.argv[2], "w") as out:
        out.write(profiler.output_text(unicode=True, color=False, show_all=False))
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
profiler.start()
from llm_rpc.cli import main
main(sys.argv[3:])
"""

_reply = msgspec.json.Decoder(dict[str, Any])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _config(port: int, directory: Path) -> Path:
    path = directory / "profile.toml"
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


async def _overhead_sample(port: int, n: int = 200) -> float | None:
    """The median ``overhead_us`` of ``n`` calls made one at a time after the load."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    values = []
    try:
        for i in range(n):
            writer.write(EXECUTE.replace(b'"id":0', b'"id":%d' % (i + 1)) + b"\n")
            await writer.drain()
            reply = _reply.decode(await reader.readline())
            value = reply.get("result", {}).get("overhead_us")
            if value is not None:
                values.append(value)
    finally:
        writer.close()
    return statistics.median(values) if values else None


async def _load(port: int, in_flight: int, duration: float) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    try:
        result = await drive(reader, writer, EXECUTE, in_flight=in_flight, duration=duration)
    finally:
        writer.close()
    return result.as_dict()


def measure(
    target: str, in_flight: int, duration: float, profile: str | None = None, server_root: Path = ROOT
) -> dict[str, Any]:
    """One cell: start the server (and the upstream), load it, read its CPU; returns the figures."""
    with tempfile.TemporaryDirectory() as tmp, _maybe_upstream(target) as up_port:
        serve = ["serve", "--tcp", "127.0.0.1:0"]
        if up_port is not None:
            serve += ["--config", str(_config(up_port, Path(tmp)))]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_RPC_")}
        env["LLM_RPC_BENCH_KEY"] = KEY
        env["PYTHONPATH"] = str(server_root)  # another checkout's server (--compare), else this one
        report = Path(tmp) / "profile.txt"
        if profile == "pyinstrument":
            argv = [PY, "-c", PYINSTRUMENT, str(BENCH_VENV), str(report), *serve]
        elif profile == "py-spy":
            spy = str(BENCH_VENV / "bin" / "py-spy")
            argv = [spy, "record", "-r", "500", "-f", "raw", "-o", str(report), "--", PY, "-m", "llm_rpc", *serve]
        else:
            argv = [PY, "-m", "llm_rpc", *serve]
        proc = subprocess.Popen(argv, cwd=server_root, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert proc.stderr is not None
            while True:
                line = proc.stderr.readline()
                if not line:
                    raise RuntimeError("the server exited before listening")
                if b'"listening"' in line:
                    port = int(json.loads(line)["port"])
                    break
            server_pid = _server_pid(proc.pid) if profile == "py-spy" else proc.pid
            cpu0 = _cpu_seconds(server_pid)
            t0 = time.perf_counter()
            result = asyncio.run(_load(port, in_flight, duration))
            wall = time.perf_counter() - t0
            cpu = _cpu_seconds(server_pid) - cpu0
            served = result["requests"] * (wall / duration)  # the warm-up's calls too, at the same rate
            result["server_cpu_us"] = round(cpu / served * 1e6, 1) if served else None
            result["overhead_us_p50"] = asyncio.run(_overhead_sample(port))
        finally:
            if profile == "py-spy":
                os.kill(_server_pid(proc.pid), signal.SIGINT)
                proc.wait(60)
            else:
                proc.terminate()
                proc.wait(60)
        if profile is not None and report.exists():
            result["profile"] = _summarise(report.read_text(), profile)
        return result


def _revision(root: Path) -> str:
    """The checkout's commit, and whether its tree differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "llm_rpc"], cwd=root, capture_output=True, text=True, check=False
    )
    return head.stdout.strip() + (" + uncommitted changes under llm_rpc/" if dirty.stdout.strip() else "")


def _server_pid(spy_pid: int) -> int:
    """py-spy's child: the server process."""
    children = Path(f"/proc/{spy_pid}/task/{spy_pid}/children")
    for _ in range(100):
        text = children.read_text().split() if children.exists() else []
        if text:
            return int(text[0])
        time.sleep(0.05)
    raise RuntimeError("py-spy started no server")


def _summarise(text: str, profile: str) -> str:
    if profile == "pyinstrument":
        return text
    # py-spy raw: "frame;frame;... count" per line. Only the event loop's thread while it serves (not
    # start-up imports, not worker threads): self time by package and by function, then inclusive.
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if "BaseEventLoop._run_once" not in stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        package = _package(frames[-1])
        packages[package] = packages.get(package, 0) + count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
    if not total:
        return "no samples"
    lines = [f"{total} samples of the event loop; self time by package:"]
    for package, count in sorted(packages.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {count / total:6.1%}  {package}")
    lines.append("self time by function:")
    for frame, count in sorted(own.items(), key=lambda kv: -kv[1])[:40]:
        lines.append(f"  {count / total:6.1%}  {frame}")
    lines.append("inclusive time (llm_rpc):")
    for frame, count in sorted(inclusive.items(), key=lambda kv: -kv[1]):
        if "llm_rpc/" in frame and count / total >= 0.003:
            lines.append(f"  {count / total:6.1%}  {frame}")
    return "\n".join(lines)


def _package(frame: str) -> str:
    """``llm_rpc/core``, ``anyio``, ``asyncio``... from a py-spy frame ``func (path/file.py:line)``."""
    match = re.search(r"\(([^:)]*)", frame)
    path = match.group(1) if match else frame
    parts = path.split("/")
    if parts[0] == "llm_rpc":
        return "/".join(parts[:2]) if len(parts) > 2 else path.rpartition(":")[0]
    return parts[0] if len(parts) > 1 else path


class _maybe_upstream:
    def __init__(self, target: str) -> None:
        self._cm = upstream(0.0) if target == "upstream" else None

    def __enter__(self) -> int | None:
        if self._cm is None:
            return None
        port, _pid = self._cm.__enter__()
        return port

    def __exit__(self, *exc: Any) -> None:
        if self._cm is not None:
            self._cm.__exit__(*exc)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="CPU per execute call of the server, and its profile")
    parser.add_argument("--target", choices=("upstream", "mock", "both"), default="both")
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=("pyinstrument", "py-spy"), default=None)
    parser.add_argument("--output", type=Path, default=None, help="write the JSON here")
    parser.add_argument(
        "--compare",
        type=Path,
        default=None,
        metavar="CHECKOUT",
        help="also measure the server of another checkout (e.g. a git worktree of an older commit), interleaved",
    )
    args = parser.parse_args(argv)
    targets = ["upstream", "mock"] if args.target == "both" else [args.target]
    roots = {"": ROOT} if args.compare is None else {"before: ": args.compare.resolve(), "after: ": ROOT}
    samples: dict[str, list[dict[str, Any]]] = {label + t: [] for label in roots for t in targets}
    for _ in range(1 if args.profile else args.rounds):
        for target in targets:
            for label, root in roots.items():
                sample = measure(target, args.in_flight, args.duration, args.profile, root)
                if "profile" in sample:
                    print(f"--- {label}{target} ---\n{sample.pop('profile')}")
                samples[label + target].append(sample)
    rows = []
    for target, runs in samples.items():
        overheads = [r["overhead_us_p50"] for r in runs if r["overhead_us_p50"] is not None]
        rows.append(
            {
                "target": target,
                "in_flight": args.in_flight,
                "rps": round(statistics.median(r["rps"] for r in runs), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in runs), 3),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 3),
                "server_cpu_us": round(statistics.median(r["server_cpu_us"] for r in runs), 1),
                "overhead_us_p50": round(statistics.median(overheads), 1) if overheads else None,
                "errors": sum(r["errors"] for r in runs),
                "rounds": len(runs),
            }
        )
    out = {
        "rows": rows,
        "measured_at": time.strftime("%Y-%m-%d %H:%M"),
        "servers": {label or "server": _revision(root) for label, root in roots.items()},
    }
    print("| target | in flight | req/s | p50 ms | p99 ms | server CPU µs/call | overhead_us p50 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['target']} | {r['in_flight']} | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} "
            f"| {r['server_cpu_us']:.1f} | {r['overhead_us_p50']} |"
        )
    if args.output is not None:
        args.output.write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
