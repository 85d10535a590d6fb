"""Does ``overhead_us`` agree with a clock outside llm-rpc? (issue 9, item 3)

One calling process, one call at a time, against ``bench/upstream.py`` (no latency), interleaved call
by call so that every path sees the same machine at the same moment:

* **direct**: the chat request POSTed with the HTTP client llm-rpc uses (``new_client``), the floor;
* **in-process**: ``await router.execute(...)`` on a ``Router`` in the calling process;
* **tcp**: ``execute`` over TCP to an ``llm-rpc serve --tcp`` process;
* **echo**: the same request to ``bench/echo_server.py --mode task --transport tcp``, a bare anyio +
  msgspec JSON-RPC echo: what one round trip over a TCP connection to a Python server costs.

The outside clock's view of llm-rpc's own time: in-process, p50(in-process) - p50(direct); over
TCP, p50(tcp) - p50(direct) - p50(echo), i.e. without the extra hop that any server on the other
end of a socket costs (the kernel, two wake-ups, the caller's own encode and decode), which
``overhead_us`` does not cover (it runs from the read of the request to the reply handed to the
writer; contracts/execute.md). The agreement is the median ``overhead_us`` over that figure
(target: within 20%, 0.8-1.2). Medians per round, then the median over rounds::

    .venv/bin/python -m bench.overhead            # 5 rounds of 400 calls per path, about a minute
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
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from bench import wire_clock
from bench.http_clients import upstream

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable
KEY_ENV = "LLM_RPC_BENCH_KEY"
KEY = "bench-not-a-real-key-0000"
MODEL = "bench-model"
EXECUTE = b'{"jsonrpc":"2.0","id":%d,"method":"execute","params":{"prompt":"Hello","model":"bench-model"}}\n'
MOCK = b'{"jsonrpc":"2.0","id":%d,"method":"execute","params":{"prompt":"Hello","model":"mock"}}\n'
ECHO = b'{"jsonrpc":"2.0","id":%d,"method":"echo","params":{"prompt":"Hello","model":"bench-model"}}\n'
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello"}]}).encode()

_reply = msgspec.json.Decoder(dict[str, Any])


def _config(port: int, directory: Path) -> Path:
    path = directory / "overhead.toml"
    path.write_text(
        f"""
[router]
retries = 0

[[backends]]
name = "upstream"
provider = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"
api_key_env = "{KEY_ENV}"
models = ["{MODEL}"]
"""
    )
    return path


def _start(argv: list[str], env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError(f"{argv[1:3]} exited before listening")
        if b'"listening"' in line:
            return proc, int(json.loads(line)["port"])


class _Line:
    """One NDJSON connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, template: bytes) -> None:
        self.reader = reader
        self.writer = writer
        self.template = template
        self.next_id = 0

    async def call(self) -> tuple[float, dict[str, Any]]:
        self.next_id += 1
        started = time.perf_counter()
        self.writer.write(self.template % self.next_id)
        line = await self.reader.readline()
        elapsed = time.perf_counter() - started
        return elapsed, _reply.decode(line)


