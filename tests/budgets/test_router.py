"""Budgets enforced on calls: held before anything is sent, settled after, released or charged for the
prompt when a call fails or is cut off; the inline path; ``BudgetTracker`` for in-process calls."""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from llm_rpc import BudgetTracker, LLMBudgetExceededError, Router
from llm_rpc.config import BackendConfig, Config, ModelPrice, RouterSettings
from llm_rpc.core.budgets import BudgetStore, OpenSpec, to_nusd
from llm_rpc.core.ratelimit import estimate_tokens
from llm_rpc.errors import BadRequestError
from llm_rpc.types import ExecuteParams, Message, Usage
from tests.budgets.conftest import router_for
from tests.core._scripted import Scripted, fail, wait_until

pytestmark = pytest.mark.anyio


async def test_a_call_that_cannot_fit_is_refused_before_anything_is_sent(store: BudgetStore) -> None:
    upstream = Scripted("up")
    async with router_for(upstream, use_store=store) as router:
        await store.open(OpenSpec(chain_id="A", total_tokens=50))
        with pytest.raises(LLMBudgetExceededError) as raised:
            await router.execute(prompt="hello", model="m", chain_id="A", config={"max_tokens": 100})
        assert (await store.status("A")).reserved_tokens == 0
    assert raised.value.data["reason"] == "exceeds_budget"
    assert upstream.calls == []


async def test_a_failed_call_releases_its_reservation(store: BudgetStore) -> None:
    upstream = Scripted("up", default=fail(BadRequestError, status=400))
    async with router_for(upstream, use_store=store) as router:
        await store.open(OpenSpec(chain_id="A", total_tokens=5000))
        with pytest.raises(BadRequestError):
            await router.execute(prompt="hello", model="m", chain_id="A", config={"max_tokens": 100})
        a = await store.status("A")
    assert (a.spent_tokens, a.reserved_tokens, a.in_flight) == (0, 0, 0)
    assert len(upstream.calls) == 1


async def test_a_call_cancelled_after_it_was_sent_pays_for_its_prompt(store: BudgetStore) -> None:
    upstream = Scripted("up")
    upstream.gate = anyio.Event()  # never set: the call hangs upstream until cancelled
    prompt = "please summarise these words for me"
    async with router_for(upstream, use_store=store) as router:
        await store.open(OpenSpec(chain_id="A", total_tokens=5000))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(lambda: router.execute(prompt=prompt, model="m", chain_id="A", config={"max_tokens": 99}))
                await wait_until(lambda: upstream.in_flight == 1)
                held = await store.status("A")
                tg.cancel_scope.cancel()
        a = await store.status("A")
    prompt_tokens = estimate_tokens([Message(role="user", content=prompt)], 0)
    assert held.reserved_tokens == prompt_tokens + 99
    assert (a.spent_tokens, a.reserved_tokens, a.in_flight) == (prompt_tokens, 0, 0)


async def test_a_call_cancelled_before_it_was_sent_releases_its_reservation() -> None:
    upstream = Scripted("up")
    upstream.gate = anyio.Event()
    config = Config(
        router=RouterSettings(retry_base_delay=0.0, retry_max_delay=0.0),
        backends=[BackendConfig(provider="ollama", name="up", models=["m"], max_concurrent=1)],
    )
    async with Router(config, providers={"up": upstream}) as router:
        store = router.budgets.store
        await store.open(OpenSpec(chain_id="A", total_tokens=5000))
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                for _ in range(2):  # the second queues for the one slot: held, never sent
                    tg.start_soon(lambda: router.execute(prompt="x", model="m", chain_id="A"))
                await wait_until(
                    lambda: upstream.in_flight == 1 and router.budgets.store.repo.in_flight("A") == 2  # type: ignore[attr-defined]
                )
                tg.cancel_scope.cancel()
        a = await store.status("A")
    assert (a.reserved_tokens, a.in_flight) == (0, 0)
    assert a.spent_tokens == estimate_tokens([Message(role="user", content="x")], 0)  # only the one sent


