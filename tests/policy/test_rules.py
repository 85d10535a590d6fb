"""Rules, table-driven: which model each request gets, and why; then complexity routing and cost homeostasis."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import llm_rpc
from llm_rpc.core.policy import BackendState, BudgetState, RouteInputs, RouteState
from llm_rpc.errors import ConfigError, NoRouteError
from tests.policy._setup import TRIAGE, policy

CHEAP_CAP = {**TRIAGE, "max_cost_per_1k": 0.001}  # haiku: (3 * 1.0 + 5.0) / 4 / 1000 = 0.002 per 1k
NEVER_AUTO_APPLY = {
    "name": "autonomous",
    "task_type": "code",
    "tags": ["autonomous"],
    "prefer": [{"provider": "local-qwen", "model": "qwen2.5-coder"}, {"provider": "openai", "model": "gpt-4o"}],
    "exclude": [{"tag": "auto_apply"}],
}
CODE = {"name": "code", "task_type": "code", "prefer": [{"provider": "local-qwen", "model": "qwen2.5-coder"}]}
VISION = {
    "name": "look",
    "task_type": "look",
    "require": ["vision"],
    "prefer": [{"provider": "ollama", "model": "llama3.2"}],
    "fallback": {"provider": "openai", "model": "gpt-4o-mini"},
}
BY_AGENT = {"name": "planner", "agent_id": "planner", "prefer": [{"model": "gpt-4o"}]}
CRITICAL_ONLY = {
    "name": "critical-triage",
    "task_type": "triage",
    "complexity": "critical",
    "prefer": [{"provider": "anthropic", "model": "claude-opus-5-5"}],
}

# (rules, request, expected (provider, model, rule), a rejected candidate and its reason, or None)
Expected = tuple[str, str, str | None] | None
CASES: list[tuple[str, list[dict[str, Any]], dict[str, Any], Expected, tuple[str, str] | None]] = [
    ("the triage example takes its preferred model", [TRIAGE], {"task_type": "triage"},
     ("openrouter", "claude-haiku-4-5", "triage"), None),
    ("a cost cap forces the fallback", [CHEAP_CAP], {"task_type": "triage"},
     ("gemini", "gemini-flash-1.5", "triage"), ("claude-haiku-4-5", "cost 0.002/1k over max_cost_per_1k 0.001")),
    ("exclude skips a tagged backend", [NEVER_AUTO_APPLY], {"task_type": "code", "tags": ["autonomous"]},
     ("openai", "gpt-4o", "autonomous"), ("qwen2.5-coder", "excluded (tag auto_apply)")),
    ("a rule's tags must all be on the request", [NEVER_AUTO_APPLY, CODE], {"task_type": "code"},
     ("openai-compatible", "qwen2.5-coder", "code"), None),
    ("require skips an incapable model", [VISION], {"task_type": "look"},
     ("openai", "gpt-4o-mini", "look"), ("llama3.2", "lacks vision")),
    ("a request's own require counts too", [CODE], {"task_type": "code", "require": ["vision"]},
     None, ("qwen2.5-coder", "lacks vision")),
    ("rules match by agent_id", [BY_AGENT], {"task_type": "anything", "agent_id": "planner"},
     ("openai", "gpt-4o", "planner"), None),
    ("rules match by complexity", [CRITICAL_ONLY, TRIAGE], {"task_type": "triage", "task": "delete the production db"},
     ("anthropic", "claude-opus-5-5", "critical-triage"), None),
    ("the first matching rule wins", [CRITICAL_ONLY, TRIAGE], {"task_type": "triage", "task": "sort these"},
     ("openrouter", "claude-haiku-4-5", "triage"), None),
    ("an unknown task_type falls through to complexity routing", [TRIAGE], {"task_type": "poetry", "task": "hi"},
     ("openai-compatible", "qwen2.5-coder", None), None),
]  # fmt: skip


@pytest.mark.parametrize(
    ("rules", "request_", "expected", "rejected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_rules(
    rules: list[dict[str, Any]],
    request_: dict[str, Any],
    expected: Expected,
    rejected: tuple[str, str] | None,
) -> None:
    p = policy(rules)
    if expected is None:
        with pytest.raises(NoRouteError) as info:
            p.resolve(**request_)
        candidates = info.value.data["candidates"]
    else:
        decision = p.resolve(**request_)
        assert (decision.provider, decision.model, decision.rule) == expected
        assert decision.reason
        candidates = msgspec.to_builtins(decision.candidates)
    if rejected is not None:
        model, reason = rejected
        assert {"model": model, "rejected_because": reason}.items() <= next(
            c for c in candidates if c["model"] == model
        ).items()


def test_the_triage_decision_explains_itself() -> None:
    decision = policy([CHEAP_CAP]).resolve(task_type="triage", estimated_tokens=4000, max_tokens=1000)
    assert msgspec.to_builtins(decision) == {
        "provider": "gemini",
        "model": "gemini-flash-1.5",
        "backend": "gemini",
        "rule": "triage",
        "complexity": "simple",
        "reason": "rule triage: fallback gemini/gemini-flash-1.5, no preferred candidate passes",
        "estimated_cost_usd": pytest.approx((3000 * 0.075 + 1000 * 0.30) / 1e6),
        "estimated_tokens": 4000,
        "candidates": [
            {"provider": "openrouter", "model": "claude-haiku-4-5", "backend": "openrouter", "cost_per_1k": 0.002,
             "latency_ms": None, "rejected_because": "cost 0.002/1k over max_cost_per_1k 0.001"},
            {"provider": "gemini", "model": "gemini-flash-1.5", "backend": "gemini", "cost_per_1k": 0.00013125,
             "latency_ms": None},
        ],
    }  # fmt: skip


def test_a_rule_naming_a_provider_sends_the_model_as_written() -> None:
    _, plan = policy([TRIAGE]).plan(RouteInputs(task_type="triage"), RouteState())
    assert plan[0] == ("openrouter", "claude-haiku-4-5")  # no vendor prefix added (decisions.md #5)
    assert plan[1:] == [("gemini", "gemini-flash-1.5")]  # the fallback, should the preferred one fail


def test_when_every_candidate_is_rejected_the_call_is_refused_with_each_reason() -> None:
    rule = {**TRIAGE, "max_cost_per_1k": 0.0001, "fallback": {"provider": "openai", "model": "pricey"}}
    with pytest.raises(NoRouteError) as info:
        policy([rule]).resolve(task_type="triage")
    data = info.value.to_data()
    assert data["type"] == "no_route"
    assert data["rule"] == "triage"
    assert [c["rejected_because"].split(" over ")[1] for c in data["candidates"]] == [
        "max_cost_per_1k 0.0001",
        "max_cost_per_1k 0.0001",
    ]
    assert "no candidate passes" in data["reason"]


def test_a_target_no_backend_serves_is_listed_as_rejected() -> None:
    rule = {"task_type": "t", "prefer": [{"model": "nobody-serves-this"}], "fallback": {"model": "gpt-4o"}}
    decision = policy([rule]).resolve(task_type="t")
    assert (decision.model, decision.rule) == ("gpt-4o", "rules[0]")
    assert msgspec.to_builtins(decision.candidates[0]) == {
        "provider": "", "model": "nobody-serves-this", "backend": None, "cost_per_1k": None, "latency_ms": None,
        "rejected_because": "no backend serves it",
    }  # fmt: skip


def test_observed_latency_over_max_latency_s_and_cooldowns_skip_a_candidate() -> None:
    rule = {**TRIAGE, "max_latency_s": 2, "prefer": [*TRIAGE["prefer"], {"provider": "openai", "model": "gpt-4o"}]}
    p = policy([rule])
    slow = {"openrouter": BackendState(latency_ms=2500.0)}
    decision = p.resolve(task_type="triage", backends=slow)
    assert decision.model == "gpt-4o"
    assert decision.candidates[0].rejected_because == "latency 2500 ms over max_latency_s 2"
    assert decision.candidates[0].latency_ms == 2500.0
    cooling = {"openrouter": BackendState(cooling_down=True)}
    decision = p.resolve(task_type="triage", backends=cooling)
    assert (decision.model, decision.candidates[0].rejected_because) == ("gpt-4o", "cooling down")
    every = {name: BackendState(cooling_down=True) for name in ("openrouter", "openai", "gemini")}
    assert p.resolve(task_type="triage", backends=every).model == "claude-haiku-4-5"  # all cool: the first waits


def test_max_cost_usd_rejects_candidates_whose_estimate_is_over_it() -> None:
    p = policy([TRIAGE])
    # haiku: 750 in + 250 out = (750 * 1 + 250 * 5) / 1e6 = 0.002; flash: 0.00013125
    decision = p.resolve(task_type="triage", estimated_tokens=1000, max_cost_usd=0.001)
    assert decision.model == "gemini-flash-1.5"
    assert decision.candidates[0].rejected_because == "estimated $0.002 over max_cost_usd 0.001"
    with pytest.raises(NoRouteError):
        p.resolve(task_type="triage", estimated_tokens=1000, max_cost_usd=0.0001)


# -- complexity routing ----------------------------------------------------------------------------------


def test_simple_and_moderate_go_to_the_cheapest_local_model_and_complex_to_cloud_model() -> None:
    p = policy(local_model="llama3.2", cloud_model="claude-sonnet-5-5")
    simple = p.resolve(task="summarize this page")
    assert (simple.complexity, simple.backend, simple.model) == ("simple", "ollama", "llama3.2")
    assert simple.reason == "simple task: cheapest capable local model ollama/llama3.2"
    moderate = p.resolve(task="x" * 300)
    assert (moderate.complexity, moderate.model) == ("moderate", "llama3.2")
    complex_ = p.resolve(task="research the market and design a plan")
    assert (complex_.complexity, complex_.provider, complex_.model) == ("complex", "anthropic", "claude-sonnet-5-5")
    assert complex_.reason == "complex task: cloud_model anthropic/claude-sonnet-5-5"


def test_without_cloud_model_the_strongest_allowed_model_serves_critical_tasks() -> None:
    decision = policy().resolve(task="deploy the payment service")
    assert (decision.complexity, decision.model) == ("critical", "claude-opus-5-5")  # the highest price


def test_allow_cloud_fallback_false_never_leaves_local() -> None:
    p = policy(allow_cloud_fallback=False)
    decision = p.resolve(task="audit the security of this code")
    assert decision.backend == "local-qwen"
    assert {c.rejected_because for c in decision.candidates if c.backend not in ("local-qwen", "ollama")} == {
        "not local, and allow_cloud_fallback = false"
    }
    with pytest.raises(NoRouteError):
        p.resolve(task="define entropy", require=["vision"])  # no local model sees images


def test_prefer_local_false_takes_the_cheapest_model_anywhere() -> None:
    decision = policy(prefer_local=False).resolve(task="translate this", require=["long_context"])
    assert decision.model == "gemini-flash-1.5"  # locals lack long_context; flash is the cheapest priced
    assert decision.reason == "simple task: cheapest capable model gemini/gemini-flash-1.5"


def test_a_constraints_only_rule_filters_complexity_routing() -> None:
    rule = {"name": "no-auto", "task_type": "code", "exclude": [{"tag": "auto_apply"}, {"provider": "ollama"}]}
    decision = policy([rule]).resolve(task_type="code", task="rename a variable")
    assert decision.rule == "no-auto"
    assert decision.backend not in ("local-qwen", "ollama")
    assert decision.reason.startswith("rule no-auto (constraints only), simple task: no local model passes")


def test_the_tier_is_sticky_per_chain_and_only_moves_up() -> None:
    p = policy(cloud_model="claude-sonnet-5-5")
    first = p.resolve(task="analyze the incident", chain_id="c1")
    assert first.complexity == "complex"
    follow_up = p.resolve(task="ok thanks", chain_id="c1")
    assert (follow_up.complexity, follow_up.model) == ("complex", "claude-sonnet-5-5")
    assert "(sticky for chain c1)" in follow_up.reason
    assert p.resolve(task="ok thanks", chain_id="other").complexity == "simple"
    assert p.resolve(task="delete the backups", chain_id="c1").complexity == "critical"
    assert p.chain_tier("c1") == "critical"
    p.resolve(task="ok", chain_id="c2", commit=False)  # a dry run leaves no trace
    assert p.chain_tier("c2") is None


def test_a_low_chain_budget_moves_routing_to_the_cheapest_allowed_candidate() -> None:
    p = policy([{**TRIAGE, "prefer": [{"provider": "openai", "model": "gpt-4o"}, *TRIAGE["prefer"]]}])
    plenty = BudgetState(remaining_usd=9.0, total_usd=10.0)
    assert p.resolve(task_type="triage", budget=plenty).model == "gpt-4o"
    low = BudgetState(remaining_usd=1.0, total_usd=10.0)  # 10% left < downgrade_below 0.2
    decision = p.resolve(task_type="triage", budget=low)
    assert decision.model == "gemini-flash-1.5"
    assert decision.reason.endswith("(chain budget low: cheapest allowed)")
    cloud = policy(cloud_model="claude-opus-5-5")
    assert cloud.resolve(task="design it").model == "claude-opus-5-5"
    downgraded = cloud.resolve(task="design it", budget=BudgetState(remaining_tokens=5000, total_tokens=100_000))
    assert (downgraded.complexity, downgraded.backend) == ("complex", "local-qwen")  # free, so the cheapest
    assert downgraded.reason == (
        "complex task: chain budget below downgrade_below, cheapest allowed local-qwen/qwen2.5-coder"
    )


def test_the_chain_budget_caps_each_candidates_estimate() -> None:
    p = policy([TRIAGE])
    tight = BudgetState(remaining_usd=0.001, total_usd=0.001)
    decision = p.resolve(task_type="triage", estimated_tokens=1000, budget=tight)
    assert decision.model == "gemini-flash-1.5"
    assert decision.candidates[0].rejected_because == "estimated $0.002 over the chain's remaining $0.001"
    with pytest.raises(NoRouteError):
        p.resolve(
            task_type="triage", estimated_tokens=5000, budget=BudgetState(remaining_tokens=100, total_tokens=9000)
        )


# -- the Python API ----------------------------------------------------------------------------------------


def test_routing_policy_takes_the_rules_as_dicts_without_a_config() -> None:
    p = llm_rpc.RoutingPolicy(
        rules=[{**TRIAGE, "fallback": {"provider": "gemini", "model": "gemini-3.8-flash"}}],
    )
    decision = p.resolve(task_type="triage")
    # claude-haiku-4-5 has no shipped price, so the cap cannot be checked: the fallback serves
    assert (decision.provider, decision.model) == ("gemini", "gemini-3.8-flash")
    assert decision.candidates[0].rejected_because == "no price, so max_cost_per_1k cannot be checked"


def test_invalid_rules_are_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        llm_rpc.RoutingPolicy(rules=[{"task_type": "x", "prefer": [{"modle": "gpt-4o"}]}])
    assert info.value.data["path"] == "routing.rules[0].prefer[0]"
    with pytest.raises(ConfigError):
        llm_rpc.RoutingPolicy(rules=[{"prefer": [{"provider": "nobody", "model": "m"}]}])
