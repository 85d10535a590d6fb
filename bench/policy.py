"""Routing policy cost (issue 5): ``resolve_route`` per call with 50 rules and 30 models (target: under 30 µs).

The config has 6 backends, 30 priced models spread over them, and 50 rules: 40 by ``task_type``
(two ``prefer`` entries, a ``fallback``, an ``exclude`` of the local backend's tag, a ``require`` and
a ``max_cost_per_1k`` each) and 10 without a ``task_type`` that the requests never match (by ``agent_id`` or ``tags``),
so every decision scans them. Each figure is µs per call, the median of several rounds:

* ``decide``: ``RoutingPolicy.decide(inputs, state)``, the pure decision (rules or complexity
  routing, every candidate checked, the ``RouteDecision`` built);
* ``resolve_route``: ``await Router.resolve_route(params)``, what the JSON-RPC method runs: the
  inputs, the observed state (latency of every backend), then the decision;
* ``rpc``: the ``resolve_route`` method through the dispatcher in process (decode, validate,
  dispatch, encode the reply).

Requests: a rule hit (the last ``task_type`` rule), a rule whose preferred models are excluded (the
fallback serves), and complexity routing over all 30 models (an unknown ``task_type``), each with
every backend's latency observed.
Run: ``.venv/bin/python -m bench.policy [--backend trio]``; writes ``bench/results/policy.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from llm_rpc.config import Config
from llm_rpc.core.policy import RouteState
from llm_rpc.core.router import Router
from llm_rpc.types import ResolveRouteParams

RULES = 50
MODELS = 30
KINDS = ("openai", "anthropic", "gemini", "xai", "openrouter")


def config() -> Config:
    backends: list[dict[str, Any]] = [
        {"provider": kind, "models": [f"m{j:02d}" for j in range(MODELS) if j % 6 == i]} for i, kind in enumerate(KINDS)
    ]
    backends.append(
        {
            "provider": "ollama",
            "models": [f"m{j:02d}" for j in range(MODELS) if j % 6 == 5],
            "local": True,
            "tags": ["auto_apply"],
        }
    )
    models = [{"name": f"m{j:02d}", "input": 0.1 * (j + 1), "output": 0.4 * (j + 1)} for j in range(MODELS)]
    rules: list[dict[str, Any]] = []
    for i in range(RULES - 10):
        rules.append(
            {
                "name": f"r{i}",
                "task_type": f"t{i}",
                "prefer": [{"model": f"m{i % MODELS:02d}"}, {"model": f"m{(i + 6) % MODELS:02d}"}],
                "fallback": {"model": f"m{(i + 1) % MODELS:02d}"},
                "exclude": [{"tag": "auto_apply"}],
                "require": ["tools"],
                "max_cost_per_1k": 0.05,
            }
        )
    for i in range(10):  # no task_type: scanned by every request, matched by none of them
        rules.append({"name": f"w{i}", "agent_id": f"nobody-{i}", "prefer": [{"model": "m00"}]})
    return msgspec.convert({"backends": backends, "models": models, "routing": {"rules": rules}}, Config)


REQUESTS: dict[str, dict[str, Any]] = {
    "rule hit": {"task_type": f"t{RULES - 11}", "task": "sort these tickets", "estimated_tokens": 2000},
    "fallback": {"task_type": "t5", "task": "sort these tickets", "estimated_tokens": 2000},  # prefers: ollama
    "complexity, 30 models": {"task_type": "unknown", "task": "research the market", "estimated_tokens": 2000},
}


def per_call_us(fn: Callable[[], object], calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def per_call_us_async(fn: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def measure(calls: int, rounds: int) -> list[dict[str, Any]]:
    from llm_rpc._inprocess import _LocalServer
    from llm_rpc.methods import build_table, error_mapper
    from llm_rpc.protocol import Dispatcher

    router = Router(config())
    for i, b in enumerate(router.backends):
        b.latency = 0.2 + 0.1 * i  # every backend observed: the state has 6 entries
    policy = router.policy
    dispatcher = Dispatcher(build_table(router, _LocalServer()), error_mapper=error_mapper)
    rows = []
    async with anyio.create_task_group() as tg:
        replies: list[bytes] = []
        session = dispatcher.session(tg, replies.append, peer="bench")
        for label, fields in REQUESTS.items():
            params = msgspec.convert(fields, ResolveRouteParams)
            inputs = policy.inputs(**fields)
            state = router.route_state(None, None)
            decision = policy.decide(inputs, state)
            frame = msgspec.json.encode({"jsonrpc": "2.0", "id": 1, "method": "resolve_route", "params": fields})

            async def rpc(frame: bytes = frame) -> None:
                session.handle_frame(frame)
                await session.wait_idle()

            def decide(inputs: Any = inputs, state: RouteState = state) -> object:
                return policy.decide(inputs, state)

            async def resolve(params: ResolveRouteParams = params) -> object:
                return await router.resolve_route(params)

            rows.append(
                {
                    "request": label,
                    "chosen": f"{decision.backend}/{decision.model}",
                    "candidates": len(decision.candidates),
                    "decide_us": round(per_call_us(decide, calls, rounds), 2),
                    "resolve_route_us": round(await per_call_us_async(resolve, calls, rounds), 2),
                    "rpc_us": round(await per_call_us_async(rpc, calls // 4, rounds), 2),
                }
            )
        replies.clear()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rows = anyio.run(measure, args.calls, args.rounds, backend=args.backend)
    print(f"{'request':<24} {'chosen':<14} {'cands':>5} {'decide µs':>10} {'resolve_route µs':>17} {'rpc µs':>8}")
    for r in rows:
        print(
            f"{r['request']:<24} {r['chosen']:<14} {r['candidates']:>5} {r['decide_us']:>10} "
            f"{r['resolve_route_us']:>17} {r['rpc_us']:>8}"
        )
    out = Path(__file__).resolve().parent / "results" / "policy.json"
    out.write_text(json.dumps({"backend": args.backend, "rules": RULES, "models": MODELS, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
