"""Property tests: whatever the rules, request and observed state, a decision never names an excluded or
incapable candidate, never exceeds a cost cap, and is the same every time it is computed."""

from __future__ import annotations

import fnmatch
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llm_rpc.config import BackendConfig, Config
from llm_rpc.core.policy import BackendState, BudgetState, RouteState, capabilities_of
from llm_rpc.core.pricing import blended_per_1k
from llm_rpc.errors import NoRouteError
from tests.policy._setup import config, policy

CONFIG: Config = config()
BACKENDS: dict[str, BackendConfig] = {b.backend_name: b for b in CONFIG.backends}
MODELS = ["claude-haiku-4-5", "gemini-flash-1.5", "pricey", "gpt-4o", "gpt-4o-mini", "qwen2.5-coder", "llama3.2",
          "claude-opus-5-5", "gemini-3.8-flash"]  # fmt: skip
CAPS = ["tools", "json_schema", "vision", "local", "long_context"]

targets = st.fixed_dictionaries(
    {"model": st.sampled_from(MODELS)},
    optional={"provider": st.sampled_from([*BACKENDS, "openai", "gemini"])},
)
excludes = st.sampled_from(
    [{"tag": "auto_apply"}, {"provider": "openai"}, {"model": "gpt-4o*"}, {"backend": "ollama"}, {"model": "pricey"}]
)
costs = st.none() | st.floats(min_value=0, max_value=0.01, allow_nan=False)
usd = st.none() | st.floats(min_value=0, max_value=0.05, allow_nan=False)
rules = st.fixed_dictionaries(
    {"task_type": st.sampled_from(["a", "b"])},
    optional={
        "prefer": st.lists(targets, min_size=1, max_size=3),
        "fallback": targets,
        "exclude": st.lists(excludes, max_size=3),
        "require": st.lists(st.sampled_from(CAPS), max_size=2, unique=True),
        "max_cost_per_1k": costs,
        "max_cost_usd": usd,
        "input_output_ratio": st.floats(min_value=0.1, max_value=10),
        "complexity": st.sampled_from(["simple", "critical"]),
    },
)
requests = st.fixed_dictionaries(
    {"task_type": st.sampled_from(["a", "b", "c"])},
    optional={
        "task": st.sampled_from(["hi", "summarize it", "deploy to production", "research this", "x" * 250]),
        "estimated_tokens": st.integers(min_value=0, max_value=20_000),
        "max_tokens": st.integers(min_value=1, max_value=8000),
        "max_cost_usd": usd,
        "require": st.lists(st.sampled_from(CAPS), max_size=2, unique=True),
        "chain_id": st.sampled_from(["c1", "c2"]),
    },
)
budgets = st.none() | st.builds(
    BudgetState,
    remaining_usd=st.none() | st.floats(min_value=0, max_value=1),
    total_usd=st.just(1.0),
    remaining_tokens=st.none() | st.integers(min_value=0, max_value=100_000),
    total_tokens=st.just(100_000),
)
observed = st.dictionaries(
    st.sampled_from(list(BACKENDS)),
    st.builds(
        BackendState, latency_ms=st.none() | st.floats(min_value=0, max_value=60_000), cooling_down=st.booleans()
    ),
)
routing = st.fixed_dictionaries(
    {},
    optional={
        "prefer_local": st.booleans(),
        "allow_cloud_fallback": st.booleans(),
        "local_model": st.sampled_from(["llama3.2", "qwen2.5-coder"]),
        "cloud_model": st.sampled_from(["claude-opus-5-5", "gpt-4o"]),
    },
)


def _excluded(rule: dict[str, Any], backend: BackendConfig, model: str) -> bool:
    for ex in rule.get("exclude", []):
        if "provider" in ex and ex["provider"] not in (backend.provider, backend.backend_name):
            continue
        if "model" in ex and not fnmatch.fnmatchcase(model, ex["model"]):
            continue
        if "backend" in ex and ex["backend"] != backend.backend_name:
            continue
        if "tag" in ex and ex["tag"] not in backend.tags:
            continue
        return True
    return False


@settings(max_examples=400, deadline=None)
@given(st.lists(rules, max_size=3), requests, budgets, observed, routing)
def test_a_decision_never_breaks_a_rule_or_a_cap(
    rule_list: list[dict[str, Any]],
    request: dict[str, Any],
    budget: BudgetState | None,
    backends: dict[str, BackendState],
    settings_: dict[str, Any],
) -> None:
    p = policy(rule_list, **settings_)
    inputs = p.inputs(**request)
    state = RouteState(budget=budget, backends=backends)
    try:
        decision = p.decide(inputs, state)
    except NoRouteError as exc:
        refusal = exc.to_data()
        with pytest.raises(NoRouteError) as again:
            p.decide(inputs, state)
        assert again.value.to_data() == refusal  # deterministic
        assert all(c["rejected_because"] for c in refusal["candidates"])
        return
    assert msgspec.to_builtins(p.decide(inputs, state)) == msgspec.to_builtins(decision)  # deterministic

    assert decision.backend is not None
    backend = BACKENDS[decision.backend]
    caps = capabilities_of(backend)
    rule: dict[str, Any] = {}
    if decision.rule is not None:
        rule = rule_list[int(decision.rule.removeprefix("rules[").removesuffix("]"))]
    assert set(request.get("require", [])) <= caps
    assert set(rule.get("require", [])) <= caps
    assert not _excluded(rule, backend, decision.model)
    chosen = [c for c in decision.candidates if (c.backend, c.model) == (decision.backend, decision.model)]
    assert chosen
    assert chosen[0].rejected_because is None

    price = p.prices.option_price(decision.model, provider=backend.provider, local=backend.local)
    if rule.get("max_cost_per_1k") is not None:
        assert price is not None
        ratio = rule.get("input_output_ratio") or 3.0
        assert blended_per_1k(price, ratio) <= rule["max_cost_per_1k"] + 1e-12
    for cap in (request.get("max_cost_usd"), rule.get("max_cost_usd")):
        if cap is not None:
            assert decision.estimated_cost_usd is not None
            assert decision.estimated_cost_usd <= cap
    if budget is not None and budget.remaining_usd is not None and decision.estimated_cost_usd is not None:
        assert decision.estimated_cost_usd <= budget.remaining_usd
    local_only = settings_.get("prefer_local", True) and settings_.get("allow_cloud_fallback") is False
    if local_only and not rule.get("prefer") and not rule.get("fallback"):
        assert backend.local