async def _measure(ports: dict[str, int], config: Path, calls: int, rounds: int) -> dict[str, Any]:
    from llm_rpc.core.router import Router
    from llm_rpc.providers._client import new_client

    client = new_client(
        base_url=f"http://127.0.0.1:{ports['upstream']}/v1", headers={"content-type": "application/json"}
    )
    router = Router.from_config(config)

    async def line(port: str, template: bytes) -> _Line:
        return _Line(*await asyncio.open_connection("127.0.0.1", ports[port], limit=1 << 24), template)

    gateway = await line("gateway", EXECUTE)
    echo = await line("echo_task", ECHO)
    mock = await line("mock", MOCK)
    echo_inline = await line("echo_inline", ECHO)

    auth = {"authorization": f"Bearer {KEY}"}
    url = client.build_request("POST", "/chat/completions").url

    async def direct() -> float:
        # The same exchange as llm-rpc's: its URL joined once (as HttpBackend does), its auth header,
        # the whole body read; not decoded, since decoding the answer is part of llm-rpc's own time.
        started = time.perf_counter()
        await client.post_bytes(url, CHAT, auth)
        return time.perf_counter() - started

    async def in_process() -> tuple[float, float]:
        started = time.perf_counter()
        result = await router.execute(prompt="Hello", model=MODEL)
        elapsed = time.perf_counter() - started
        assert result.overhead_us is not None
        return elapsed, result.overhead_us

    async def tcp() -> tuple[float, float]:
        elapsed, reply = await gateway.call()
        return elapsed, float(reply["result"]["overhead_us"])

    async def floor() -> float:
        elapsed, _ = await echo.call()
        return elapsed

    async def on_mock() -> tuple[float, float]:
        elapsed, reply = await mock.call()
        return elapsed, float(reply["result"]["overhead_us"])

    # Warm up every path (connection pools, first-call set-up, caches).
    for _ in range(200):
        await direct()
        await in_process()
        await tcp()
        await floor()
        await on_mock()
        await echo_inline.call()
    per_round = []
    for _ in range(rounds):
        times: dict[str, list[float]] = {"direct": [], "in_process": [], "tcp": [], "echo": []}
        reported: dict[str, list[float]] = {"in_process": [], "tcp": []}
        # Two phases, each pairing its paths call by call (the order alternating), so that the paths
        # compared see the machine in the same state: the shared machine's noise is larger than the
        # figure measured.
        for i in range(calls):
            for which in ("direct", "in_process") if i % 2 else ("in_process", "direct"):
                if which == "direct":
                    times["direct"].append(await direct())
                else:
                    elapsed, overhead = await in_process()
                    times["in_process"].append(elapsed)
                    reported["in_process"].append(overhead)
        direct_tcp: list[float] = []
        for i in range(calls):
            for step in range(3):
                turn = (i + step) % 3
                if turn == 0:
                    direct_tcp.append(await direct())
                elif turn == 1:
                    elapsed, overhead = await tcp()
                    times["tcp"].append(elapsed)
                    reported["tcp"].append(overhead)
                else:
                    times["echo"].append(await floor())
        # The mock, answered inline, against the echo answered inline: two servers of the same shape
        # (no third process), so the hop is the same on both sides and cancels.
        times["mock"], times["echo_inline"], reported["mock"] = [], [], []
        for i in range(calls):
            for which in ("mock", "echo") if i % 2 else ("echo", "mock"):
                if which == "mock":
                    elapsed, overhead = await on_mock()
                    times["mock"].append(elapsed)
                    reported["mock"].append(overhead)
                else:
                    times["echo_inline"].append((await echo_inline.call())[0])
        times["direct_tcp"] = direct_tcp
        p50 = {name: statistics.median(values) * 1e6 for name, values in times.items()}
        # The lower quartile too: the scheduling noise of a shared machine is one-sided (it only adds).
        p25 = {name: _quantile(values, 0.25) * 1e6 for name, values in times.items()}
        per_round.append(
            {
                "p50_us": p50,
                "overhead_us_p50": {name: statistics.median(values) for name, values in reported.items()},
                "outside_in_process_us": p50["in_process"] - p50["direct"],
                "outside_tcp_us": p50["tcp"] - p50["direct_tcp"] - p50["echo"],
                "outside_tcp_raw_us": p50["tcp"] - p50["direct_tcp"],
                "outside_mock_us": p50["mock"] - p50["echo_inline"],
                "p25_us": p25,
                "overhead_us_p25": {name: _quantile(values, 0.25) for name, values in reported.items()},
                "outside_p25_in_process_us": p25["in_process"] - p25["direct"],
                "outside_p25_tcp_us": p25["tcp"] - p25["direct_tcp"] - p25["echo"],
                "outside_p25_mock_us": p25["mock"] - p25["echo_inline"],
            }
        )

    async def echo_inline_call() -> float:
        return (await echo_inline.call())[0]

    # Its rounds are short (a second each) and one noisy round moves a median of three: at least five.
    wire = None
    if wire_clock.available():
        wire = await _wire(ports, on_mock, echo_inline_call, max(calls, 1000), max(rounds, 5))
    for connection in (gateway, echo, mock, echo_inline):
        connection.writer.close()
    await router.aclose()
    await client.aclose()
    summary = _summary(per_round, calls)
    summary["wire"] = wire or {"skipped": "no raw socket on lo here (needs root or CAP_NET_RAW)"}
    return summary


