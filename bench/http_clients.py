"""Which HTTP client the providers use (issue 3 item 4, issue 9 item 2): POST throughput, latency
and CPU per call against the local upstream (``bench/upstream.py``, its own process), at 1, 64
and 256 in flight, with 0 ms and 200 ms of upstream latency, on asyncio and trio.

Run it with any Python >= 3.11 (only the standard library is used here)::

    python bench/http_clients.py                 # the full run, about 5 minutes
    python bench/http_clients.py --rounds 1 --clients httpx2-llmrpc,aiohttp --in-flight 64

The comparison packages live in their own venv, ``bench/.venv``, created from
``bench/requirements.txt`` on first use (they are never dependencies of the package). Each cell
is one fresh client process (``worker``, below) running in that venv; the upstream runs on its
own, with uvloop. Every figure is a median over interleaved rounds of the same run. The results
go to ``bench/results/http_clients.json`` and a markdown table is printed.

``python bench/http_clients.py capacity`` measures the upstream itself (uvloop and plain
asyncio) with a minimal raw HTTP/1.1 client, to show it is not what the run measures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = BENCH / ".venv"
VENV_PY = VENV / "bin" / "python"
REQUIREMENTS = BENCH / "requirements.txt"
RESULTS = BENCH / "results" / "http_clients.json"

PATH = "/v1/chat/completions"
BODY = b'{"model":"bench-model","messages":[{"role":"user","content":"Hello"}],"max_tokens":16}'
HEADERS = {"content-type": "application/json", "authorization": "Bearer sk-bench-not-a-key"}
TIMEOUT = 60.0
#: Pool width given to every client but the "default Limits" one, so that the pool size is never
#: what caps 256 in flight (httpx's default is 100 connections, 20 kept alive).
WIDE = 1000

#: client id -> (label, the anyio backends it runs on)
CLIENTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "httpx": ("httpx 0.28 (httpcore 1.0.9)", ("asyncio", "trio")),
    "httpx2-default": ("httpx2, default Limits (100 conns, 20 keep-alive)", ("asyncio", "trio")),
    "httpx2-llmrpc": ("llm-rpc new_client(): aiohttp on asyncio, httpx2 pools on trio", ("asyncio", "trio")),
    "httpx2-llmrpc-pool": ("llm-rpc new_client(use_aiohttp=False): httpx2 pools filled in order", ("asyncio", "trio")),
    "httpx2-llmrpc-uvloop": ("llm-rpc new_client() on uvloop", ("asyncio",)),
    "httpx-aiohttp": ("httpx 0.28 over httpx-aiohttp", ("asyncio",)),
    "httpx2-aiohttp": ("httpx2 over httpx-aiohttp", ("asyncio",)),
    "aiohttp": ("aiohttp (reference)", ("asyncio",)),
    # Not in the default run (--clients NAME): experiments kept for reproduction.
    "httpx-default": ("httpx 0.28, default Limits (100 conns, 20 keep-alive)", ("asyncio", "trio")),
    "httpx2-sharded": ("httpx2, 8 pools taken in turn", ("asyncio", "trio")),
    # Used by bench/harness.py (bench/run): the floor, and LiteLLM (installed by bench/run only).
    "llmrpc-direct": ("llm-rpc's client, llm_rpc.providers._client.new_client()", ("asyncio", "trio")),
    "litellm-router": ("LiteLLM Router acompletion", ("asyncio",)),
}
DEFAULT_CLIENTS = (
    "httpx",
    "httpx2-default",
    "httpx2-llmrpc-pool",
    "httpx2-llmrpc",
    "httpx-aiohttp",
    "httpx2-aiohttp",
    "aiohttp",
)
IN_FLIGHT = (1, 64, 256)
LATENCIES_MS = (0, 200)
TARGET = 0.85  # of the ideal (in flight / latency) at 64 in flight and 200 ms


# --------------------------------------------------------------------------------------------
# The worker: one client, one cell, in bench/.venv. Prints a "window" line when it starts
# measuring and one JSON result line at the end.
# --------------------------------------------------------------------------------------------

Call = Callable[[], Awaitable[None]]


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _load_new_client() -> Any:
    """``llm_rpc.providers._client.new_client`` from this checkout (its asyncio transport,
    ``_aiohttp.py``, is imported from the package), so the run measures the settings the providers
    ship with. Needs llm-rpc's own imports (msgspec) in bench/.venv."""
    sys.path.insert(0, str(ROOT))
    return importlib.import_module("llm_rpc.providers._client").new_client


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("httpx", "httpcore", "httpx2", "httpcore2", "httpx-aiohttp", "aiohttp", "anyio", "trio", "uvloop"):
        with suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


