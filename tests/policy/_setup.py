"""One config for the routing tests: cloud and local backends, tags, and prices for every model used."""

from __future__ import annotations

from typing import Any

import msgspec

from llm_rpc.config import Config, RoutingSettings
from llm_rpc.core.policy import RoutingPolicy

BACKENDS: list[dict[str, Any]] = [
    {"provider": "openrouter", "models": ["*/*"], "priority": 1},
    {"provider": "gemini", "priority": 2},
    {"provider": "openai", "priority": 3},
    {"provider": "anthropic", "priority": 4},
    {
        "provider": "openai-compatible",
        "name": "local-qwen",
        "base_url": "http://127.0.0.1:8000/v1",
        "models": ["qwen2.5-coder"],
        "local": True,
        "tags": ["auto_apply"],
        "priority": 5,
    },
    {"provider": "ollama", "name": "ollama", "models": ["llama3.2"], "local": True, "priority": 6},
]

#: USD per 1M tokens; ``pricey`` exists to blow caps.
PRICES: list[dict[str, Any]] = [
    {"name": "claude-haiku-4-5", "input": 1.0, "output": 5.0},
    {"name": "gemini-flash-1.5", "input": 0.075, "output": 0.30},
    {"name": "pricey", "input": 900.0, "output": 1800.0},
]

TRIAGE: dict[str, Any] = {
    "name": "triage",
    "task_type": "triage",
    "prefer": [{"provider": "openrouter", "model": "claude-haiku-4-5"}],
    "max_cost_per_1k": 0.5,
    "fallback": {"provider": "gemini", "model": "gemini-flash-1.5"},
    "exclude": [{"tag": "auto_apply"}],
}


def config(rules: list[dict[str, Any]] | None = None, **routing: Any) -> Config:
    """The test config with these ``[[routing.rules]]`` and ``[routing]`` keys."""
    raw = {
        "backends": BACKENDS,
        "models": PRICES,
        "routing": {"rules": rules or [], **routing},
    }
    return msgspec.convert(raw, Config)


def policy(rules: list[dict[str, Any]] | None = None, **routing: Any) -> RoutingPolicy:
    return RoutingPolicy.from_config(config(rules, **routing))


def routing_table(rules: list[dict[str, Any]]) -> RoutingSettings:
    return msgspec.convert({"rules": rules}, RoutingSettings)
