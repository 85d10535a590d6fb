"""Router decision overhead (issue 4): µs per call with 2, 20 and 200 backends, per strategy.

Three figures per row, each the median of several rounds:

* ``decide``: what the router adds before a provider is called: the route (cached per model), the
  strategy's choice and the per-call state (``Router._call`` + ``Router._choose``);
* ``inline``: a whole ``execute_nowait`` on the zero-latency mock (the server's inline path), result
  and usage accounting included;
* ``task``: a whole ``await execute`` on the same mock (deadline scope, clock reads, attempt loop).

``--limits`` gives every backend ``max_concurrent`` and ``rate_limit_rpm`` (never reached) so the
limit checks are paid too. Run: ``.venv/bin/python -m bench.router [--limits] [--backend trio]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import anyio

from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.types import ExecuteParams

SIZES = (2, 20, 200)
STRATEGIES = ("failover", "round-robin", "least-loaded", "latency")


def build(n: int, strategy: str, limits: bool) -> Router:
    extra: dict[str, Any] = {"max_concurrent": 1_000_000, "rate_limit_rpm": 1_000_000_000} if limits else {}
    return Router(
        Config(
            router=RouterSettings(strategy=strategy),  # type: ignore[arg-type]
            backends=[BackendConfig(provider="mock", name=f"b{i}", priority=i, **extra) for i in range(n)],
        )
    )


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def per_call_us_async(router: Router, params: ExecuteParams, calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await router.execute(params)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def measure(limits: bool, calls: int, rounds: int) -> list[dict[str, Any]]:
    params = ExecuteParams(prompt="Hello", model="m")
    rows = []
    for n in SIZES:
        for strategy in STRATEGIES:
            router = build(n, strategy, limits)
            now = anyio.current_time()

            def decide(router: Router = router, now: float = now) -> object:
                call = router._call(params)
                return router._choose(call, now)

            def inline(router: Router = router) -> object:
                return router.execute_nowait(params)

            rows.append(
                {
                    "backends": n,
                    "strategy": strategy,
                    "decide_us": round(per_call_us(decide, calls, rounds), 2),
                    "inline_us": round(per_call_us(inline, calls, rounds), 2),
                    "task_us": round(await per_call_us_async(router, params, calls // 4, rounds), 2),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limits", action="store_true", help="give every backend max_concurrent and rate_limit_rpm")
    parser.add_argument("--backend", default="asyncio", choices=("asyncio", "trio"))
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = anyio.run(measure, args.limits, args.calls, args.rounds, backend=args.backend)
    print(f"router overhead, µs per call ({args.backend}{', with limits' if args.limits else ''})")
    print(f"{'backends':>8}  {'strategy':<13} {'decide':>8} {'inline':>8} {'task':>8}")
    for r in rows:
        n, strategy = r["backends"], r["strategy"]
        print(f"{n:>8}  {strategy:<13} {r['decide_us']:>8.2f} {r['inline_us']:>8.2f} {r['task_us']:>8.2f}")


if __name__ == "__main__":
    main()
