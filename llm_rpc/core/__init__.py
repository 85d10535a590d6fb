"""Domain logic: routing, policy, budgets, usage. Knows nothing of JSON-RPC or transports."""

from llm_rpc.core.router import Router

__all__ = ["Router"]
