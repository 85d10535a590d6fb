"""The benchmark harness (issue 9): ``bench/run`` (or ``python -m bench``) measures llm-rpc beside
the direct HTTP clients, LiteLLM's Router and a bare JSON-RPC echo server, in one run, interleaved,
with medians over rounds, and writes ``bench/results/summary.json``, ``summary.md`` and
``performance.png``.

It reuses the section scripts beside it (``upstream.py``, ``http_clients.py``'s client worker,
``loadgen.py``, ``echo_server.py``, ``core.py``, ``gateway.py``, ``http.py``, ``concurrency.py``,
``budgets.py``, ``policy.py``). Everything runs in ``bench/.venv``, which this script creates or
updates from ``bench/requirements.txt`` plus LiteLLM and matplotlib (never dependencies of the
package), with llm-rpc installed into it editable. Nothing is sent anywhere but loopback: the
upstream is ``bench/upstream.py``, provider keys and proxy variables are removed from the
environment, and LiteLLM runs with its local cost map, offline mode and no telemetry.

    bench/run                     # the whole run, 6.5-8.5 minutes on 2 shared cores
    bench/run --quick             # one short round (a smoke test)
    bench/run --only gateway      # one section: gateway, mock, cold, concurrency, budgets, policy

A whole run writes ``bench/results/``; ``--quick`` and ``--only`` write to a temporary
directory unless ``--output DIR`` is given, so they never replace the committed figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv"
VENV_PY = VENV / "bin" / "python"
REQUIREMENTS = BENCH / "requirements.txt"
#: Installed into bench/.venv beside bench/requirements.txt: what llm-rpc is compared against, and the chart.
EXTRA = ("litellm==1.110.2", "matplotlib==3.11.2")
RESULTS = BENCH / "results"
SECTIONS = ("gateway", "mock", "cold", "concurrency", "budgets", "policy", "overhead")
KEY_ENV = "LLM_RPC_BENCH_KEY"
README_PIPE = '{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hello"}}\n'
EXECUTE_UPSTREAM = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":{"prompt":"Hello","model":"bench-model"}}'
EXECUTE_MOCK = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":{"prompt":"Hello"}}'
ECHO = b'{"jsonrpc":"2.0","id":0,"method":"echo","params":{"prompt":"Hello"}}'

#: (upstream latency ms, calls in flight): the gateway section's cells.
CELLS = ((0.0, 1), (0.0, 64), (200.0, 64), (200.0, 256))
ZERO = (0.0, 1), (0.0, 64)
SLOW = (200.0, 64), (200.0, 256)

#: system id -> (label, kind, cells). kind: an ``http_clients.py`` client id, or how llm-rpc is reached.
SYSTEMS: dict[str, tuple[str, str, tuple[tuple[float, int], ...]]] = {
    # llm-rpc's systems run right after the floor (and, in odd rounds, right before it): the pairs
    # the targets compare are measured minutes apart at most, on a machine shared with other work.
    "floor": ("direct, llm-rpc's own client (new_client): the floor", "client:llmrpc-direct", CELLS),
    "inprocess": ("llm-rpc in-process Router", "inprocess", ZERO[:1]),
    "stdio": ("llm-rpc execute over stdio", "stdio", CELLS),
    "tcp": ("llm-rpc execute over TCP", "tcp", CELLS),
    "http": ("llm-rpc execute over HTTP (POST /rpc)", "http", CELLS),
    "tcp-trio": ("llm-rpc execute over TCP, trio", "tcp-trio", SLOW),
    # The hop alone: what a JSON-RPC round trip over each transport costs with nothing behind it.
    "echo-stdio": ("bare echo server over stdio (one task per request)", "echo-stdio", ZERO[:1]),
    "echo-tcp": ("bare echo server over TCP (one task per request)", "echo-tcp", ZERO[:1]),
    "echo-http": ("bare echo server over HTTP (one task per request)", "echo-http", ZERO[:1]),
    "litellm": ("LiteLLM Router acompletion", "client:litellm-router", CELLS),
    "httpx": ("direct httpx 0.28 (default Limits)", "client:httpx-default", CELLS),
    "httpx2": ("direct httpx2 2.16 (default Limits)", "client:httpx2-default", CELLS[1:]),
    "aiohttp": ("direct aiohttp", "client:aiohttp", CELLS[1:]),
    "httpx-aiohttp": ("direct httpx 0.28 over httpx-aiohttp", "client:httpx-aiohttp", SLOW),
}
LLM_RPC = ("inprocess", "stdio", "tcp", "http", "tcp-trio")
DIRECT = ("floor", "httpx", "httpx2", "aiohttp", "httpx-aiohttp")
TRANSPORTS = ("stdio", "tcp", "http")


# -- environment ------------------------------------------------------------------------------------------


def hermetic_env() -> None:
    """Keep every process of the run on loopback: no provider keys (they would add real backends), no
    config file, no proxies; LiteLLM offline (local cost map, no telemetry)."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy") or name.startswith("LLM_RPC_") or name.endswith("_API_KEY"):
            del os.environ[name]
    os.environ.update(
        {
            "NO_PROXY": "127.0.0.1,localhost,::1",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_OFFLINE_MODE": "true",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR",
            "HF_HUB_OFFLINE": "1",
            KEY_ENV: "bench-not-a-real-key-0000",
        }
    )
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # byte-code caching is part of cold start


def _stamp() -> str:
    """What bench/.venv was installed from: the pins, and the package's dependencies (llm-rpc itself is
    editable, so a change to its code needs no reinstall)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        "requirements": REQUIREMENTS.read_text(),
        "extra": EXTRA,
        "dependencies": project.get("dependencies", []),
        "optional": {k: v for k, v in project.get("optional-dependencies", {}).items() if k in ("trio", "redis")},
    }
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def ensure_venv() -> None:
    """Create or update bench/.venv: bench/requirements.txt, LiteLLM, matplotlib, and llm-rpc editable."""
    stamp = VENV / ".bench-run.sha256"
    want = _stamp()
    if VENV_PY.exists() and stamp.exists() and stamp.read_text().strip() == want:
        return
    if not VENV_PY.exists():
        base = getattr(sys, "_base_executable", sys.executable)
        print(f"bench: creating {VENV.relative_to(ROOT)}", file=sys.stderr)
        subprocess.run([base, "-m", "venv", str(VENV)], check=True)
    print(
        f"bench: installing {REQUIREMENTS.relative_to(ROOT)}, {', '.join(EXTRA)}, llm-rpc (editable)", file=sys.stderr
    )
    pip = [str(VENV_PY), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    done = subprocess.run(
        [*pip, "-r", str(REQUIREMENTS), *EXTRA, "-e", f"{ROOT}[trio,redis]"],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit("bench: pip install failed")
    stamp.write_text(want + "\n")


# -- small helpers ----------------------------------------------------------------------------------------


def median(values: list[Any]) -> float | None:
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return statistics.median(clean) if clean else None


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _drain(stream: Any) -> None:
    """Read a child's pipe to its end on a thread, so that its logging never blocks it."""
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@contextlib.contextmanager
def echo_http(mode: str) -> Iterator[int]:
    """bench/echo_server.py over HTTP; yields its port."""
    argv = [sys.executable, str(BENCH / "echo_server.py"), "--transport", "http", "--mode", mode]
    with _listening(argv) as (_proc, port):
        yield port