async def _make_client(client: str, base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """``(call, close)`` for one client; ``call`` POSTs BODY and reads the whole response body."""
    if client == "llmrpc-direct":
        return _llmrpc_direct(base_url)
    if client == "litellm-router":
        return _litellm_router(base_url)
    if client in set(CLIENTS) - {"aiohttp"}:
        # httpx 0.28 lives only in the bench venv (bench/requirements.txt), not in the package's.
        http: Any = importlib.import_module("httpx2" if client.startswith("httpx2") else "httpx")
        if client.startswith("httpx2-llmrpc"):
            use_aiohttp = client != "httpx2-llmrpc-pool"
            c = _load_new_client()(base_url=base_url, timeout=TIMEOUT, use_aiohttp=use_aiohttp)
        elif client.endswith("-default"):
            c = http.AsyncClient(base_url=base_url, timeout=TIMEOUT, trust_env=False)
        else:
            limits = http.Limits(max_connections=WIDE, max_keepalive_connections=WIDE, keepalive_expiry=30.0)
            transport: Any = None
            if client == "httpx2-sharded":
                transport = _sharded_transport(SHARDS, WIDE // SHARDS)
            elif client.endswith("aiohttp"):
                # Imported by name: httpx-aiohttp is in bench/.venv only, never in the package's venv.
                module = "httpx_aiohttp.httpx2" if client.startswith("httpx2") else "httpx_aiohttp"
                transport = importlib.import_module(module).AiohttpTransport(limits=limits, trust_env=False)
            c = http.AsyncClient(
                base_url=base_url, timeout=TIMEOUT, limits=limits, transport=transport, trust_env=False
            )

        async def call() -> None:
            response = await c.post(PATH, content=BODY, headers=HEADERS)
            if response.status_code != 200 or not response.content:
                raise RuntimeError(f"status {response.status_code}")

        return call, c.aclose

    if client == "aiohttp":
        aiohttp: Any = importlib.import_module("aiohttp")  # bench/.venv only
        session = aiohttp.ClientSession(
            base_url=base_url,
            connector=aiohttp.TCPConnector(limit=WIDE, keepalive_timeout=30.0),
            timeout=aiohttp.ClientTimeout(total=TIMEOUT),
        )

        async def acall() -> None:
            async with session.post(PATH, data=BODY, headers=HEADERS) as response:
                data = await response.read()
                if response.status != 200 or not data:
                    raise RuntimeError(f"status {response.status}")

        return acall, session.close

    if client == "raw":
        return await _raw_client(base_url)
    raise SystemExit(f"unknown client {client!r}")


SHARDS = int(os.environ.get("BENCH_SHARDS", "8"))


def _llmrpc_direct(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The floor: the client the providers use, built and called the way ``HttpBackend`` does
    (``new_client`` from the installed package, ``post_bytes`` of the encoded body to the URL joined
    once, status checked), and the answer parsed as JSON, which llm-rpc must do too."""
    from llm_rpc.providers._client import new_client  # the package is installed editable in bench/.venv

    c = new_client(base_url=base_url + "/v1", headers={"content-type": "application/json"}, timeout=TIMEOUT)
    auth = {"authorization": HEADERS["authorization"]}
    url = c.build_request("POST", "/chat/completions").url

    async def call() -> None:
        response = await c.post_bytes(url, BODY, auth)
        if not response.is_success:
            raise RuntimeError(f"status {response.status_code}")
        json.loads(response.content)

    return call, c.aclose


def _litellm_router(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """LiteLLM's ``Router.acompletion`` at the same upstream (``openai/`` provider, a dummy key). The
    environment (set by bench/harness.py) keeps it on loopback: local cost map, offline mode, no
    telemetry."""
    litellm: Any = importlib.import_module("litellm")  # bench/.venv only, installed by bench/run
    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": "bench-model",
                "litellm_params": {
                    "model": "openai/bench-model",
                    "api_base": base_url + "/v1",
                    "api_key": "sk-bench-not-a-key",
                },
            }
        ]
    )
    messages = [{"role": "user", "content": "Hello"}]

    async def call() -> None:
        response = await router.acompletion(model="bench-model", messages=messages, max_tokens=16)
        if not response.choices:
            raise RuntimeError("no choices")

    async def close() -> None:
        return None

    return call, close


def _sharded_transport(shards: int, per_shard: int) -> Any:
    """httpx2's own transport, ``shards`` times, taken in turn: httpcore2's pool does work linear in
    its connections on every request, so several small pools cost less per call than one big one."""
    import httpx2

    class Sharded(httpx2.AsyncBaseTransport):
        def __init__(self) -> None:
            limits = httpx2.Limits(
                max_connections=per_shard, max_keepalive_connections=per_shard, keepalive_expiry=30.0
            )
            self._pools = [httpx2.AsyncHTTPTransport(limits=limits, trust_env=False) for _ in range(shards)]
            self._next = 0

        async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
            pool = self._pools[self._next]
            self._next = (self._next + 1) % len(self._pools)
            return await pool.handle_async_request(request)

        async def aclose(self) -> None:
            for pool in self._pools:
                await pool.aclose()

    return Sharded()


async def _raw_client(base_url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """A minimal keep-alive HTTP/1.1 client (asyncio only): one connection per slot, Content-Length
    responses. Cheaper than any real client, so it finds the upstream's own limit."""
    import asyncio

    host, port = base_url.removeprefix("http://").split(":")
    request = (
        f"POST {PATH} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY

    class Conn(asyncio.Protocol):
        def __init__(self) -> None:
            self.buf = bytearray()
            self.waiter: asyncio.Future[None] | None = None
            self.transport: Any = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            at = self.buf.find(b"content-length: ")
            length = int(self.buf[at + 16 : self.buf.find(b"\r\n", at)])
            if len(self.buf) >= end + 4 + length:
                del self.buf[: end + 4 + length]
                if self.waiter is not None and not self.waiter.done():
                    self.waiter.set_result(None)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_exception(ConnectionError("closed"))

    loop = asyncio.get_running_loop()
    idle: list[Conn] = []
    conns: list[Conn] = []

    async def call() -> None:
        if idle:
            conn = idle.pop()
        else:
            _, conn = await loop.create_connection(Conn, host, int(port))
            conns.append(conn)
        conn.waiter = loop.create_future()
        conn.transport.write(request)
        await conn.waiter
        idle.append(conn)

    async def close() -> None:
        for conn in conns:
            conn.transport.close()

    return call, close


async def _measure(
    client: str, base_url: str, in_flight: int, latency: float, warmup: float, duration: float
) -> dict[str, Any]:
    import anyio

    call, close = await _make_client(client, base_url)
    latencies: list[float] = []
    window = [float("inf"), float("inf")]
    errors: list[str] = []

    async def slot(index: int) -> None:
        # Spread the first calls over one latency period, so that completions arrive evenly
        # instead of in bursts every ``latency`` seconds (which would make the count depend on
        # where the window falls).
        if latency > 0 and in_flight > 1:
            await anyio.sleep(latency * index / in_flight)
        while True:
            started = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                if len(errors) < 1000:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                await anyio.sleep(0.01)
                continue
            now = time.perf_counter()
            if window[0] <= now < window[1]:
                latencies.append(now - started)

    async with anyio.create_task_group() as tg:
        for i in range(in_flight):
            tg.start_soon(slot, i)
        await anyio.sleep(warmup)
        errors.clear()
        cpu0 = time.process_time()
        window[0] = time.perf_counter()
        sys.stdout.write('{"event":"window"}\n')
        sys.stdout.flush()
        await anyio.sleep(duration)
        window[1] = time.perf_counter()
        cpu1 = time.process_time()
        count = len(latencies)
        sys.stdout.write('{"event":"window-end"}\n')
        sys.stdout.flush()
        tg.cancel_scope.cancel()
    with anyio.move_on_after(2):  # after the window: not measured, only tidy
        await close()
    seconds = window[1] - window[0]
    ordered = sorted(latencies[:count])
    return {
        "requests": count,
        "seconds": round(seconds, 3),
        "rps": count / seconds,
        "p50_ms": statistics.median(ordered) * 1000 if ordered else float("nan"),
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "cpu_us_per_call": (cpu1 - cpu0) / count * 1e6 if count else float("nan"),
        "cpu_share": (cpu1 - cpu0) / seconds,
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def _loopback_only() -> None:
    """Refuse (and report on stderr) any connection or name lookup that is not loopback, from this
    process: the clients measured here, LiteLLM above all, must not reach anywhere else."""
    import ipaddress

    def loopback(host: object) -> bool:
        if host is None or host == "localhost":
            return True
        if isinstance(host, bytes):
            host = host.decode(errors="replace")
        try:
            return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
        except ValueError:
            return False

    def hook(event: str, args: tuple[Any, ...]) -> None:
        host: object = None
        if event == "socket.getaddrinfo":
            host = args[0]
        elif event == "socket.connect" and isinstance(args[1], tuple):
            host = args[1][0]
        else:
            return
        if not loopback(host):
            sys.stderr.write(f"bench: refused a non-loopback {event} to {host!r}\n")
            raise PermissionError(f"bench: {event} to {host!r} refused: loopback only")

    sys.addaudithook(hook)


def worker(args: argparse.Namespace) -> None:
    import anyio

    _loopback_only()

    options: dict[str, Any] = {"use_uvloop": True} if args.uvloop else {}
    result = anyio.run(
        _measure,
        args.client,
        f"http://127.0.0.1:{args.port}",
        args.in_flight,
        args.latency_ms / 1000,
        args.warmup,
        args.duration,
        backend=args.backend,
        backend_options=options,
    )
    result["versions"] = _versions()
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------------------------
# The driver: venv, upstreams, interleaved rounds, medians, JSON and markdown.
# --------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (0.0 where /proc is missing)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def upstream(latency_ms: float, loop: str = "auto", max_seconds: float = 1800) -> Iterator[tuple[int, int]]:
    """Start bench/upstream.py in its own process; yields ``(port, pid)``."""
    python = str(VENV_PY if VENV_PY.exists() else sys.executable)
    argv = [python, str(BENCH / "upstream.py"), "--port", "0", "--latency-ms", str(latency_ms)]
    argv += ["--loop", loop, "--max-seconds", str(max_seconds)]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the upstream exited before listening")
        event = json.loads(line)
        assert event["event"] == "listening"
        yield int(event["port"]), proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def run_cell(
    client: str,
    backend: str,
    port: int,
    upstream_pid: int,
    in_flight: int,
    latency_ms: float,
    duration: float,
    uvloop: bool = False,
) -> dict[str, Any]:
    warmup = 0.4 + (2 if in_flight > 1 else 1) * latency_ms / 1000
    if in_flight == 1 and latency_ms:
        duration = min(duration, 1.0)  # 1 in flight at 200 ms is 5 req/s whatever the client: keep it short
    # As a module, from the checkout: run as a script, bench/http.py would shadow the standard library's http.
    argv = [str(VENV_PY), "-m", "bench.http_clients", "worker", "--client", client, "--backend", backend]
    argv += ["--port", str(port), "--in-flight", str(in_flight), "--latency-ms", str(latency_ms)]
    argv += ["--warmup", str(warmup), "--duration", str(duration)]
    if uvloop:
        argv.append("--uvloop")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    up0 = up1 = 0.0
    t0 = t1 = 0.0
    result: dict[str, Any] | None = None
    deadline = time.monotonic() + warmup + duration + 60
    try:
        for line in proc.stdout:
            event = json.loads(line)
            if event.get("event") == "window":
                up0, t0 = _cpu_seconds(upstream_pid), time.perf_counter()
            elif event.get("event") == "window-end":
                up1, t1 = _cpu_seconds(upstream_pid), time.perf_counter()
            else:
                result = event
            if time.monotonic() > deadline:
                break
        proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if result is None:
        raise RuntimeError(f"worker {client}/{backend} gave no result (exit {proc.returncode})")
    result["upstream_cpu_share"] = (up1 - up0) / (t1 - t0) if t1 > t0 else float("nan")
    return result


def _median(cells: list[dict[str, Any]], key: str) -> float:
    values = [c[key] for c in cells if c[key] == c[key]]  # drop NaN
    return statistics.median(values) if values else float("nan")


def _loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def bench(
    clients: list[str], in_flights: list[int], latencies_ms: list[float], rounds: int, durations: dict[float, float]
) -> dict[str, Any]:
    combos = [(c, b) for c in clients for b in CLIENTS[c][1]]
    samples: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
    versions: dict[str, str] = {}
    started = time.perf_counter()
    load_before = _loadavg()
    with upstream(0.0) as (port0, pid0), upstream(200.0) as (port200, pid200):
        ports = {0.0: (port0, pid0), 200.0: (port200, pid200)}
        for round_index in range(rounds):
            order = combos if round_index % 2 == 0 else combos[::-1]
            for latency in latencies_ms:
                if latency not in ports:
                    raise SystemExit("--latency-ms takes 0 and/or 200")
                port, pid = ports[latency]
                for in_flight in in_flights:
                    for client, backend in order:
                        uvloop = client.endswith("-uvloop")
                        cell = run_cell(client, backend, port, pid, in_flight, latency, durations[latency], uvloop)
                        versions = cell.pop("versions", versions)
                        samples.setdefault((client, backend, in_flight, latency), []).append(cell)
                        print(
                            f"  round {round_index + 1}: {client:15} {backend:8} {in_flight:4} in flight "
                            f"{latency:3.0f} ms: {cell['rps']:8.1f} req/s  p99 {cell['p99_ms']:8.1f} ms  "
                            f"upstream cpu {cell['upstream_cpu_share']:.0%}",
                            file=sys.stderr,
                        )
    rows = []
    for (client, backend, in_flight, latency), cells in samples.items():
        ideal = in_flight / (latency / 1000) if latency else None
        rps = _median(cells, "rps")
        rows.append(
            {
                "client": client,
                "label": CLIENTS[client][0],
                "backend": backend,
                "in_flight": in_flight,
                "latency_ms": latency,
                "rps": round(rps, 1),
                "ideal_rps": ideal,
                "of_ideal": round(rps / ideal, 3) if ideal else None,
                "p50_ms": round(_median(cells, "p50_ms"), 3),
                "p99_ms": round(_median(cells, "p99_ms"), 3),
                "cpu_us_per_call": round(_median(cells, "cpu_us_per_call"), 1),
                "client_cpu_share": round(_median(cells, "cpu_share"), 3),
                "upstream_cpu_share": round(_median(cells, "upstream_cpu_share"), 3),
                "errors": sum(c["errors"] for c in cells),
                "rounds": [round(c["rps"], 1) for c in cells],
            }
        )
    return {
        "rows": rows,
        "versions": versions,
        "seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": load_before,
        "loadavg_after": _loadavg(),
    }


def capacity(duration: float = 2.0) -> list[dict[str, Any]]:
    """The upstream's own limit: the raw client on uvloop against the upstream on each loop."""
    out = []
    for loop in ("uvloop", "asyncio"):
        for latency, in_flight in ((0.0, 64), (200.0, 256)):
            with upstream(latency, loop=loop, max_seconds=120) as (port, pid):
                cell = run_cell("raw", "asyncio", port, pid, in_flight, latency, duration, uvloop=True)
            out.append(
                {
                    "upstream_loop": loop,
                    "latency_ms": latency,
                    "in_flight": in_flight,
                    "rps": round(cell["rps"], 1),
                    "p99_ms": round(cell["p99_ms"], 3),
                    "upstream_cpu_share": round(cell["upstream_cpu_share"], 3),
                }
            )
            print(f"  capacity: {out[-1]}", file=sys.stderr)
    return out


def _rps_cell(row: dict[str, Any] | None) -> str:
    if row is None:
        return "-"
    text = f"{row['rps']:,.0f}"
    if row["of_ideal"] is not None:
        text += f" ({row['of_ideal']:.0%})"
    if row["upstream_cpu_share"] > 0.9:
        text += " †"
    return text


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    by_key = {(r["client"], r["backend"], r["in_flight"], r["latency_ms"]): r for r in rows}
    settings = sorted({(r["latency_ms"], r["in_flight"]) for r in rows})
    combos = list(dict.fromkeys((r["client"], r["backend"]) for r in rows))
    head = "| client | loop | " + " | ".join(f"{lat:.0f} ms, {n} in flight" for lat, n in settings) + " |"
    lines = [
        "Throughput, req/s (share of the ideal in-flight / latency):",
        "",
        head,
        "|" + "---|" * (2 + len(settings)),
    ]
    for client, backend in combos:
        cells = [_rps_cell(by_key.get((client, backend, n, lat))) for lat, n in settings]
        lines.append(f"| {CLIENTS[client][0]} | {backend} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Latency and CPU (client process CPU time per call; upstream CPU as a share of one core):",
        "",
        "| client | loop | latency | in flight | req/s | p50 ms | p99 ms | CPU µs/call | upstream CPU | errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for client, backend in combos:
        for lat, n in settings:
            r = by_key.get((client, backend, n, lat))
            if r is None:
                continue
            lines.append(
                f"| {CLIENTS[client][0]} | {backend} | {lat:.0f} ms | {n} | {r['rps']:,.0f} | {r['p50_ms']:.2f} | "
                f"{r['p99_ms']:.1f} | {r['cpu_us_per_call']:,.0f} | {r['upstream_cpu_share']:.0%} | {r['errors']} |"
            )
    verdict = [r for r in rows if r["in_flight"] == 64 and r["latency_ms"] == 200]
    if verdict:
        lines += ["", f"Target: >= {TARGET:.0%} of the ideal (320 req/s) at 64 in flight and 200 ms:", ""]
        for r in verdict:
            mark = "meets" if r["of_ideal"] >= TARGET else "misses"
            lines.append(f"- {r['label']}, {r['backend']}: {r['rps']:,.0f} req/s = {r['of_ideal']:.0%} ({mark})")
    if results.get("capacity"):
        lines += [
            "",
            "Upstream capacity (raw keep-alive client on uvloop):",
            "",
            "| upstream loop | latency | in flight | req/s | upstream CPU |",
            "|---|---|---|---|---|",
        ]
        for c in results["capacity"]:
            lines.append(
                f"| {c['upstream_loop']} | {c['latency_ms']:.0f} ms | {c['in_flight']} | {c['rps']:,.0f} | "
                f"{c['upstream_cpu_share']:.0%} |"
            )
    lines += [
        "",
        f"Every client has a pool of {WIDE} connections, all kept alive, except the default-Limits rows. "
        "† the upstream used over 90% of a core in that cell. Medians of "
        f"{results.get('rounds', '?')} interleaved rounds; {results.get('seconds', '?')} s; load average "
        f"before/after {results.get('loadavg_before')} / {results.get('loadavg_after')}; {os.cpu_count()} cores, "
        "shared with other work.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="HTTP client benchmark (issue 3, issue 9)")
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="one cell, in bench/.venv (internal)")
    w.add_argument("--client", required=True)
    w.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--in-flight", type=int, required=True)
    w.add_argument("--latency-ms", type=float, default=0.0)
    w.add_argument("--warmup", type=float, default=0.5)
    w.add_argument("--duration", type=float, default=2.0)
    w.add_argument("--uvloop", action="store_true")
    sub.add_parser("capacity", help="the upstream's own limit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per cell at 0 ms (200 ms: +0.6)")
    parser.add_argument(
        "--clients", default=",".join(DEFAULT_CLIENTS), help="comma-separated, of: " + ",".join(CLIENTS)
    )
    parser.add_argument("--in-flight", default=",".join(map(str, IN_FLIGHT)))
    parser.add_argument("--latency-ms", default=",".join(map(str, LATENCIES_MS)), help="0 and/or 200")
    parser.add_argument("--no-capacity", action="store_true", help="skip the upstream capacity check")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.command == "worker":
        worker(args)
        return
    from bench.harness import ensure_venv  # one venv, one installer: bench/run's

    ensure_venv()
    if args.command == "capacity":
        print(markdown({"rows": [], "capacity": capacity()}))
        return
    clients = [c for c in args.clients.split(",") if c]
    unknown = sorted(set(clients) - set(CLIENTS))
    if unknown:
        raise SystemExit(f"unknown clients: {unknown}; known: {list(CLIENTS)}")
    latencies = [float(x) for x in args.latency_ms.split(",")]
    durations = {lat: args.duration + (0.6 if lat else 0.0) for lat in latencies}
    results = bench(clients, [int(x) for x in args.in_flight.split(",")], latencies, args.rounds, durations)
    results["rounds"] = args.rounds
    results["command"] = " ".join(["python bench/http_clients.py", *(argv if argv is not None else sys.argv[1:])])
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "shared": True}
    if not args.no_capacity:
        results["capacity"] = capacity()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(args.output)
    print(markdown(results))


if __name__ == "__main__":
    main()