async def _wire(
    ports: dict[str, int],
    on_mock: Callable[[], Awaitable[tuple[float, float]]],
    echo_inline: Callable[[], Awaitable[float]],
    calls: int,
    rounds: int,
) -> dict[str, Any]:
    """overhead_us on the mock against the loopback wire's timestamps (bench/wire_clock.py).

    The mock and the bare echo (both answer inside the read loop) are called alternately under one
    capture, one call at a time. Each one's wire span runs from its request's packet to its reply's;
    the echo's is what the hop costs on the server's side alone (the wake-up, the read, the write,
    a trivial decode and encode), so the mock's span less the echo's is llm-rpc's own time as the
    wire sees it. Medians per round, then over rounds."""
    rows = []
    for _ in range(rounds):
        reported: list[float] = []
        with wire_clock.Capture(frozenset((ports["mock"], ports["echo_inline"]))) as capture:
            await asyncio.sleep(0.05)
            for i in range(calls):
                for which in ("mock", "echo") if i % 2 else ("echo", "mock"):
                    if which == "mock":
                        reported.append((await on_mock())[1])
                    else:
                        await echo_inline()
            await asyncio.sleep(0.05)
        mock = wire_clock.server_spans_us(capture.packets, ports["mock"])
        echo = wire_clock.server_spans_us(capture.packets, ports["echo_inline"])
        if len(mock) != calls or len(echo) != calls:
            return {"error": f"{len(mock)} and {len(echo)} calls seen on the wire for {calls} made each"}
        row = {
            "overhead_us_p50": statistics.median(reported),
            "mock_wire_us_p50": statistics.median(mock),
            "echo_wire_us_p50": statistics.median(echo),
            "mock_wire_us_p25": _quantile(mock, 0.25),
            "echo_wire_us_p25": _quantile(echo, 0.25),
        }
        row["outside_us"] = row["mock_wire_us_p50"] - row["echo_wire_us_p50"]
        row["outside_p25_us"] = row["mock_wire_us_p25"] - row["echo_wire_us_p25"]
        rows.append(row)
    out: dict[str, Any] = {"calls_per_round": calls, "rounds": rounds}
    for key in rows[0]:
        out[key] = round(statistics.median(row[key] for row in rows), 1)
    ratios = [row["overhead_us_p50"] / row["outside_us"] for row in rows if row["outside_us"] > 0]
    out["agreement"] = round(statistics.median(ratios), 3) if ratios else None
    out["per_round"] = [{k: round(v, 1) for k, v in row.items()} for row in rows]
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _median(rows: list[dict[str, Any]], *path: str) -> float:
    values = []
    for row in rows:
        value: Any = row
        for key in path:
            value = value[key]
        values.append(value)
    return round(float(statistics.median(values)), 1)


