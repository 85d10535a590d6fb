"""Concurrency (issue 7): ``execute_batch`` of 100 against a 200 ms upstream beside one call, and
10,000 requests in flight on one TCP connection against a 1 s upstream (all complete; peak RSS).

Both run ``llm-rpc serve --tcp`` with one ``openai-compatible`` backend at ``bench/upstream.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from bench.gateway import PY, _config
from bench.http_clients import upstream

ROOT = Path(__file__).resolve().parent.parent


def _serve(config: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    env = {**os.environ, "LLM_RPC_BENCH_KEY": "bench-not-a-real-key-0000", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [PY, "-m", "llm_rpc", "serve", "--tcp", "127.0.0.1:0", "--config", str(config), *extra],
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stderr is not None
    while True:
        line = proc.stderr.readline()
        if not line:
            raise RuntimeError("the server exited before listening")
        if b'"listening"' in line:
            return proc, int(json.loads(line)["port"])


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def _batch(port: int) -> dict[str, Any]:
    from llm_rpc.client import Client

    async with Client.connect_tcp("127.0.0.1", port) as client:
        await client.call("execute", {"prompt": "warm up", "model": "bench-model"})
        singles = []
        for _ in range(3):
            start = time.perf_counter()
            await client.call("execute", {"prompt": "one", "model": "bench-model"})
            singles.append((time.perf_counter() - start) * 1000)
        items = [{"prompt": f"item {i}", "model": "bench-model"} for i in range(100)]
        cold_start = time.perf_counter()
        await client.call("execute_batch", {"items": items, "concurrency": 100})
        cold_ms = (time.perf_counter() - cold_start) * 1000
        batches = []
        for _ in range(3):
            start = time.perf_counter()
            result = await client.call("execute_batch", {"items": items, "concurrency": 100})
            batches.append((time.perf_counter() - start) * 1000)
        batch_ms = sorted(batches)[1]
    single_ms = sorted(singles)[1]
    return {
        "single_ms": round(single_ms, 1),
        "batch_of_100_ms": round(batch_ms, 1),
        "first_batch_ms": round(cold_ms, 1),
        "ratio": round(batch_ms / single_ms, 3),
        "ok": result["summary"]["ok"],
    }


async def _flood(port: int, count: int) -> dict[str, Any]:
    stream = await anyio.connect_tcp("127.0.0.1", port)
    body = b"".join(
        b'{"jsonrpc":"2.0","id":%d,"method":"execute","params":{"prompt":"x","model":"bench-model"}}\n' % i
        for i in range(count)
    )
    start = time.perf_counter()
    buffer = b""
    seen = errors = 0
    async with stream, anyio.create_task_group() as tg:
        tg.start_soon(stream.send, body)
        with anyio.fail_after(120):
            while seen < count:
                buffer += await stream.receive(1 << 20)
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line:
                        seen += 1
                        errors += b'"error"' in line
    return {"requests": count, "completed": seen, "errors": errors, "seconds": round(time.perf_counter() - start, 2)}


def main() -> dict[str, Any]:
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with upstream(200.0) as (port, _pid):
            proc, server_port = _serve(_config(port, Path(tmp)))
            try:
                out["execute_batch"] = anyio.run(_batch, server_port)
            finally:
                proc.terminate()
                proc.wait(10)
        with upstream(1000.0) as (port, _pid):
            proc, server_port = _serve(_config(port, Path(tmp)), "--max-in-flight", "20000")
            try:
                flood = anyio.run(_flood, server_port, 10_000)
                flood["peak_rss_mb"] = round(_peak_rss_mb(proc.pid), 1)
                out["ten_thousand_in_flight"] = flood
            finally:
                proc.terminate()
                proc.wait(10)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "concurrency.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
