"""The policy in the router: ``execute`` without a model is routed and carries ``route``; ``resolve_route``
is the same decision as a dry run; refusals come before any upstream call; every decision is logged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from llm_rpc._inprocess import _LocalServer
from llm_rpc.config import BackendConfig, Config, ModelPrice, RouterSettings, RoutingSettings
from llm_rpc.core.policy import BudgetState
from llm_rpc.core.router import Router
from llm_rpc.errors import NoRouteError, ServerError
from llm_rpc.methods import build_table, error_mapper
from llm_rpc.protocol import Dispatcher
from tests.core._scripted import Scripted, fail
from tests.policy._setup import TRIAGE, config

pytestmark = pytest.mark.anyio


def routed(
    rules: list[dict[str, Any]] | None = None, log: Path | None = None, **routing: Any
) -> tuple[Router, dict[str, Scripted]]:
    cfg = config(rules, **routing)
    cfg = msgspec.structs.replace(cfg, router=RouterSettings(retry_base_delay=0, retry_max_delay=0))
    providers = {b.backend_name: Scripted(b.backend_name) for b in cfg.backends}
    return Router(cfg, providers=dict(providers), decision_log=log), providers


async def test_execute_without_a_model_is_routed_and_carries_the_decision() -> None:
    router, seen = routed([TRIAGE])
    result = await router.execute(prompt="is this urgent?", task_type="triage")
    assert (result.backend, result.content) == ("openrouter", "openrouter says hi")
    assert seen["openrouter"].calls[0].model == "claude-haiku-4-5"  # sent exactly as the rule wrote it
    assert result.route is not None
    assert (result.route.rule, result.route.model, result.route.complexity) == ("triage", "claude-haiku-4-5", "simple")
    wire = msgspec.to_builtins(result)
    assert wire["route"]["candidates"][0]["model"] == "claude-haiku-4-5"
    assert result.cost_usd == pytest.approx((5 * 1.0 + 5 * 5.0) / 1e6)  # priced by [[models]]


async def test_a_failing_choice_fails_over_to_the_next_allowed_candidate() -> None:
    router, seen = routed([TRIAGE])
    seen["openrouter"].outcomes.append(fail(ServerError, 500))
    result = await router.execute(prompt="x", task_type="triage")
    assert (result.backend, result.attempts) == ("gemini", 2)
    assert seen["gemini"].calls[0].model == "gemini-flash-1.5"
    assert result.route is not None
    assert result.route.backend == "openrouter"  # the decision, as made


async def test_a_request_with_tools_requires_backends_that_take_tools() -> None:
    cfg = Config(
        backends=[
            BackendConfig(provider="ollama", name="plain", models=["m"], capabilities=[]),
            BackendConfig(provider="ollama", name="tooled", models=["m"], capabilities=["tools"]),
        ],
        routing=msgspec.convert({"rules": [{"task_type": "t", "prefer": [{"model": "m"}]}]}, RoutingSettings),
    )
    router = Router(cfg, providers={"plain": Scripted("plain"), "tooled": Scripted("tooled")})
    assert (await router.execute(prompt="x", task_type="t")).backend == "plain"
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    result = await router.execute(prompt="x", task_type="t", tools=[tool])
    assert result.backend == "tooled"
    assert result.route is not None
    assert result.route.candidates[0].rejected_because == "lacks tools"


async def test_a_call_no_candidate_can_serve_within_the_caps_is_refused_before_any_upstream_call() -> None:
    router, seen = routed([TRIAGE])
    with pytest.raises(NoRouteError) as info:
        await router.execute(prompt="x", task_type="triage", max_cost_usd=1e-9, agent_id="a")
    assert [c["rejected_because"].split(" over ")[1] for c in info.value.data["candidates"]] == [
        "max_cost_usd 1e-09",
        "max_cost_usd 1e-09",
    ]
    assert all(not p.calls for p in seen.values())
    assert router.get_agent_usage("a").errors == 1


async def test_a_named_model_with_a_cost_cap_is_checked_too() -> None:
    router, _ = routed()
    with pytest.raises(NoRouteError):
        await router.execute(prompt="x", model="pricey", max_cost_usd=0.01)
    result = await router.execute(prompt="x", model="gpt-4o", max_cost_usd=0.1)
    assert result.route is not None
    assert (result.backend, result.route.reason) == ("openai", "model gpt-4o requested: openai/gpt-4o")


async def test_without_a_routing_table_a_call_without_a_model_keeps_the_default_model() -> None:
    router = Router(Config(backends=[BackendConfig(provider="mock")]))
    result = await router.execute(prompt="x")
    assert (result.model, result.route) == ("mock", None)
    assert "route" not in msgspec.to_builtins(result)


async def test_the_budget_hook_is_read_before_deciding_and_a_low_budget_downgrades() -> None:
    class Budgets:
        def __init__(self) -> None:
            self.asked: list[str] = []

        async def chain_state(self, chain_id: str) -> BudgetState | None:
            self.asked.append(chain_id)
            return BudgetState(remaining_usd=0.5, total_usd=10.0)

    rule = {**TRIAGE, "prefer": [{"provider": "openai", "model": "gpt-4o"}, *TRIAGE["prefer"]]}
    router, _ = routed([rule])
    router.chain_budgets = budgets = Budgets()
    result = await router.execute(prompt="x", task_type="triage", chain_id="c9")
    assert budgets.asked == ["c9"]
    assert result.model == "gemini-flash-1.5"  # the cheapest allowed
    assert (await router.execute(prompt="x", task_type="triage")).backend == "openai"  # no chain: not asked
    assert budgets.asked == ["c9"]


async def test_the_chain_tier_sticks_across_execute_calls_but_not_across_dry_runs() -> None:
    router, _ = routed(cloud_model="claude-opus-5-5")
    await router.resolve_route(task="analyze the outage", chain_id="c")
    assert router.policy.chain_tier("c") is None
    first = await router.execute(prompt="analyze the outage", chain_id="c")
    assert (first.backend, first.model) == ("anthropic", "claude-opus-5-5")
    again = await router.execute(prompt="thanks!", chain_id="c")
    assert again.route is not None
    assert (again.route.complexity, again.model) == ("complex", "claude-opus-5-5")


async def test_every_decision_is_logged_as_one_json_line(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    router, _ = routed([TRIAGE], log=log)
    await router.execute(prompt="x", task_type="triage")
    await router.resolve_route(task_type="triage", estimated_tokens=100)
    with pytest.raises(NoRouteError):
        await router.execute(prompt="x", task_type="triage", max_cost_usd=0)
    await router.execute(prompt="x", model="gpt-4o")  # not routed: nothing to log
    await router.aclose()
    lines = [msgspec.json.decode(line) for line in log.read_bytes().splitlines()]
    assert len(lines) == 3
    assert lines[0]["inputs"]["task_type"] == "triage"
    assert lines[0]["outcome"]["decision"]["model"] == "claude-haiku-4-5"
    assert lines[1]["dry_run"] is True
    assert lines[2]["outcome"]["no_route"]["type"] == "no_route"
    assert oct(log.stat().st_mode & 0o777) == "0o600"


# -- over JSON-RPC -----------------------------------------------------------------------------------------


async def _rpc(router: Router, *calls: tuple[str, Any]) -> list[dict[str, Any]]:
    replies: list[bytes] = []
    dispatcher = Dispatcher(build_table(router, _LocalServer()), error_mapper=error_mapper)
    async with anyio.create_task_group() as tg:
        session = dispatcher.session(tg, replies.append, peer="test")
        for i, (method, params) in enumerate(calls):
            session.handle_frame(msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
            with anyio.fail_after(5):
                await session.wait_idle()
    return [msgspec.json.decode(r) for r in replies]


async def test_resolve_route_over_json_rpc() -> None:
    router, seen = routed([{**TRIAGE, "max_cost_per_1k": 0.001}])
    ok, refused, bad, executed = await _rpc(
        router,
        ("resolve_route", {"task_type": "triage", "estimated_tokens": 2000, "tags": ["x"], "chain_id": "c"}),
        ("resolve_route", {"task_type": "triage", "max_cost_usd": 0}),
        ("resolve_route", {"task_type": "triage", "require": ["telepathy"]}),
        ("execute", {"prompt": "hello", "task_type": "triage"}),
    )
    decision = ok["result"]
    assert {k: decision[k] for k in ("provider", "model", "backend", "rule", "complexity", "estimated_tokens")} == {
        "provider": "gemini", "model": "gemini-flash-1.5", "backend": "gemini", "rule": "triage",
        "complexity": "simple", "estimated_tokens": 2000,
    }  # fmt: skip
    assert decision["candidates"][0]["rejected_because"].startswith("cost 0.002/1k over")
    assert refused["error"]["code"] == -32003
    assert refused["error"]["data"]["type"] == "no_route"
    assert len(refused["error"]["data"]["candidates"]) == 2
    assert bad["error"]["code"] == -32602
    assert executed["result"]["route"]["model"] == "gemini-flash-1.5"
    assert [len(p.calls) for p in seen.values()] == [0, 1, 0, 0, 0, 0]


async def test_resolve_route_with_the_mock_only_defaults() -> None:
    router = Router(Config(backends=[BackendConfig(provider="mock")], models=[ModelPrice(name="x", input=1, output=1)]))
    (reply,) = await _rpc(router, ("resolve_route", {"task": "hello"}))
    assert (reply["result"]["provider"], reply["result"]["model"]) == ("mock", "mock")


async def test_resolve_route_reads_the_chains_budget_when_a_store_is_wired() -> None:
    class Budgets:
        async def chain_state(self, chain_id: str) -> BudgetState | None:
            await anyio.lowlevel.checkpoint()
            return BudgetState(remaining_usd=0.0001, total_usd=1.0) if chain_id == "poor" else None

    rule = {**TRIAGE, "prefer": [{"provider": "openai", "model": "gpt-4o"}, *TRIAGE["prefer"]]}
    router, _ = routed([rule])
    router.chain_budgets = Budgets()
    rich, poor = await _rpc(
        router,
        ("resolve_route", {"task_type": "triage", "chain_id": "rich"}),
        ("resolve_route", {"task_type": "triage", "chain_id": "poor", "estimated_tokens": 100}),
    )
    assert rich["result"]["model"] == "gpt-4o"
    assert poor["result"]["model"] == "gemini-flash-1.5"  # low budget: cheapest, and within what is left
    assert poor["result"]["candidates"][0]["rejected_because"].startswith("estimated $")