@contextlib.contextmanager
def serve(*flags: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``llm-rpc serve`` (this venv) listening on TCP or HTTP; yields ``(process, port)``."""
    with _listening([sys.executable, "-m", "llm_rpc", "serve", *flags]) as (proc, port):
        yield proc, port


@contextlib.contextmanager
def _listening(argv: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A server that prints ``{"event":"listening","port":N}`` on stderr; yields ``(process, port)``."""
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stderr is not None
        while True:
            line = proc.stderr.readline()
            if not line:
                raise RuntimeError(f"{' '.join(argv[1:])} exited before listening")
            if b'"listening"' in line:
                port = int(json.loads(line)["port"])
                break
        _drain(proc.stderr)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def config_file(port: int, directory: Path) -> Path:
    path = directory / f"bench-{port}.toml"
    path.write_text(
        f"""
[router]
retries = 0

[[backends]]
name = "upstream"
provider = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "{KEY_ENV}"
models = ["bench-model"]

[[models]]
name = "bench-model"
input = 0.15
output = 0.6
"""
    )
    return path


def http_client(port: int, connections: int, duration: float) -> dict[str, Any]:
    """bench/http.py's raw keep-alive load generator: ``connections`` connections, one request at a time each."""
    done = subprocess.run(
        [sys.executable, "-m", "bench.http", "--client", "http", str(port), str(connections), "1", str(duration)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=duration + 90,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# -- sections ---------------------------------------------------------------------------------------------


class Run:
    """One run: options, and where each section's results go."""

    def __init__(self, rounds: int, quick: bool, have_litellm: bool) -> None:
        self.rounds = rounds
        self.quick = quick
        self.have_litellm = have_litellm
        self.results: dict[str, Any] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="llm-rpc-bench-"))

    def duration(self, latency_ms: float) -> float:
        if self.quick:
            return 0.5 if latency_ms == 0 else 1.0
        return 2.0 if latency_ms == 0 else 2.6

    # gateway ------------------------------------------------------------------------------------------

    def measure_system(
        self, system: str, latency: float, in_flight: int, port: int, pid: int, config: Path
    ) -> dict[str, Any]:
        from bench import gateway, http_clients, loadgen

        kind = SYSTEMS[system][1]
        duration = self.duration(latency)
        if kind.startswith("client:"):
            cell = http_clients.run_cell(
                kind.removeprefix("client:"), "asyncio", port, pid, in_flight, latency, duration
            )
            cell.pop("versions", None)
            return cell
        if kind == "inprocess":
            done = subprocess.run(
                [sys.executable, "-c", gateway.INPROCESS, str(config), str(in_flight), str(duration)],
                capture_output=True,
                text=True,
                check=False,
                cwd=ROOT,
                timeout=120,
            )
            if done.returncode != 0:
                raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-400:]}")
            out: dict[str, Any] = json.loads(done.stdout)
            return out
        if kind == "http":
            with serve("--http", "127.0.0.1:0", "--config", str(config)) as (_proc, http_port):
                return http_client(http_port, in_flight, duration)
        if kind == "echo-http":
            with echo_http("task") as http_port:
                return http_client(http_port, in_flight, duration)
        transport = "stdio" if kind.endswith("stdio") else "tcp"
        if kind.startswith("echo-"):
            echo = [sys.executable, str(BENCH / "echo_server.py"), "--mode", "task", "--transport", transport]
            return loadgen.run(transport, echo, ECHO, in_flight, duration).as_dict()
        flag = ["--stdio"] if transport == "stdio" else ["--tcp", "127.0.0.1:0"]
        argv = [sys.executable, "-m", "llm_rpc", "serve", *flag, "--config", str(config)]
        if kind == "tcp-trio":
            argv += ["--backend", "trio"]
        return loadgen.run(transport, argv, EXECUTE_UPSTREAM, in_flight, duration).as_dict()

    def gateway(self) -> None:
        from bench.http_clients import upstream

        samples: dict[tuple[str, float, int], list[dict[str, Any]]] = {}
        with upstream(0.0) as (port0, pid0), upstream(200.0) as (port200, pid200):
            ports = {0.0: (port0, pid0), 200.0: (port200, pid200)}
            configs = {lat: config_file(port, self.tmp) for lat, (port, _) in ports.items()}
            for round_index in range(self.rounds):
                for latency, in_flight in CELLS:
                    port, pid = ports[latency]
                    systems = [s for s, (_, _, cells) in SYSTEMS.items() if (latency, in_flight) in cells]
                    if not self.have_litellm:
                        systems.remove("litellm")
                    if round_index % 2:
                        systems.reverse()
                    for system in systems:
                        try:
                            cell = self.measure_system(system, latency, in_flight, port, pid, configs[latency])
                        except Exception as exc:  # one failed cell must not lose the run
                            log(f"  {system} {latency:.0f} ms x{in_flight}: FAILED {type(exc).__name__}: {exc}")
                            cell = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                        cell["round"] = round_index
                        samples.setdefault((system, latency, in_flight), []).append(cell)
                        if "rps" in cell:
                            log(
                                f"  round {round_index + 1}: {system:14} {latency:3.0f} ms {in_flight:3} in flight: "
                                f"{cell['rps']:8.1f} req/s  p50 {cell['p50_ms']:8.3f} ms"
                            )
        rows = []
        for (system, latency, in_flight), cells in samples.items():
            good = [c for c in cells if "rps" in c]
            rows.append(
                {
                    "system": system,
                    "label": SYSTEMS[system][0],
                    "latency_ms": latency,
                    "in_flight": in_flight,
                    "ideal_rps": in_flight / (latency / 1000) if latency else None,
                    "rps": median([c["rps"] for c in good]),
                    "p50_ms": median([c["p50_ms"] for c in good]),
                    "p99_ms": median([c["p99_ms"] for c in good]),
                    "overhead_us_p50": median([c.get("overhead_us_p50") for c in good]),
                    "errors": sum(int(c.get("errors") or 0) for c in good),
                    "rounds_rps": [round(c["rps"], 1) for c in good],
                    "rounds_p50_ms": [round(c["p50_ms"], 3) for c in good],
                    "per_round": [{k: c.get(k) for k in ("round", "rps", "p50_ms", "overhead_us_p50")} for c in good],
                    "failed": [c["error"] for c in cells if "error" in c],
                }
            )
        self.results["gateway"] = rows

    # mock: pipelined execute on the mock beside the bare echo server, per transport ---------------------

    def mock(self) -> None:
        from bench import loadgen

        duration = 0.5 if self.quick else 2.0
        in_flight = 64
        echo = [sys.executable, str(BENCH / "echo_server.py")]
        targets: list[tuple[str, str, Callable[[], dict[str, Any]]]] = []
        for transport in ("stdio", "tcp"):
            flag = ["--stdio"] if transport == "stdio" else ["--tcp", "127.0.0.1:0"]
            servers = {
                "llm-rpc execute (mock)": ([sys.executable, "-m", "llm_rpc", "serve", *flag], EXECUTE_MOCK),
                "echo, one task per request": ([*echo, "--mode", "task", "--transport", transport], ECHO),
                "echo, answered inline": ([*echo, "--mode", "inline", "--transport", transport], ECHO),
            }
            for name, (argv, body) in servers.items():

                def go(t: str = transport, a: list[str] = argv, b: bytes = body) -> dict[str, Any]:
                    return loadgen.run(t, a, b, in_flight, duration).as_dict()

                targets.append((transport, name, go))

        def over_http() -> dict[str, Any]:
            with serve("--http", "127.0.0.1:0") as (_proc, port):
                return http_client(port, in_flight, duration)

        targets.append(("http", "llm-rpc execute (mock)", over_http))
        for mode, name in (("task", "echo, one task per request"), ("inline", "echo, answered inline")):

            def echo_over_http(mode: str = mode) -> dict[str, Any]:
                with echo_http(mode) as port:
                    return http_client(port, in_flight, duration)

            targets.append(("http", name, echo_over_http))
        samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for round_index in range(self.rounds):
            for transport, name, measure in targets if round_index % 2 == 0 else targets[::-1]:
                try:
                    cell = measure()
                except Exception as exc:  # one failed cell must not lose the run
                    log(f"  {transport} {name}: FAILED {type(exc).__name__}: {exc}")
                    cell = {"error": f"{type(exc).__name__}: {exc}"[:300]}
                cell["round"] = round_index
                samples.setdefault((transport, name), []).append(cell)
                if "rps" in cell:
                    log(f"  round {round_index + 1}: {transport:5} {name:28} {cell['rps']:10,.0f} req/s")
        rows = []
        for (transport, name), cells in samples.items():
            good = [c for c in cells if "rps" in c]
            if not good:
                continue
            rows.append(
                {
                    "transport": transport,
                    "server": name,
                    "in_flight": in_flight,
                    "rps": median([c["rps"] for c in good]),
                    "p50_ms": median([c["p50_ms"] for c in good]),
                    "p99_ms": median([c["p99_ms"] for c in good]),
                    "errors": sum(int(c.get("errors") or 0) for c in good),
                    "rounds_rps": [round(c["rps"], 1) for c in good],
                    "per_round": [{k: c.get(k) for k in ("round", "rps", "p50_ms")} for c in good],
                    "failed": [c["error"] for c in cells if "error" in c],
                }
            )
        self.results["mock"] = rows

    # cold start -------------------------------------------------------------------------------------------

    def cold(self) -> None:
        from bench.http_clients import upstream

        runs = 2 if self.quick else 10
        litellm_runs = 1 if self.quick else 4
        python3 = shutil.which("python3") or sys.executable
        timer = "import time; t = time.perf_counter(); import {0}; print(time.perf_counter() - t)"

        def timed(argv: list[str], stdin: str = "") -> tuple[float, str]:
            start = time.perf_counter()
            done = subprocess.run(argv, input=stdin.encode(), capture_output=True, check=True, cwd=ROOT, timeout=120)
            return (time.perf_counter() - start) * 1000, done.stdout.decode()

        pipe = [str(ROOT / "bin" / "llm-rpc"), "serve", "--stdio"]
        _, reply = timed(pipe, README_PIPE)  # bin/llm-rpc creates .venv on first use: not timed
        if '"result"' not in reply:
            raise RuntimeError(f"the README pipe gave no result: {reply[:200]!r}")
        samples: dict[str, list[float]] = {}
        with upstream(0.0) as (port, _pid):
            post = (
                "import httpx; httpx.post('http://127.0.0.1:PORT/v1/chat/completions', "
                "json={'model': 'bench-model', 'messages': [{'role': 'user', 'content': 'Hello'}]}).json()".replace(
                    "PORT", str(port)
                )
            )
            for i in range(runs):
                samples.setdefault("one_shot_pipe_ms", []).append(timed(pipe, README_PIPE)[0])
                samples.setdefault("python3_c_pass_ms", []).append(timed([python3, "-c", "pass"])[0])
                samples.setdefault("process_per_call_ms", []).append(timed([sys.executable, "-c", post])[0])
                for name, module in (("httpx", "httpx"), ("anyio_msgspec", "anyio, msgspec")):
                    wall, out = timed([sys.executable, "-c", timer.format(module)])
                    samples.setdefault(f"import_{name}_ms", []).append(float(out) * 1000)
                    samples.setdefault(f"python_import_{name}_ms", []).append(wall)
                if i < litellm_runs and self.have_litellm:
                    wall, out = timed([sys.executable, "-c", timer.format("litellm")])
                    samples.setdefault("import_litellm_ms", []).append(float(out) * 1000)
                    samples.setdefault("python_import_litellm_ms", []).append(wall)
        self.results["cold"] = {
            name: {"ms": median(values), "rounds": [round(v, 1) for v in values]} for name, values in samples.items()
        }
        log(f"  cold: {json.dumps({k: round(v['ms'], 1) for k, v in self.results['cold'].items()})}")

    # concurrency ------------------------------------------------------------------------------------------

    def concurrency(self) -> None:
        import anyio

        from bench import concurrency
        from bench.http_clients import upstream

        out: dict[str, Any] = {}
        with (
            upstream(200.0) as (port, _pid),
            serve("--tcp", "127.0.0.1:0", "--config", str(config_file(port, self.tmp))) as (
                _proc,
                server_port,
            ),
        ):
            out["execute_batch"] = anyio.run(concurrency._batch, server_port)
        log(f"  execute_batch: {out['execute_batch']}")
        count = 2000 if self.quick else 10_000
        with (
            upstream(1000.0) as (port, _pid),
            serve("--tcp", "127.0.0.1:0", "--config", str(config_file(port, self.tmp)), "--max-in-flight", "20000") as (
                proc,
                server_port,
            ),
        ):
            flood = anyio.run(concurrency._flood, server_port, count)
            flood["peak_rss_mb"] = round(concurrency._peak_rss_mb(proc.pid), 1)
        out["in_flight"] = flood
        log(f"  {count} in flight: {flood}")
        self.results["concurrency"] = out

    # budgets and policy -----------------------------------------------------------------------------------

    def budgets(self) -> None:
        import anyio

        from bench import budgets

        self.results["budgets"] = anyio.run(budgets.run, 0.3 if self.quick else 1.0, "asyncio", None)

    def policy(self) -> None:
        import anyio

        from bench import policy

        calls, rounds = (2000, 2) if self.quick else (20_000, 5)
        self.results["policy"] = anyio.run(policy.measure, calls, rounds)
        log(f"  resolve_route: {[(r['request'], r['resolve_route_us']) for r in self.results['policy']]}")

    # overhead_us against outside clocks, paired call by call -------------------------------------------

    def overhead(self) -> None:
        from bench import overhead

        calls, rounds = (150, 1) if self.quick else (400, max(3, self.rounds))
        result = overhead.main(["--calls", str(calls), "--rounds", str(rounds), "--output", str(self.tmp / "o.json")])
        self.results["overhead"] = result
        wire = result.get("wire", {})
        log(
            f"  overhead_us: in process {result['in_process']['agreement']} of the paired outside clock; "
            f"the mock over TCP {wire.get('agreement', wire.get('skipped') or wire.get('error'))} of the wire's"
        )


