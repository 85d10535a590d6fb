"""No concurrency of calls takes a chain past its total: 500 calls at once through the router on every
store, and a property test of the ledger over random operations and amounts."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import anyio
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llm_rpc.core.budgets import BudgetStore, MemoryBudgetStore, OpenSpec, Reservation
from llm_rpc.errors import LLMBudgetExceededError
from llm_rpc.types import ExecuteParams, ExecuteResult
from tests.budgets.conftest import router_for

WORDS = ["budget", "chain", "delegate", "proposal", "review", "summary", "tokens", "agent", "plan", "draft"]


@pytest.mark.anyio
async def test_500_concurrent_calls_on_one_small_chain_never_spend_past_its_total(store: BudgetStore) -> None:
    rng = random.Random(6)
    calls = [
        msgspec.convert(
            {
                "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 12))),
                "chain_id": "B" if i % 3 else "C",
                "config": {"max_tokens": rng.randint(1, 40)},
                "mock": {"latency_ms": rng.choice([0, 0, 1, 2, 5])},
            },
            ExecuteParams,
        )
        for i in range(500)
    ]
    results: list[ExecuteResult] = []
    refused: Counter[str] = Counter()
    async with router_for(mock=True, use_store=store) as router:
        await store.open(OpenSpec(chain_id="A", total_tokens=3000))
        await store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=2500))
        await store.open(OpenSpec(chain_id="C", parent_id="A", total_tokens=1000))

        async def one(params: ExecuteParams) -> None:
            try:
                results.append(await router.execute(params))
            except LLMBudgetExceededError as exc:
                refused[exc.data["reason"]] += 1

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for params in calls:
                    tg.start_soon(one, params)
        a, b, c = [await store.status(x) for x in "ABC"]
    assert len(results) + sum(refused.values()) == 500
    assert refused["in_flight"] > 0  # the calls really did hold the chain at the same time
    spent = sum(r.usage.total_tokens for r in results)
    assert a.spent_tokens == spent <= 3000
    assert b.spent_tokens <= 2500
    assert c.spent_tokens <= 1000
    assert b.spent_tokens + c.spent_tokens == a.spent_tokens
    assert (a.reserved_tokens, a.in_flight, a.overrun_tokens) == (0, 0, 0)
    assert len(results) > 50


# -- the ledger itself, under random interleavings ------------------------------------------------------

Op = tuple[str, Any, Any]
op_strategy = st.one_of(
    st.tuples(st.just("reserve"), st.sampled_from("ABC"), st.integers(0, 400)),
    st.tuples(st.just("settle"), st.integers(0, 50), st.floats(0, 1)),
    st.tuples(st.just("release"), st.integers(0, 50), st.none()),
    st.tuples(st.just("spend"), st.sampled_from("ABC"), st.integers(0, 300)),
    st.tuples(st.just("tick"), st.floats(0, 40), st.none()),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    totals=st.tuples(st.integers(0, 2000), st.integers(0, 2000), st.integers(0, 2000)),
    leases=st.floats(1, 60),
    ops=st.lists(op_strategy, max_size=80),
)
def test_no_sequence_of_holds_settles_spends_and_expiries_takes_any_level_past_its_total(
    totals: tuple[int, int, int], leases: float, ops: list[Op]
) -> None:
    clock = [1_000_000.0]
    store = MemoryBudgetStore(clock=lambda: clock[0])
    ledger = store.ledger
    ledger.open(OpenSpec(chain_id="A", total_tokens=totals[0]))
    ledger.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=min(totals[1], totals[0])))
    ledger.open(OpenSpec(chain_id="C", parent_id="B", total_tokens=min(totals[2], totals[1], totals[0])))
    holds: list[Reservation] = []
    reasons: Counter[str] = Counter()
    for kind, x, y in ops:
        try:
            if kind == "reserve":
                holds.append(ledger.reserve(x, y, 0, leases))
            elif kind == "settle" and holds:
                held = holds[x % len(holds)]
                ledger.settle(held.id, int(held.tokens * y), 0)  # never more than held
            elif kind == "release" and holds:
                ledger.release(holds[x % len(holds)].id)
            elif kind == "spend":
                ledger.spend(x, y, 0)
            elif kind == "tick":
                clock[0] += x
        except LLMBudgetExceededError as exc:
            reasons[exc.data["reason"]] += 1
        chains = {c: ledger.status(c) for c in "ABC"}
        for c, s in chains.items():
            assert s.total_tokens is not None
            assert s.reserved_tokens >= 0
            assert s.spent_tokens + s.reserved_tokens <= s.total_tokens, (c, s)
            active = [h for h in store.repo.holds.values() if h.state == "active" and c in h.path]
            assert s.reserved_tokens == sum(h.tokens for h in active)
            assert s.in_flight == len(active)
        assert chains["A"].spent_tokens >= chains["B"].spent_tokens >= chains["C"].spent_tokens
    assert set(reasons) <= {"exceeds_budget", "in_flight"}