def _summary(rows: list[dict[str, Any]], calls: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "rounds": len(rows),
        "calls_per_round_per_path": calls,
        "p50_us": {
            name: _median(rows, "p50_us", name)
            for name in ("direct", "in_process", "direct_tcp", "tcp", "echo", "mock", "echo_inline")
        },
        "in_process": {
            "overhead_us_p50": _median(rows, "overhead_us_p50", "in_process"),
            "outside_us": _median(rows, "outside_in_process_us"),
        },
        "tcp": {
            "overhead_us_p50": _median(rows, "overhead_us_p50", "tcp"),
            "outside_us": _median(rows, "outside_tcp_us"),
            "outside_with_hop_us": _median(rows, "outside_tcp_raw_us"),
        },
        "mock": {
            "overhead_us_p50": _median(rows, "overhead_us_p50", "mock"),
            "outside_us": _median(rows, "outside_mock_us"),
        },
        "per_round": rows,
    }
    for path in ("in_process", "tcp", "mock"):
        cell = out[path]
        # The agreement of each round, then their median (the machine is shared: rounds differ).
        ratios = [
            row["overhead_us_p50"][path] / row[f"outside_{path}_us"] for row in rows if row[f"outside_{path}_us"] > 0
        ]
        cell["agreement"] = round(statistics.median(ratios), 3) if ratios else None
        ratios = [
            row["overhead_us_p25"][path] / row[f"outside_p25_{path}_us"]
            for row in rows
            if row[f"outside_p25_{path}_us"] > 0
        ]
        cell["overhead_us_p25"] = _median(rows, "overhead_us_p25", path)
        cell["outside_p25_us"] = _median(rows, f"outside_p25_{path}_us")
        cell["agreement_p25"] = round(statistics.median(ratios), 3) if ratios else None
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description="overhead_us against an outside clock")
    parser.add_argument("--calls", type=int, default=400, help="calls per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    args = parser.parse_args(argv)
    import tempfile

    os.environ[KEY_ENV] = KEY
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_RPC_") or k == KEY_ENV}
    with tempfile.TemporaryDirectory() as tmp, upstream(0.0) as (up_port, _pid):
        config = _config(up_port, Path(tmp))
        serve = [PY, "-m", "llm_rpc", "serve", "--tcp", "127.0.0.1:0"]
        echo = [PY, str(ROOT / "bench" / "echo_server.py"), "--transport", "tcp", "--mode"]
        procs: list[subprocess.Popen[bytes]] = []
        ports = {"upstream": up_port}
        try:
            for name, command in (
                ("gateway", [*serve, "--config", str(config)]),
                ("mock", serve),
                ("echo_task", [*echo, "task"]),
                ("echo_inline", [*echo, "inline"]),
            ):
                proc, ports[name] = _start(command, env)
                procs.append(proc)
            result = asyncio.run(_measure(ports, config, args.calls, args.rounds))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(30)
    result["measured_at"] = time.strftime("%Y-%m-%d %H:%M")
    args.output.parent.mkdir(exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    return result


def _p25(cell: dict[str, Any]) -> str:
    return f"{cell['overhead_us_p25']:.1f} / {cell['outside_p25_us']:.1f} = {cell['agreement_p25']}"


def markdown(result: dict[str, Any]) -> str:
    p50 = result["p50_us"]
    ip, tcp, mock = result["in_process"], result["tcp"], result["mock"]
    return "\n".join(
        [
            "| path | p50 µs | outside clock: llm-rpc's time µs | median overhead_us | agreement "
            "| the same at the lower quartile |",
            "|---|---|---|---|---|---|",
            f"| direct client (floor), paired with in-process | {p50['direct']:.0f} | - | - | - | - |",
            f"| direct client (floor), paired with TCP | {p50['direct_tcp']:.0f} | - | - | - | - |",
            f"| echo over TCP (the hop) | {p50['echo']:.0f} | - | - | - | - |",
            f"| llm-rpc in-process | {p50['in_process']:.0f} | {ip['outside_us']:.1f} | {ip['overhead_us_p50']:.1f} "
            f"| {ip['agreement']} | {_p25(ip)} |",
            f"| llm-rpc over TCP | {p50['tcp']:.0f} | {tcp['outside_us']:.1f} (with the hop: "
            f"{tcp['outside_with_hop_us']:.1f}) | {tcp['overhead_us_p50']:.1f} | {tcp['agreement']} | {_p25(tcp)} |",
            f"| echo over TCP, answered inline | {p50['echo_inline']:.0f} | - | - | - | - |",
            f"| llm-rpc over TCP, the mock (inline) | {p50['mock']:.0f} | {mock['outside_us']:.1f} "
            f"| {mock['overhead_us_p50']:.1f} | {mock['agreement']} | {_p25(mock)} |",
        ]
    )


if __name__ == "__main__":
    main()
