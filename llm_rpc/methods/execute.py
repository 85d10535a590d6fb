"""``execute``: one LLM call through the router."""

from __future__ import annotations

from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.protocol.registry import NOT_INLINE
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

    def execute_nowait(params: ExecuteParams, ctx: RequestContext) -> ExecuteResult | object:
        result = router.execute_nowait(params)
        return NOT_INLINE if result is None else result

    table.add(
        "execute",
        execute,
        try_inline=execute_nowait,
        params=ExecuteParams,
        result=ExecuteResult,
        summary="Run one LLM call",
        errors=EXECUTE_ERRORS,
    )