async def test_the_result_reports_what_the_chain_has_left() -> None:
    async with router_for(mock=True) as router:
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=1000))
        await router.budgets.store.open(OpenSpec(chain_id="B", parent_id="A", total_tokens=300))
        result = await router.execute(prompt="tell me something", chain_id="B", config={"max_tokens": 20})
    assert result.budget is not None
    assert (result.budget.chain_id, result.budget.remaining_tokens) == ("B", 300 - result.usage.total_tokens)
    assert result.budget.overrun is None
    assert msgspec.to_builtins(result)["budget"] == {
        "chain_id": "B",
        "remaining_tokens": 300 - result.usage.total_tokens,
        "remaining_usd": None,
    }


async def test_a_provider_that_answers_past_its_hold_is_recorded_as_overrun() -> None:
    greedy = Scripted("up", usage=Usage(prompt_tokens=10, completion_tokens=400, total_tokens=410))
    async with router_for(greedy) as router:
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=1000))
        result = await router.execute(prompt="hi", model="m", chain_id="A", config={"max_tokens": 10})
        a = await router.budgets.store.status("A")
    assert result.budget is not None
    assert result.budget.overrun is not None
    held = estimate_tokens([Message(role="user", content="hi")], 0) + 10
    assert result.budget.overrun.tokens == 410 - held
    assert (a.spent_tokens, a.overrun_tokens) == (410, 410 - held)


async def test_a_budgeted_call_without_max_tokens_is_sent_the_default_it_reserved() -> None:
    async with router_for(mock=True, default_max_tokens=3) as router:
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=1000))
        budgeted = await router.execute(prompt="one two three four five", chain_id="A")
        free = await router.execute(prompt="one two three four five")
    assert (budgeted.usage.completion_tokens, budgeted.finish_reason) == (3, "length")
    assert free.finish_reason == "stop"


async def test_usd_is_held_at_the_price_and_settled_at_the_cost() -> None:
    upstream = Scripted("up", usage=Usage(prompt_tokens=100, completion_tokens=50, total_tokens=150))
    upstream.gate = anyio.Event()
    price = ModelPrice(name="m", input=2.0, output=10.0)  # USD per 1M tokens
    async with router_for(upstream, prices=[price]) as router:
        store = router.budgets.store
        await store.open(OpenSpec(chain_id="A", total_usd=1.0))
        prompt = "a prompt of some length"
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    lambda: router.execute(prompt=prompt, model="m", chain_id="A", config={"max_tokens": 1000})
                )
                await wait_until(lambda: upstream.in_flight == 1)
                held = await store.status("A")
                upstream.gate.set()
        a = await store.status("A")
    prompt_tokens = estimate_tokens([Message(role="user", content=prompt)], 0)
    assert held.reserved_usd == pytest.approx((prompt_tokens * 2.0 + 1000 * 10.0) / 1e6)
    assert (a.spent_usd, a.reserved_usd) == ((100 * 2.0 + 50 * 10.0) / 1e6, 0.0)


async def test_an_unpriced_model_is_refused_under_a_usd_budget_unless_the_chain_allows_it() -> None:
    upstream = Scripted("up")
    async with router_for(upstream) as router:
        store = router.budgets.store
        await store.open(OpenSpec(chain_id="usd", total_usd=1.0))
        with pytest.raises(LLMBudgetExceededError) as raised:
            await router.execute(prompt="x", model="m", chain_id="usd")
        await store.open(OpenSpec(chain_id="lax", total_usd=1.0, allow_unpriced=True))
        result = await router.execute(prompt="x", model="m", chain_id="lax")
    assert (raised.value.data["reason"], raised.value.data["model"]) == ("unpriced_model", "m")
    assert result.cost_usd is None
    assert len(upstream.calls) == 1


async def test_a_chain_never_opened_runs_unbudgeted_unless_the_config_refuses_it() -> None:
    params = msgspec.convert({"prompt": "y", "chain_id": "nobody-opened-this"}, ExecuteParams)
    async with router_for(mock=True) as router:
        assert (await router.execute(params)).budget is None  # the id still groups routing decisions
        inline = router.execute_nowait(params)
        assert inline is not None
        assert inline.budget is None
    async with router_for(mock=True, unknown_chains="refuse") as router:
        with pytest.raises(LLMBudgetExceededError) as raised:
            await router.execute(params)
        with pytest.raises(LLMBudgetExceededError):
            router.execute_nowait(params)
    assert raised.value.to_data() == {
        "type": "budget_exceeded",
        "chain_id": "nobody-opened-this",
        "reason": "unknown_chain",
    }