# -- figures, targets, tables -----------------------------------------------------------------------------


def _row(results: dict[str, Any], system: str, latency: float, in_flight: int) -> dict[str, Any] | None:
    for row in results.get("gateway", []):
        if (row["system"], row["latency_ms"], row["in_flight"]) == (system, latency, in_flight):
            if row["rps"] is None:
                return None
            found: dict[str, Any] = row
            return found
    return None


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every figure of the run, flat, each with its unit (and its per-round values where there are rounds)."""
    out: list[dict[str, Any]] = []

    def add(section: str, name: str, value: Any, unit: str, rounds: list[Any] | None = None) -> None:
        if value is None:
            return
        entry = {"section": section, "name": name, "value": round(float(value), 3), "unit": unit}
        if rounds is not None:
            entry["rounds"] = rounds
        out.append(entry)

    for r in results.get("gateway", []):
        where = f"{r['label']}, {r['latency_ms']:.0f} ms upstream, {r['in_flight']} in flight"
        add("gateway", f"{where}: throughput", r["rps"], "req/s", r["rounds_rps"])
        add("gateway", f"{where}: p50 latency", r["p50_ms"], "ms", r["rounds_p50_ms"])
        add("gateway", f"{where}: p99 latency", r["p99_ms"], "ms")
        if r["ideal_rps"] and r["rps"] is not None:
            add("gateway", f"{where}: share of the ideal", r["rps"] / r["ideal_rps"], "fraction")
        add("gateway", f"{where}: reported overhead_us, median", r["overhead_us_p50"], "µs")
    for r in results.get("mock", []):
        where = f"{r['server']} over {r['transport']}, {r['in_flight']} in flight pipelined"
        add("mock", f"{where}: throughput", r["rps"], "req/s", r["rounds_rps"])
        add("mock", f"{where}: p50 latency", r["p50_ms"], "ms")
    for name, v in results.get("cold", {}).items():
        add("cold", name.removesuffix("_ms"), v["ms"], "ms", v["rounds"])
    conc = results.get("concurrency", {})
    if "execute_batch" in conc:
        b = conc["execute_batch"]
        add("concurrency", "execute_batch of 100 at 200 ms", b["batch_of_100_ms"], "ms")
        add("concurrency", "one execute at 200 ms", b["single_ms"], "ms")
        add("concurrency", "first execute_batch of 100 (opens connections)", b["first_batch_ms"], "ms")
    if "in_flight" in conc:
        f = conc["in_flight"]
        add("concurrency", f"{f['requests']} in flight at 1 s: peak RSS", f["peak_rss_mb"], "MB")
        add("concurrency", f"{f['requests']} in flight at 1 s: completed", f["completed"], "requests")
        add("concurrency", f"{f['requests']} in flight at 1 s: wall time", f["seconds"], "s")
    bud = results.get("budgets", {})
    for store, detail in bud.items():
        if not isinstance(detail, dict):
            continue
        for mode, ops in detail.items():
            for op, rate in ops.items():
                add("budgets", f"{store} store, {mode.replace('_', ' ')}: budget.{op.replace('_', '+')}", rate, "ops/s")
    paired = results.get("overhead")
    if paired:
        for path, label in (
            ("in_process", "in-process Router"),
            ("tcp", "execute over TCP"),
            ("mock", "the mock over TCP"),
        ):
            cell = paired[path]
            add("overhead", f"{label}: reported overhead_us, median (paired run)", cell["overhead_us_p50"], "µs")
            add("overhead", f"{label}: the outside clock's figure (paired run)", cell["outside_us"], "µs")
        wire = paired.get("wire", {})
        if "agreement" in wire:
            add("overhead", "the mock over TCP, request to reply on the wire", wire["mock_wire_us_p50"], "µs")
            add(
                "overhead",
                "a bare echo (answered inline), request to reply on the wire",
                wire["echo_wire_us_p50"],
                "µs",
            )
            add(
                "overhead", "the mock over TCP: reported overhead_us over the wire's figure", wire["agreement"], "ratio"
            )
    for r in results.get("policy", []):
        add("policy", f"resolve_route, {r['request']} (50 rules, 30 models)", r["resolve_route_us"], "µs per call")
        add("policy", f"decide, {r['request']}", r["decide_us"], "µs per call")
        add("policy", f"resolve_route over the dispatcher, {r['request']}", r["rpc_us"], "µs per call")
    return out


def _fmt(value: float | None, unit: str = "", digits: int = 0) -> str:
    if value is None:
        return "n/a"
    text = f"{value:,.{digits}f}"
    return f"{text} {unit}".rstrip()


def _paired(
    results: dict[str, Any],
    a: str,
    b: str,
    cell: tuple[float, int],
    fn: Callable[[dict[str, Any], dict[str, Any]], float],
) -> float | None:
    """The median over rounds of ``fn(a's round, b's round)``: a comparison taken within each round (the
    machine is shared, and its load changes from minute to minute), then the median."""
    ra, rb = _row(results, a, *cell), _row(results, b, *cell)
    if ra is None or rb is None:
        return None
    theirs = {r["round"]: r for r in rb.get("per_round", [])}
    return median([fn(r, theirs[r["round"]]) for r in ra.get("per_round", []) if r["round"] in theirs])


def _best_direct_per_round(results: dict[str, Any], cell: tuple[float, int]) -> dict[int, tuple[float, str]]:
    best: dict[int, tuple[float, str]] = {}
    for system in DIRECT:
        row = _row(results, system, *cell)
        for r in row.get("per_round", []) if row else []:
            if r["round"] not in best or r["rps"] > best[r["round"]][0]:
                best[r["round"]] = (r["rps"], system)
    return best


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 9's targets, each a ratio within this run: the median over rounds of the ratio (or the
    difference) taken within each round. ``met`` is None where a figure is missing."""
    out: list[dict[str, Any]] = []

    def add(target: str, ours: str, other: str, ratio: float | None, ratio_text: str, met: bool | None) -> None:
        out.append(
            {
                "target": target,
                "llm_rpc": ours,
                "comparison": other,
                "ratio": None if ratio is None else round(ratio, 3),
                "ratio_text": ratio_text,
                "met": met,
            }
        )

    def added_us(x: dict[str, Any], y: dict[str, Any]) -> float:
        return float((x["p50_ms"] - y["p50_ms"]) * 1000)

    def rps_ratio(x: dict[str, Any], y: dict[str, Any]) -> float:
        return float(x["rps"] / y["rps"]) if y["rps"] else float("nan")

    ratio: float | None
    one = (0.0, 1)
    floor1 = _row(results, "floor", *one)
    lite_added = _paired(results, "litellm", "floor", one, added_us)
    overheads: dict[str, float] = {}
    if floor1:
        for system in ("inprocess", *TRANSPORTS):
            ours = _row(results, system, *one)
            added = _paired(results, system, "floor", one, added_us)
            if ours is None or added is None:
                continue
            overheads[system] = added
            label = SYSTEMS[system][0].removeprefix("llm-rpc ")
            add(
                f"adds ≤ 150 µs per call at p50 over the direct client, 1 in flight ({label})",
                f"{added:+,.0f} µs (p50 {ours['p50_ms']:.3f} ms)",
                f"floor p50 {floor1['p50_ms']:.3f} ms; LiteLLM +{_fmt(lite_added, 'µs')}",
                added / 150,
                f"{added / 150:.2f}x the budget",
                added <= 150,
            )
            if lite_added is not None:
                ratio = lite_added / added if added > 0 else None
                add(
                    f"≥ 40x less overhead than LiteLLM Router, 1 in flight ({label})",
                    f"{added:+,.0f} µs",
                    f"LiteLLM {lite_added:+,.0f} µs",
                    ratio,
                    "nothing measurable added" if ratio is None else f"{ratio:,.1f}x less",
                    ratio is None or ratio >= 40,
                )
    busy = (0.0, 64)
    lite64 = _row(results, "litellm", *busy)
    best = _best_direct_per_round(results, busy)
    for system in TRANSPORTS:
        ours = _row(results, system, *busy)
        if ours is None:
            continue
        label = system if system != "http" else "HTTP"
        ratio = _paired(results, system, "litellm", busy, rps_ratio)
        if lite64 and ratio is not None:
            add(
                f"64 in flight, 0 ms: ≥ 5x LiteLLM Router's throughput ({label})",
                _fmt(ours["rps"], "req/s"),
                f"LiteLLM {_fmt(lite64['rps'], 'req/s')}",
                ratio,
                f"{ratio:.1f}x",
                ratio >= 5,
            )
        pairs = [(r["rps"] / best[r["round"]][0], best[r["round"]][1]) for r in ours["per_round"] if r["round"] in best]
        if pairs:
            ratio = statistics.median(x for x, _ in pairs)
            names = sorted({SYSTEMS[n][0].removeprefix("direct ") for _, n in pairs})
            best_rps = median([v for v, _ in best.values()])
            floor64 = _row(results, "floor", *busy)
            floor_text = f"; the floor (llm-rpc's client) {_fmt(floor64['rps'], 'req/s')}" if floor64 else ""
            add(
                f"64 in flight, 0 ms: ≥ 80% of the best direct client ({label})",
                _fmt(ours["rps"], "req/s"),
                f"best: {' / '.join(names)} {_fmt(best_rps, 'req/s')}{floor_text}",
                ratio,
                f"{ratio:.0%}",
                ratio >= 0.8,
            )
    for in_flight, goal in ((64, 0.9), (256, 0.8)):
        ideal = in_flight / 0.2
        floor = _row(results, "floor", 200.0, in_flight)
        lite = _row(results, "litellm", 200.0, in_flight)
        for system in TRANSPORTS:
            ours = _row(results, system, 200.0, in_flight)
            if ours is None:
                continue
            ratio = ours["rps"] / ideal
            others = [f"ideal {ideal:,.0f} req/s"]
            if floor:
                others.append(f"floor {floor['rps'] / ideal:.0%}")
            if lite:
                others.append(f"LiteLLM {lite['rps'] / ideal:.0%}")
            add(
                f"{in_flight} in flight, 200 ms, asyncio: ≥ {goal:.0%} of the ideal ({system})",
                _fmt(ours["rps"], "req/s"),
                "; ".join(others),
                ratio,
                f"{ratio:.0%}",
                ratio >= goal,
            )
        trio, asyncio_row = _row(results, "tcp-trio", 200.0, in_flight), _row(results, "tcp", 200.0, in_flight)
        ratio = _paired(results, "tcp-trio", "tcp", (200.0, in_flight), rps_ratio)
        if trio and asyncio_row and ratio is not None:
            add(
                f"{in_flight} in flight, 200 ms: trio within 20% of asyncio (TCP)",
                f"trio {_fmt(trio['rps'], 'req/s')}",
                f"asyncio {_fmt(asyncio_row['rps'], 'req/s')}",
                ratio,
                f"{ratio:.0%}",
                ratio >= 0.8,
            )
    mock = {(r["transport"], r["server"]): r for r in results.get("mock", [])}
    for transport in TRANSPORTS:
        ours_m = mock.get((transport, "llm-rpc execute (mock)"))
        echo = mock.get((transport, "echo, one task per request"))
        if ours_m and echo:
            theirs = {r["round"]: r["rps"] for r in echo.get("per_round", [])}
            ratio = median([r["rps"] / theirs[r["round"]] for r in ours_m.get("per_round", []) if r["round"] in theirs])
            if ratio is None:
                continue
            add(
                f"pipelined execute on the mock over {transport}: ≥ 0.5x the bare echo, one task per request",
                _fmt(ours_m["rps"], "req/s"),
                f"echo {_fmt(echo['rps'], 'req/s')}",
                ratio,
                f"{ratio:.2f}x",
                ratio >= 0.5,
            )
    cold = results.get("cold", {})
    if "one_shot_pipe_ms" in cold:
        pipe = cold["one_shot_pipe_ms"]["ms"]
        add(
            "cold start of the README one-shot pipe ≤ 150 ms (median)",
            _fmt(pipe, "ms", 1),
            f"python3 -c pass {_fmt(cold['python3_c_pass_ms']['ms'], 'ms', 1)}",
            pipe / 150,
            f"{pipe / 150:.2f}x the budget",
            pipe <= 150,
        )
        if "python_import_litellm_ms" in cold:
            lite_ms = cold["python_import_litellm_ms"]["ms"]
            add(
                "cold start ≥ 25x faster than `python -c 'import litellm'`",
                _fmt(pipe, "ms", 1),
                _fmt(lite_ms, "ms"),
                lite_ms / pipe,
                f"{lite_ms / pipe:.1f}x faster",
                lite_ms / pipe >= 25,
            )
    conc = results.get("concurrency", {})
    if "execute_batch" in conc:
        b = conc["execute_batch"]
        ratio = b["batch_of_100_ms"] / b["single_ms"]
        add(
            "execute_batch of 100 at 200 ms ≤ 1.2x one call",
            _fmt(b["batch_of_100_ms"], "ms", 1),
            f"one call {_fmt(b['single_ms'], 'ms', 1)}",
            ratio,
            f"{ratio:.2f}x",
            ratio <= 1.2,
        )
    if "in_flight" in conc:
        f = conc["in_flight"]
        ok = f["completed"] == f["requests"] and f["errors"] == 0
        add(
            f"{f['requests']:,} in flight: RSS < 300 MB (all complete)",
            f"{f['peak_rss_mb']:.0f} MB peak; {f['completed']:,} completed, {f['errors']} errors",
            "300 MB",
            f["peak_rss_mb"] / 300,
            f"{f['peak_rss_mb'] / 300:.2f}x the budget",
            f["peak_rss_mb"] < 300 and ok,
        )
    # Item 3: the overhead_us each result reports against what an outside clock sees. Paired call by
    # call (bench/overhead.py) where that section ran: the figures compared are tens of µs, smaller
    # than the difference between two cells' medians on a shared machine.
    paired = results.get("overhead")
    if paired:
        ip = paired["in_process"]
        add(
            "reported overhead_us agrees with the outside clock within 20% (in-process Router, paired call by call)",
            f"reported {ip['overhead_us_p50']:,.1f} µs (median)",
            f"outside {ip['outside_us']:+,.1f} µs (p50 less the direct client's, calls alternating)",
            ip["agreement"],
            f"{ip['agreement']:.2f}x",
            None if ip["agreement"] is None else abs(ip["agreement"] - 1) <= 0.2,
        )
        wire = paired.get("wire", {})
        label = (
            "reported overhead_us agrees with the outside clock within 20% (the mock over TCP, the wire's timestamps)"
        )
        if "agreement" in wire:
            # The median of the rounds' ratios; each round's shown, since one noisy round moves it.
            rounds = [r["overhead_us_p50"] / r["outside_us"] for r in wire.get("per_round", []) if r["outside_us"] > 0]
            each = f" (rounds: {', '.join(f'{r:.2f}' for r in rounds)})" if len(rounds) > 1 else ""
            add(
                label,
                f"reported {wire['overhead_us_p50']:,.1f} µs (median)",
                f"the wire: {wire['mock_wire_us_p50']:,.0f} µs from request to reply, less a bare echo's "
                f"{wire['echo_wire_us_p50']:,.0f} µs: {wire['outside_us']:+,.1f} µs",
                wire["agreement"],
                "-" if wire["agreement"] is None else f"{wire['agreement']:.2f}x{each}",
                None if wire["agreement"] is None else abs(wire["agreement"] - 1) <= 0.2,
            )
        else:
            add(label, "-", str(wire.get("skipped") or wire.get("error")), None, "-", None)
    for system in ("inprocess", "stdio", "tcp"):
        ours = _row(results, system, *one)
        if ours is None or system not in overheads:
            continue
        outside = overheads[system]
        reported = ours["overhead_us_p50"]
        label = SYSTEMS[system][0].removeprefix("llm-rpc ")
        target = f"reported overhead_us agrees with the outside clock within 20% ({label}, 1 in flight)"
        if reported is None:
            add(target, "not reported (overhead_us is null)", f"outside +{outside:,.0f} µs", None, "-", None)
            continue
        ratio = reported / outside if outside > 0 else None
        hop = _row(results, f"echo-{system}", *one)
        beyond = ratio_text = ""
        if hop:
            inside = outside - hop["p50_ms"] * 1000
            beyond = f"; less the bare echo's round trip over {system}: {inside:+,.0f} µs"
            if inside > 0:
                ratio_text = f" ({reported / inside:.2f}x of the latter)"
        add(
            target + (" (across cells: a rough check)" if paired else ""),
            f"reported {reported:,.0f} µs (median)",
            f"outside {outside:+,.0f} µs (p50 less the floor's){beyond}",
            ratio,
            ("outside difference within the noise" if ratio is None else f"{ratio:.2f}x") + ratio_text,
            None if ratio is None or paired else abs(ratio - 1) <= 0.2,
        )
    return out


