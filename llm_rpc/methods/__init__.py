"""JSON-RPC methods: thin adapters from the method table to the core, and the one table that maps
every domain error ``type`` to its JSON-RPC code."""

from __future__ import annotations

from typing import Any

from llm_rpc import _codes
from llm_rpc._secret import redact
from llm_rpc.core.router import Router
from llm_rpc.errors import LLMError
from llm_rpc.methods import admin, batch, budget, execute, metrics, route, usage
from llm_rpc.methods.admin import ServerHooks
from llm_rpc.protocol import MethodTable, RpcError

__all__ = ["ServerHooks", "build_table", "error_mapper"]


def build_table(router: Router, server: ServerHooks) -> MethodTable:
    """Every method llm-rpc serves, bound to one router and one server."""
    table = MethodTable()
    execute.register(table, router)
    batch.register(table, router)
    admin.register(table, router, server)
    usage.register(table, router)
    route.register(table, router)
    budget.register(table, router)
    metrics.register(table, router, server)
    metrics.instrument(table, router.metrics)  # last: it wraps every method registered above
    return table


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def error_mapper(exc: Exception) -> RpcError | None:
    """Domain errors → JSON-RPC errors (code by ``type``); anything else is not ours to map."""
    if isinstance(exc, LLMError):
        code = _codes.DOMAIN_CODES.get(exc.type, _codes.DOMAIN_CODES["backend_error"])
        return RpcError(code, redact(exc.message), _scrub(exc.to_data()))
    return None