async def test_the_inline_path_holds_on_the_memory_store_and_gives_way_on_others(tmp_path: Path) -> None:
    params = msgspec.convert({"prompt": "inline please", "chain_id": "A", "config": {"max_tokens": 20}}, ExecuteParams)
    async with router_for(mock=True) as router:
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=100))
        result = router.execute_nowait(params)
        assert result is not None
        assert result.budget is not None
        assert result.budget.remaining_tokens == 100 - result.usage.total_tokens
        assert router.budgets.store.repo.in_flight("A") == 0  # type: ignore[attr-defined]
        with pytest.raises(LLMBudgetExceededError):
            router.execute_nowait(
                msgspec.convert({"prompt": "x", "chain_id": "A", "config": {"max_tokens": 500}}, ExecuteParams)
            )
    async with router_for(mock=True, store=f"sqlite:///{tmp_path / 'b.db'}") as router:  # the config's store
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=100))
        assert router.execute_nowait(params) is None
        assert (await router.execute(params)).budget is not None


async def test_a_mock_failure_on_the_inline_path_releases_its_hold() -> None:
    async with router_for(mock=True) as router:
        store = router.budgets.store
        await store.open(OpenSpec(chain_id="A", total_tokens=10_000))
        params = msgspec.convert(
            {"prompt": "x", "chain_id": "A", "mock": {"fail_rate": 1.0, "fail_type": "bad_request"}}, ExecuteParams
        )
        with pytest.raises(BadRequestError):
            router.execute_nowait(params)
        a = await store.status("A")
    assert (a.spent_tokens, a.reserved_tokens) == (0, 0)


async def test_a_tracker_is_shared_by_every_call_it_is_passed_to() -> None:
    tracker = BudgetTracker(total=200)
    reviewer = tracker.child(total=60)
    async with router_for(mock=True) as router:
        first = await router.execute(prompt="draft the proposal", budget=tracker, config={"max_tokens": 20})
        second = await router.execute(prompt="review the proposal", budget=reviewer, config={"max_tokens": 20})
        with pytest.raises(LLMBudgetExceededError) as raised:
            await router.execute(prompt="review again", budget=reviewer, config={"max_tokens": 100})
        batch = await router.execute_batch(
            [{"prompt": f"item number {i}", "config": {"max_tokens": 10}} for i in range(20)], budget=tracker
        )
    spent = first.usage.total_tokens + second.usage.total_tokens + batch.total_tokens
    assert tracker.spent == spent <= 200
    assert reviewer.spent == second.usage.total_tokens
    assert raised.value.data["chain_id"] == reviewer.chain_id
    assert batch.ok >= 1
    assert batch.failed >= 1
    assert all(isinstance(o, LLMBudgetExceededError) for o in batch.outcomes if not hasattr(o, "usage"))


def test_a_tracker_needs_a_total_and_a_child_cannot_exceed_its_parent() -> None:
    with pytest.raises(ValueError, match="total"):
        BudgetTracker()
    tracker = BudgetTracker(total=100, total_usd=0.5)
    tracker.spend(tokens=30, usd=0.1)
    assert (tracker.remaining, tracker.remaining_usd) == (70, 0.4)
    with pytest.raises(ValueError, match="exceed"):
        tracker.child(total=71)
    held = tracker.reserve(50)
    with pytest.raises(LLMBudgetExceededError) as raised:
        tracker.spend(tokens=30)
    assert raised.value.data["reason"] == "in_flight"
    tracker.settle(held, 10)
    assert tracker.spent == 40
    assert "remaining=60 tokens" in repr(tracker)
    assert tracker.close().state == "closed"


async def test_execute_batch_holds_every_item_on_its_chain() -> None:
    async with router_for(mock=True) as router:
        await router.budgets.store.open(OpenSpec(chain_id="A", total_tokens=100))
        outcome = await router.execute_batch(
            [{"prompt": "some words here", "config": {"max_tokens": 10}} for _ in range(12)], chain_id="A"
        )
        a = await router.budgets.store.status("A")
    assert outcome.ok >= 1
    assert outcome.failed >= 1
    assert a.spent_tokens == outcome.total_tokens <= 100
    assert a.reserved_tokens == 0


def test_to_nusd_rounds_to_the_nano_dollar() -> None:
    assert to_nusd(0.1) == 100_000_000
    assert to_nusd(1e-9 * 2.4) == 2
    assert to_nusd(1e-9 * 2.4, up=True) == 3