def issue_table(results: dict[str, Any]) -> list[dict[str, str]]:
    """Issue 9's table of figures, each reproduced in this run, with llm-rpc's figure beside it."""
    rows: list[dict[str, str]] = []

    def rps(system: str, latency: float, in_flight: int) -> str:
        row = _row(results, system, latency, in_flight)
        return "n/a" if row is None else _fmt(row["rps"])

    def p(system: str, latency: float, in_flight: int, key: str = "p50_ms") -> str:
        row = _row(results, system, latency, in_flight)
        return "n/a" if row is None else f"{row[key]:,.2f} ms"

    def ours(latency: float, in_flight: int) -> str:
        return " / ".join(f"{t} {rps(t, latency, in_flight)}" for t in TRANSPORTS) + " req/s"

    def add(what: str, issue: str, this_run: str, llm_rpc: str) -> None:
        rows.append({"what": what, "issue": issue, "this_run": this_run, "llm_rpc": llm_rpc})

    if "gateway" in results:
        add(
            "direct httpx 0.28 POST, 1 in flight",
            "1,233 req/s, p50 0.74 ms",
            f"{rps('httpx', 0, 1)} req/s, p50 {p('httpx', 0, 1)}",
            f"{ours(0, 1)}; stdio p50 {p('stdio', 0, 1)}",
        )
        add(
            "direct httpx 0.28, 64 in flight",
            "468 req/s, p99 about 1 s",
            f"{rps('httpx', 0, 64)} req/s, p99 {p('httpx', 0, 64, 'p99_ms')}",
            f"{ours(0, 64)}; stdio p99 {p('stdio', 0, 64, 'p99_ms')}",
        )
        add("httpx2 2.16, 64 in flight", "1,027 req/s", f"{rps('httpx2', 0, 64)} req/s", ours(0, 64))
        add(
            "aiohttp, 64 in flight",
            "8,042 req/s, p50 7.7 ms",
            f"{rps('aiohttp', 0, 64)} req/s, p50 {p('aiohttp', 0, 64)}",
            f"{ours(0, 64)}; stdio p50 {p('stdio', 0, 64)}",
        )
        for in_flight, issue in ((64, "61 / 289 / 310 / 107 req/s"), (256, "60 / 558 / 1,075 / 129 req/s")):
            add(
                f"200 ms upstream, {in_flight} in flight (ideal {in_flight * 5:,}): httpx / httpx2 / aiohttp / LiteLLM",
                issue,
                " / ".join(rps(s, 200, in_flight) for s in ("httpx", "httpx2", "aiohttp", "litellm")) + " req/s",
                f"{ours(200, in_flight)}; trio TCP {rps('tcp-trio', 200, in_flight)}; "
                f"floor {rps('floor', 200, in_flight)}",
            )
        add(
            "httpx over httpx-aiohttp, 64 / 256 in flight at 200 ms (httpx2 beside it)",
            "284 / 1,001 req/s (httpx2 278 / 464)",
            f"{rps('httpx-aiohttp', 200, 64)} / {rps('httpx-aiohttp', 200, 256)} req/s "
            f"(httpx2 {rps('httpx2', 200, 64)} / {rps('httpx2', 200, 256)})",
            f"stdio {rps('stdio', 200, 64)} / {rps('stdio', 200, 256)} req/s",
        )
        httpx1, lite1 = _row(results, "httpx", 0, 1), _row(results, "litellm", 0, 1)
        lite_added = f"{(lite1['p50_ms'] - httpx1['p50_ms']):.1f} ms" if httpx1 and lite1 else "n/a"
        ours_added = " / ".join(
            f"{t} {((r['p50_ms'] - httpx1['p50_ms']) * 1000):+,.0f} µs"
            for t in TRANSPORTS
            if httpx1 and (r := _row(results, t, 0, 1)) is not None
        )
        add(
            "LiteLLM Router, 1 / 64 in flight; added per call over direct httpx at p50",
            "122 / 138 req/s; about 7.2 ms",
            f"{rps('litellm', 0, 1)} / {rps('litellm', 0, 64)} req/s; {lite_added}",
            f"stdio {rps('stdio', 0, 1)} / {rps('stdio', 0, 64)} req/s; {ours_added or 'n/a'}",
        )
    cold = results.get("cold", {})
    if cold:

        def ms(name: str, digits: int = 0) -> str:
            return _fmt(cold[name]["ms"], "ms", digits) if name in cold else "n/a"

        add(
            "import litellm; import httpx; anyio + msgspec (import time only)",
            "about 4.4 s; 0.13 s; 0.045 s",
            f"{ms('import_litellm_ms')}; {ms('import_httpx_ms')}; {ms('import_anyio_msgspec_ms', 1)}",
            f"whole one-shot pipe {ms('one_shot_pipe_ms', 1)} (python3 -c pass {ms('python3_c_pass_ms', 1)})",
        )
        add(
            "a fresh Python process per call (import httpx + one POST)",
            "about 330 ms",
            ms("process_per_call_ms"),
            f"one-shot pipe {ms('one_shot_pipe_ms', 1)}; a call on a running server: stdio p50 "
            f"{p('stdio', 0, 1) if 'gateway' in results else 'n/a'}",
        )
    mock = {(r["transport"], r["server"]): r for r in results.get("mock", [])}
    if mock:

        def m(transport: str, server: str) -> str:
            row = mock.get((transport, server))
            return "n/a" if row is None else _fmt(row["rps"])

        add(
            "bare anyio + msgspec JSON-RPC echo over stdio, 64 pipelined: one task per request; answered inline",
            "33,000-41,000 req/s; about 640,000 req/s",
            f"{m('stdio', 'echo, one task per request')}; {m('stdio', 'echo, answered inline')} req/s",
            f"execute on the mock: stdio {m('stdio', 'llm-rpc execute (mock)')}, tcp "
            f"{m('tcp', 'llm-rpc execute (mock)')}, HTTP {m('http', 'llm-rpc execute (mock)')} req/s",
        )
    return rows


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("met" if met else "**missed**")


