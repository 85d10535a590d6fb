"""``execute``: one LLM call through the router."""

from __future__ import annotations

from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.types import ExecuteParams, ExecuteResult

__all__ = ["register"]

EXECUTE_ERRORS = (
    "no_route",
    "timeout",
    "backend_error",
    "rate_limited",
    "overloaded",
    "server_error",
    "connection",
    "protocol",
    "auth",
    "billing",
    "quota_exceeded",
    "bad_request",
    "content_filter",
)


def register(table: MethodTable, router: Router) -> None:
    async def execute(params: ExecuteParams, ctx: RequestContext) -> ExecuteResult:
        """Run a prompt (or a message list) on the model the router picks and return the normalized result."""
        return await router.execute(params)

    table.add(
        "execute",
        execute,
        params=ExecuteParams,
        result=ExecuteResult,
        summary="Run one LLM call",
        errors=EXECUTE_ERRORS,
    )
