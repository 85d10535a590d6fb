"""One suite, three stores: memory, SQLite and Redis keep exactly the same budget semantics."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from llm_rpc.core.budgets import BudgetRequestError, BudgetStore, OpenSpec, to_nusd
from llm_rpc.errors import LLMBudgetExceededError, LLMError

pytestmark = pytest.mark.anyio

LEASE = 60.0


async def refusal(coro: Any) -> dict[str, Any]:
    with pytest.raises(LLMBudgetExceededError) as raised:
        await coro
    return raised.value.to_data()


async def invalid(coro: Any) -> dict[str, Any]:
    with pytest.raises(BudgetRequestError) as raised:
        await coro
    return raised.value.to_data()


async def test_opening_the_same_chain_again_with_the_same_params_is_idempotent(store: BudgetStore) -> None:
    spec = OpenSpec(chain_id="A", total_tokens=100, metadata={"task": "proposal"})
    first = await store.open(spec)
    await store.spend("A", 10, 0)
    again = await store.open(spec)
    assert again.chain_id == "A"
    assert again.created_at == first.created_at
    assert (again.total_tokens, again.spent_tokens, again.metadata) == (100, 10, {"task": "proposal"})


async def test_reopening_with_other_params_is_an_error_naming_what_differs(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=100))
    data = await invalid(store.open(OpenSpec(chain_id="A", total_tokens=200, ttl_s=5)))
    assert data["type"] == "invalid_params"
    assert data["reason"] == "conflict"
    assert data["differs"] == ["total_tokens", "ttl_s"]
    assert (await store.status("A")).total_tokens == 100


async def test_a_chain_without_a_parent_needs_a_total(store: BudgetStore) -> None:
    assert (await invalid(store.open(OpenSpec(chain_id="A"))))["reason"] == "no_totals"


async def test_a_child_defaults_to_its_parents_remaining_and_may_not_exceed_it(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000, total_usd=2.0))
    await store.spend("A", 400, to_nusd(0.5))
    child = await store.open(OpenSpec(chain_id="B", parent_id="A"))
    assert (child.total_tokens, child.total_usd) == (600, 1.5)
    data = await invalid(store.open(OpenSpec(chain_id="C", parent_id="A", total_tokens=601)))
    assert (data["reason"], data["limit"], data["remaining"], data["chain_id"]) == (
        "exceeds_parent",
        "total_tokens",
        600,
        "A",
    )
    assert (await invalid(store.open(OpenSpec(chain_id="D", parent_id="nope"))))["reason"] == "unknown_parent"


async def test_spend_on_a_grandchild_counts_against_every_ancestor(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=4000))
    await store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=2000))
    await store.open(OpenSpec(chain_id="C", parent_id="B", total_tokens=500))
    await store.spend("C", 300, 0)
    await store.spend("B", 200, 0)
    a, b, c = [await store.status(x) for x in "ABC"]
    assert (a.spent_tokens, b.spent_tokens, c.spent_tokens) == (500, 500, 300)
    assert (a.remaining_tokens, b.remaining_tokens, c.remaining_tokens) == (3500, 1500, 200)
    assert (a.children, b.children, c.children) == (["B"], ["C"], [])
    assert c.parent_id == "B"


async def test_a_spend_that_does_not_fit_records_nothing_and_says_which_chain_and_limit(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    await store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=800))
    await store.spend("A", 700, 0)
    data = await refusal(store.spend("B", 400, 0))
    assert data == {
        "type": "budget_exceeded",
        "chain_id": "A",
        "requested_chain_id": "B",
        "reason": "exceeds_budget",
        "limit": "total_tokens",
        "remaining": 300,
        "requested": 400,
        "reserved": 0,
    }
    assert (await store.status("B")).spent_tokens == 0
    assert (await store.status("A")).spent_tokens == 700


async def test_a_usd_limit_refuses_in_usd(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_usd=0.01))
    await store.spend("A", 0, to_nusd(0.004))
    data = await refusal(store.spend("A", 0, to_nusd(0.007)))
    assert (data["limit"], data["remaining"], data["requested"]) == ("total_usd", 0.006, 0.007)


async def test_a_forced_spend_is_recorded_and_exhausts_the_chain(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=100))
    await store.open(OpenSpec(chain_id="B", parent_id="A"))
    result = await store.spend("B", 150, 0, force=True)
    assert (result.forced, result.exhausted, result.remaining_tokens, result.overrun_tokens) == (True, True, 0, 50)
    a = await store.status("A")
    assert (a.state, a.spent_tokens, a.overrun_tokens) == ("exhausted", 150, 50)
    assert (await refusal(store.spend("B", 1, 0)))["reason"] == "exceeds_budget"


async def test_a_reservation_holds_on_every_level_and_settles_at_the_real_amount(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000, total_usd=1.0))
    await store.open(OpenSpec(chain_id="B", parent_id="A"))
    held = await store.reserve("B", 300, to_nusd(0.2), LEASE)
    a = await store.status("A")
    assert (a.reserved_tokens, a.reserved_usd, a.remaining_tokens, a.in_flight) == (300, 0.2, 700, 1)
    settled = await store.settle(held.id, 120, to_nusd(0.05))
    assert (settled.state, settled.tokens, settled.overrun_tokens, settled.remaining_tokens) == ("settled", 120, 0, 880)
    for chain in ("A", "B"):
        s = await store.status(chain)
        assert (s.reserved_tokens, s.spent_tokens, s.spent_usd, s.in_flight) == (0, 120, 0.05, 0)


async def test_settling_more_than_was_held_is_recorded_as_overrun(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=100))
    held = await store.reserve("A", 80, 0, LEASE)
    settled = await store.settle(held.id, 110, 0)
    assert (settled.overrun_tokens, settled.remaining_tokens) == (30, 0)
    a = await store.status("A")
    assert (a.spent_tokens, a.overrun_tokens, a.state) == (110, 30, "exhausted")
    data = await refusal(store.reserve("A", 1, 0, LEASE))
    assert data["overrun"] == {"tokens": 30, "usd": 0.0}


async def test_settle_and_release_are_idempotent(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    one = await store.reserve("A", 100, 0, LEASE)
    two = await store.reserve("A", 100, 0, LEASE)
    assert one.id != two.id
    assert (await store.settle(one.id, 40, 0)).state == "settled"
    again = await store.settle(one.id, 90, 0)  # a retry: the first outcome stands
    assert (again.state, again.tokens) == ("settled", 40)
    assert (await store.release(one.id)).state == "settled"
    assert (await store.release(two.id)).state == "released"
    assert (await store.release(two.id)).state == "released"
    assert (await store.settle(two.id, 50, 0)).state == "released"
    assert (await store.settle("r-no-such", 1, 0)).state == "unknown"
    a = await store.status("A")
    assert (a.spent_tokens, a.reserved_tokens, a.in_flight) == (40, 0, 0)


async def test_in_flight_and_exceeds_budget_are_told_apart(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    await store.reserve("A", 500, 0, 30)
    await store.reserve("A", 300, 0, 90)
    busy = await refusal(store.reserve("A", 400, 0, LEASE))
    assert (busy["reason"], busy["remaining"], busy["reserved"], busy["requested"]) == ("in_flight", 200, 800, 400)
    assert 29 <= busy["retry_after"] <= 30  # the earliest lease on the chain
    never = await refusal(store.reserve("A", 1001, 0, LEASE))
    assert never["reason"] == "exceeds_budget"
    assert "retry_after" not in never


async def test_a_reservation_fits_whole_or_not_at_all_on_every_level(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    await store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=900))
    await store.open(OpenSpec(chain_id="C", parent_id="B", total_tokens=800))
    await store.reserve("B", 600, 0, LEASE)
    data = await refusal(store.reserve("C", 350, 0, LEASE))
    assert (data["chain_id"], data["reason"], data["remaining"]) == ("B", "in_flight", 300)
    for chain, reserved in (("A", 600), ("B", 600), ("C", 0)):
        assert (await store.status(chain)).reserved_tokens == reserved  # nothing shrank, nothing partial
    assert (await store.reserve("C", 300, 0, LEASE)).tokens == 300


async def test_an_unpriced_call_is_refused_under_a_usd_total_unless_allowed(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="usd", total_usd=1.0))
    data = await refusal(store.reserve("usd", 10, None, LEASE, model="mystery-1"))
    assert (data["reason"], data["chain_id"], data["model"]) == ("unpriced_model", "usd", "mystery-1")
    await store.open(OpenSpec(chain_id="tokens", total_tokens=100))
    assert (await store.reserve("tokens", 10, None, LEASE)).nusd == 0
    await store.open(OpenSpec(chain_id="lax", total_usd=1.0, allow_unpriced=True))
    assert (await store.reserve("lax", 10, None, LEASE)).nusd == 0


async def test_a_lease_that_runs_out_releases_the_reservation(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=100))
    lost = await store.reserve("A", 90, 0, 5)
    assert (await refusal(store.reserve("A", 20, 0, LEASE)))["reason"] == "in_flight"
    store.advance(6)
    a = await store.status("A")
    assert (a.reserved_tokens, a.remaining_tokens, a.in_flight) == (0, 100, 0)
    assert (await store.reserve("A", 20, 0, LEASE)).tokens == 20
    late = await store.settle(lost.id, 30, 0)  # the call did finish after all: its spend is not lost
    assert (late.state, late.tokens) == ("settled_late", 30)
    assert (await store.status("A")).spent_tokens == 30


async def test_a_chain_expires_after_its_ttl_and_a_child_never_outlives_it(store: BudgetStore) -> None:
    parent = await store.open(OpenSpec(chain_id="A", total_tokens=100, ttl_s=10))
    child = await store.open(OpenSpec(chain_id="B", parent_id="A", ttl_s=3600))
    assert parent.expires_at is not None
    assert child.expires_at == parent.expires_at
    held = await store.reserve("B", 10, 0, LEASE)
    store.advance(11)
    assert (await store.status("A")).state == "expired"
    data = await refusal(store.spend("B", 1, 0))
    assert (data["reason"], data["chain_id"]) == ("expired", "B")
    assert (await store.settle(held.id, 5, 0)).state == "settled"  # granted before: still settles
    assert (await store.status("A")).spent_tokens == 5
    assert (await invalid(store.open(OpenSpec(chain_id="C", parent_id="A"))))["reason"] == "parent_expired"


async def test_closing_freezes_the_chain_and_its_children_and_returns_the_ledger(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    await store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=400))
    held = await store.reserve("B", 100, 0, LEASE)
    await store.spend("B", 50, 0)
    ledger = await store.close("B")
    assert (ledger.state, ledger.spent_tokens, ledger.reserved_tokens, ledger.in_flight) == ("closed", 50, 100, 1)
    assert ledger.closed_at is not None
    assert (await refusal(store.spend("B", 1, 0)))["reason"] == "closed"
    await store.settle(held.id, 60, 0)
    a = await store.status("A")
    assert (a.state, a.spent_tokens, a.remaining_tokens) == ("open", 110, 890)  # B's unused cap is A's again
    again = await store.close("B")
    assert again.closed_at == ledger.closed_at
    await store.close("A")
    assert (await refusal(store.reserve("A", 1, 0, LEASE)))["reason"] == "closed"


async def test_closing_a_parent_closes_its_descendants(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=1000))
    await store.open(OpenSpec(chain_id="B", parent_id="A"))
    await store.open(OpenSpec(chain_id="C", parent_id="B"))
    await store.close("A")
    assert [(await store.status(x)).state for x in "ABC"] == ["closed"] * 3
    assert (await invalid(store.open(OpenSpec(chain_id="D", parent_id="C"))))["reason"] == "parent_closed"


async def test_closed_and_expired_chains_are_forgotten_after_retention(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="closed", total_tokens=10))
    await store.open(OpenSpec(chain_id="kid", parent_id="closed"))
    await store.open(OpenSpec(chain_id="short", total_tokens=10, ttl_s=60))
    await store.open(OpenSpec(chain_id="kept", total_tokens=10))
    held = await store.reserve("kept", 5, 0, 30)
    await store.close("closed")
    store.advance(86400 + 61)
    for gone in ("closed", "kid", "short"):
        assert (await invalid(store.status(gone)))["reason"] == "unknown_chain"
    assert [s.chain_id for s in await store.list_chains()] == ["kept"]
    store.advance(601)  # a reservation that ran out is remembered ten minutes, for a late settle
    assert (await store.settle(held.id, 1, 0)).state == "unknown"
    assert (await refusal(store.reserve("closed", 1, 0, LEASE)))["reason"] == "unknown_chain"
    reopened = await store.open(OpenSpec(chain_id="closed", total_tokens=20))
    assert (reopened.state, reopened.spent_tokens) == ("open", 0)


async def test_list_filters_by_parent_and_state(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=100))
    await store.open(OpenSpec(chain_id="B1", parent_id="A", total_tokens=10))
    await store.open(OpenSpec(chain_id="B2", parent_id="A", total_tokens=10))
    await store.open(OpenSpec(chain_id="X", total_tokens=5))
    await store.spend("B1", 10, 0)
    await store.close("X")
    assert sorted(s.chain_id for s in await store.list_chains()) == ["A", "B1", "B2", "X"]
    assert sorted(s.chain_id for s in await store.list_chains("A")) == ["B1", "B2"]
    assert [s.chain_id for s in await store.list_chains(state="exhausted")] == ["B1"]
    assert [s.chain_id for s in await store.list_chains(state="closed")] == ["X"]
    assert len(await store.list_chains(limit=2)) == 2


async def test_unknown_chains_are_refused_and_reported(store: BudgetStore) -> None:
    assert (await refusal(store.reserve("ghost", 1, 0, LEASE)))["reason"] == "unknown_chain"
    assert (await refusal(store.spend("ghost", 1, 0)))["reason"] == "unknown_chain"
    assert (await invalid(store.close("ghost")))["reason"] == "unknown_chain"


async def test_usd_sums_are_exact_to_the_nano_dollar(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_usd=1.0))
    for _ in range(10):
        await store.spend("A", 0, to_nusd(0.1))
    a = await store.status("A")
    assert (a.spent_usd, a.remaining_usd, a.state) == (1.0, 0.0, "exhausted")


def test_budget_errors_are_llm_errors() -> None:
    assert issubclass(LLMBudgetExceededError, LLMError)
    assert LLMBudgetExceededError.type == "budget_exceeded"


async def test_operations_sent_together_keep_their_own_outcomes(store: BudgetStore) -> None:
    await store.open(OpenSpec(chain_id="A", total_tokens=30))
    outcomes: list[str] = []

    async def spend(chain: str) -> None:
        try:
            await store.spend(chain, 1, 0)
            outcomes.append("ok")
        except LLMBudgetExceededError as exc:
            outcomes.append(exc.data["reason"])

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(spend, "A" if i % 4 else "ghost")
    assert sorted(outcomes) == sorted(["ok"] * 30 + ["exceeds_budget"] * 15 + ["unknown_chain"] * 15)
    assert (await store.status("A")).spent_tokens == 30