README = ROOT / "README.md"
README_START = "<!-- bench/run writes from here -->"
README_END = "<!-- to here -->"


def update_readme(summary: dict[str, Any]) -> bool:
    """Replace the README's block between the two markers with the chart and the targets table."""
    text = README.read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        return False
    machine = summary["machine"]
    lines = [
        README_START,
        "",
        "![llm-rpc beside LiteLLM Router and the direct-client floor](bench/results/performance.png)",
        "",
        f"`{summary['command']}`: {summary['date']}, git {summary['git_rev']}, medians of {summary['rounds']} "
        f"interleaved rounds, {summary['seconds'] / 60:.1f} minutes on {machine['cpus']} cores shared with other "
        "work (ratios within the run are what to read). Every figure, with its unit, the issue's own table "
        "reproduced beside llm-rpc's, and each round: [`bench/results/summary.md`](bench/results/summary.md) "
        "and [`summary.json`](bench/results/summary.json).",
        "",
        "| target (issue 9) | llm-rpc | comparison | ratio | |",
        "|---|---|---|---|---|",
    ]
    for t in summary["targets"]:
        lines.append(
            f"| {t['target']} | {t['llm_rpc']} | {t['comparison']} | {t['ratio_text']} | {verdict(t['met'])} |"
        )
    lines += ["", ""]
    README.write_text(text[:start] + "\n".join(lines) + text[end:])
    return True


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "# Benchmark summary (issue 9)",
        "",
        f"`{summary['command']}` — {summary['date']}, git {summary['git_rev']}, {summary['rounds']} round(s), "
        f"{summary['seconds']:.0f} s; {summary['machine']['cpus']} cores shared with other work "
        f"(load average before/after {summary['machine']['loadavg_before']} / {summary['machine']['loadavg_after']}); "
        f"Python {summary['machine']['python']}. Figures are medians over interleaved rounds; each ratio is "
        "taken within each round (the two sides measured a few seconds apart), then the median over rounds.",
        "",
        "## Targets",
        "",
        "| target | llm-rpc | comparison | ratio | |",
        "|---|---|---|---|---|",
    ]
    for t in summary["targets"]:
        lines.append(
            f"| {t['target']} | {t['llm_rpc']} | {t['comparison']} | {t['ratio_text']} | {verdict(t['met'])} |"
        )
    if summary["issue_table"]:
        lines += [
            "",
            "## Issue 9's figures, reproduced",
            "",
            "| what | issue 9 | this run | llm-rpc beside it |",
            "|---|---|---|---|",
        ]
        for r in summary["issue_table"]:
            lines.append(f"| {r['what']} | {r['issue']} | {r['this_run']} | {r['llm_rpc']} |")
    gateway = summary["results"].get("gateway", [])
    if gateway:
        lines += [
            "",
            "## Against the local upstream",
            "",
            "| system | upstream | in flight | req/s | of ideal | p50 ms | p99 ms | overhead_us reported "
            "| rounds (req/s) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(gateway, key=lambda r: (r["latency_ms"], r["in_flight"], list(SYSTEMS).index(r["system"]))):
            ideal = f"{r['rps'] / r['ideal_rps']:.0%}" if r["ideal_rps"] and r["rps"] is not None else "-"
            over = _fmt(r["overhead_us_p50"], "µs") if r["system"] in LLM_RPC else "-"
            if r["system"] in LLM_RPC and r["system"] != "http" and r["overhead_us_p50"] is None:
                over = "not reported"
            p50 = "n/a" if r["p50_ms"] is None else f"{r['p50_ms']:.3f}"
            p99 = "n/a" if r["p99_ms"] is None else f"{r['p99_ms']:.3f}"
            lines.append(
                f"| {r['label']} | {r['latency_ms']:.0f} ms | {r['in_flight']} | {_fmt(r['rps'])} | {ideal} | {p50} "
                f"| {p99} | {over} | {', '.join(f'{x:,.0f}' for x in r['rounds_rps'])} |"
            )
    lines += ["", "## Every figure", "", "| section | figure | value | unit |", "|---|---|---|---|"]
    for f in summary["figures"]:
        lines.append(f"| {f['section']} | {f['name']} | {f['value']:,.3f} | {f['unit']} |")
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: Path) -> bool:
    """performance.png: overhead per call at 1 in flight, and throughput per concurrency."""
    if "gateway" not in results:
        return False
    try:
        matplotlib: Any = importlib.import_module("matplotlib")  # bench/.venv only
    except ImportError:
        return False
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.6]})
    floor1 = _row(results, "floor", 0.0, 1)
    bars = [s for s in ("inprocess", *TRANSPORTS, "litellm") if _row(results, s, 0.0, 1)]
    if floor1:
        # The same figures as the targets: p50 less the floor's, within each round, median over rounds.
        added = [
            _paired(results, s, "floor", (0.0, 1), lambda x, y: float(x["p50_ms"] - y["p50_ms"]) * 1000) or 0.0
            for s in bars
        ]
        short = {
            "inprocess": "llm-rpc\nin process",
            "stdio": "llm-rpc\nstdio",
            "tcp": "llm-rpc\nTCP",
            "http": "llm-rpc\nHTTP",
            "litellm": "LiteLLM\nRouter",
        }
        names = [short[s] for s in bars]
        colors = ["#d62728" if s == "litellm" else "#1f77b4" for s in bars]
        hop = _row(results, "echo-stdio", 0.0, 1)
        if hop:  # for scale: a JSON-RPC round trip over a pipe with nothing behind it
            names.append("stdio round\ntrip alone\n(bare echo)")
            added.append(hop["p50_ms"] * 1000)
            colors.append("#aaaaaa")
        shown = [max(a, 11.0) for a in added]  # the axis starts at 10 µs; a value at or below it is written
        left.bar(names, shown, color=colors)
        for i, a in enumerate(added):
            left.text(i, shown[i] * 1.08, f"{a:,.0f} µs", ha="center", fontsize=9)
        left.axhline(floor1["p50_ms"] * 1000, color="gray", linestyle="--", linewidth=1)
        left.text(
            len(names) - 0.5, floor1["p50_ms"] * 1000 * 1.08, f"floor's own p50: {floor1['p50_ms'] * 1000:,.0f} µs",
            ha="right", fontsize=8, color="gray",
        )  # fmt: skip
        left.axhline(150, color="green", linestyle=":", linewidth=1)
        left.text(-0.4, 150 * 1.08, "target 150 µs", fontsize=8, color="green")
        left.set_yscale("log")
        left.set_ylim(bottom=10)
        left.set_ylabel("µs added per call over the direct client (p50, log)")
        left.set_title("Overhead per call, 1 in flight, 0 ms upstream")
        left.tick_params(axis="x", labelsize=8)
    cells = list(CELLS)
    series = [
        ("floor", "direct: llm-rpc's client (floor)", "#7f7f7f"),
        ("best", "direct: best client", "#bcbd22"),
        ("stdio", "llm-rpc stdio", "#1f77b4"),
        ("tcp", "llm-rpc TCP", "#17becf"),
        ("http", "llm-rpc HTTP", "#9467bd"),
        ("litellm", "LiteLLM Router", "#d62728"),
    ]
    width = 0.8 / len(series)
    for j, (key, label, color) in enumerate(series):
        values = []
        for lat, n in cells:
            if key == "best":
                found = [r["rps"] for s in DIRECT if (r := _row(results, s, lat, n)) is not None]
                values.append(max(found) if found else 0.0)
            else:
                row = _row(results, key, lat, n)
                values.append(row["rps"] if row else 0.0)
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(cells))]
        right.bar(xs, values, width, label=label, color=color)
    for i, (lat, n) in enumerate(cells):
        if lat:
            right.plot([i - 0.45, i + 0.45], [n / (lat / 1000)] * 2, color="black", linestyle="--", linewidth=1)
    right.set_xticks(range(len(cells)))
    right.set_xticklabels([f"{n} in flight\n{lat:.0f} ms upstream" for lat, n in cells])
    right.set_yscale("log")
    right.set_ylabel("req/s (log); dashed: the ideal")
    right.set_title("Throughput per concurrency")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
    fig.suptitle("llm-rpc beside LiteLLM Router and the direct-client floor (bench/run)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# -- main -------------------------------------------------------------------------------------------------


def _git_rev() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("llm-rpc", "litellm", "httpx", "httpx2", "aiohttp", "httpx-aiohttp", "anyio", "trio", "msgspec"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke test)")
    parser.add_argument("--only", action="append", choices=SECTIONS, help="run only this section (repeatable)")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; 1 with --quick)")
    parser.add_argument("--output", type=Path, default=None, help="results directory")
    parser.add_argument(
        "--no-install", action="store_true", help="use this interpreter as it is (no bench/.venv; LiteLLM skipped)"
    )
    args = parser.parse_args(args_list)
    hermetic_env()
    if not args.no_install:
        ensure_venv()
        if Path(sys.prefix).resolve() != VENV.resolve():
            os.execv(str(VENV_PY), [str(VENV_PY), "-m", "bench", *args_list])
    os.chdir(ROOT)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    sections = args.only or list(SECTIONS)
    partial = bool(args.quick or args.only)
    output = args.output or (Path(tempfile.gettempdir()) / "llm-rpc-bench" if partial else RESULTS)
    output.mkdir(parents=True, exist_ok=True)
    rounds = args.rounds or (1 if args.quick else 2)
    have_litellm = importlib.util.find_spec("litellm") is not None
    run = Run(rounds, args.quick, have_litellm)
    started = time.perf_counter()
    load_before = _loadavg()
    try:
        for section in sections:
            log(f"section {section}")
            try:
                getattr(run, section)()
            except Exception as exc:  # report it, keep the other sections
                log(f"section {section} FAILED: {type(exc).__name__}: {exc}")
                run.results.setdefault("failed_sections", {})[section] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        shutil.rmtree(run.tmp, ignore_errors=True)
    seconds = time.perf_counter() - started
    summary: dict[str, Any] = {
        "command": " ".join(["bench/run", *args_list]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "git_rev": _git_rev(),
        "rounds": rounds,
        "sections": sections,
        "seconds": round(seconds, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": _loadavg(),
            "shared": True,
        },
        "versions": _versions(),
    }
    summary["targets"] = targets(run.results)
    summary["issue_table"] = issue_table(run.results)
    summary["figures"] = figures(run.results)
    summary["results"] = run.results
    (output / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    (output / "summary.md").write_text(markdown(summary))
    png = chart(run.results, output / "performance.png")
    if output.resolve() == RESULTS.resolve() and not partial and update_readme(summary):
        log("updated README.md's Performance table")
    log(
        f"wrote {output / 'summary.json'}, {output / 'summary.md'}" + (f", {output / 'performance.png'}" if png else "")
    )
    log(f"{seconds:.0f} s")
    print(markdown(summary).split("\n## Issue")[0])
    return 0
