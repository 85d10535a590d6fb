"""Budget store throughput (issue 6): ``budget.spend`` and reserve-plus-settle operations per second.

Targets: memory over 100k/s in-process; SQLite over 2k/s; Redis over 5k/s across three processes.

Every operation is on a child chain (two levels: each one checks and updates the chain and its
parent), with totals large enough that nothing is refused. A reserve-plus-settle counts as one
operation (two store calls: what one budgeted ``execute`` costs).

* ``memory``: the ledger called synchronously, as the router's inline path does (``sync``), and the
  ``async`` store methods from concurrent tasks;
* ``sqlite``: the ``async`` store methods from 16 concurrent tasks (each operation one committed
  transaction on the store's worker thread);
* ``redis``: the ``async`` store methods from 32 concurrent tasks in one process, then three
  processes at once on the same chain (each 32 tasks), summed. A ``redis-server`` is started on a
  free loopback port unless ``--redis URL`` is given.

Run: ``.venv/bin/python -m bench.budgets [--seconds 3] [--backend trio] [--redis URL]``;
writes ``bench/results/budgets.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio

from llm_rpc.core.budgets import BudgetStore, MemoryBudgetStore, OpenSpec, open_store

RESULTS = Path(__file__).resolve().parent / "results" / "budgets.json"
BIG = 10**15  # tokens and nano-dollars: never refused


async def setup(store: BudgetStore, root: str) -> str:
    await store.open(OpenSpec(chain_id=root, total_tokens=BIG, total_usd=1e6))
    child = f"{root}/child"
    await store.open(OpenSpec(chain_id=child, parent_id=root))
    return child


def sync_rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls of ``fn`` per second, in batches of 1000 until ``seconds`` pass."""
    n = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(1000):
            fn()
        n += 1000
    return n / (time.perf_counter() - started)


async def async_rate(op: Callable[[], Awaitable[object]], seconds: float, tasks: int) -> tuple[int, float]:
    """Completed ``op`` calls and elapsed seconds, ``tasks`` at a time for ``seconds``."""
    done = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    async with anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(worker)
    return done, time.perf_counter() - started


def ops(store: BudgetStore, chain: str) -> dict[str, Callable[[], Awaitable[object]]]:
    async def spend() -> None:
        await store.spend(chain, 1, 1)

    async def pair() -> None:
        held = await store.reserve(chain, 100, 1000, 60.0)
        await store.settle(held.id, 50, 500)

    return {"spend": spend, "reserve_settle": pair}


async def bench_store(store: BudgetStore, seconds: float, tasks: int, root: str) -> dict[str, float]:
    chain = await setup(store, root)
    out: dict[str, float] = {}
    for name, op in ops(store, chain).items():
        n, elapsed = await async_rate(op, seconds, tasks)
        out[name] = round(n / elapsed)
    return out


async def bench_memory(seconds: float) -> dict[str, Any]:
    store = MemoryBudgetStore()
    chain = await setup(store, "mem")
    ledger = store.ledger

    def pair() -> None:
        held = ledger.reserve(chain, 100, 1000, 60.0)
        ledger.settle(held.id, 50, 500)

    sync = {
        "spend": round(sync_rate(lambda: ledger.spend(chain, 1, 1), seconds)),
        "reserve_settle": round(sync_rate(pair, seconds)),
    }
    return {"sync": sync, "async_16_tasks": await bench_store(MemoryBudgetStore(), seconds, 16, "mem2")}


# -- Redis across processes -----------------------------------------------------------------------------


async def worker_main(url: str, root: str, op: str, seconds: float, start_at: float, tasks: int) -> None:
    store = open_store(url)
    chain = f"{root}/child"
    fn = ops(store, chain)[op]
    await fn()  # connect and load the script before the clock starts
    await anyio.sleep(max(0.0, start_at - time.time()))
    n, elapsed = await async_rate(fn, seconds, tasks)
    await store.aclose()
    print(json.dumps({"ops": n, "elapsed": elapsed}), flush=True)


def across_processes(url: str, root: str, op: str, seconds: float, backend: str, procs: int = 3) -> float:
    start_at = time.time() + 2.0
    argv = [sys.executable, "-m", "bench.budgets", "--worker", url, root, op, str(seconds), str(start_at)]
    children = [
        subprocess.Popen([*argv, "--backend", backend], stdout=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    total = 0.0
    for child in children:
        out, _ = child.communicate(timeout=seconds + 60)
        result = json.loads(out.strip().splitlines()[-1])
        total += result["ops"] / result["elapsed"]
    return round(total)


@contextlib.contextmanager
def redis_server(url: str | None) -> Iterator[str | None]:
    if url is not None:
        yield url
        return
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    proc = subprocess.Popen(
        [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


async def run(seconds: float, backend: str, redis_url: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "seconds_per_figure": seconds,
        "backend": backend,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    results["memory"] = await bench_memory(seconds)
    print("memory", results["memory"], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(f"sqlite:///{Path(tmp) / 'bench.db'}")
        results["sqlite"] = {"async_16_tasks": await bench_store(store, seconds, 16, "sq")}
        await store.aclose()
    print("sqlite", results["sqlite"], flush=True)
    with redis_server(redis_url) as url:
        if url is None:
            results["redis"] = "skipped: redis-server not found"
        else:
            store = open_store(url)
            root = f"bench-{os.getpid()}-{time.time_ns()}"
            single = await bench_store(store, seconds, 32, root)
            await store.aclose()
            three = {op: across_processes(url, root, op, seconds, backend) for op in ("spend", "reserve_settle")}
            results["redis"] = {"one_process_32_tasks": single, "three_processes_32_tasks_each": three}
    print("redis", results["redis"], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per figure")
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--redis", default=None, metavar="URL", help="use this Redis instead of starting one")
    parser.add_argument(
        "--worker", nargs=5, metavar=("URL", "ROOT", "OP", "SECONDS", "START_AT"), help=argparse.SUPPRESS
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.worker:
        url, root, op, seconds, start_at = args.worker
        anyio.run(worker_main, url, root, op, float(seconds), float(start_at), 32, backend=args.backend)
        return
    results = anyio.run(run, args.seconds, args.backend, args.redis, backend=args.backend)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
