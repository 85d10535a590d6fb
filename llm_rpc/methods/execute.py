"""``execute``: one LLM call through the router."""

from __future__ import annotations

from typing import Any

import msgspec

from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.protocol.registry import NOT_INLINE
from llm_rpc.types import ExecuteParams, ExecuteResult

__all__ = ["register"]

EXECUTE_ERRORS = (
    "budget_exceeded",
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
        """Run a prompt (or a message list) on the model the router picks and return the normalized result.

        With ``stream: true``, each piece of the answer goes out first as an ``execute.delta``
        notification ``{request_id, index, delta}``, then this reply with the whole result."""
        if not params.stream:
            return await router.execute(params, arrived=ctx.arrived)
        request_id = msgspec.Raw(ctx.request_id) if ctx.request_id is not None else None

        def on_delta(index: int, delta: dict[str, Any]) -> None:
            ctx.notify("execute.delta", {"request_id": request_id, "index": index, "delta": delta})

        return await router.execute(params, on_delta=on_delta, arrived=ctx.arrived)

    def execute_nowait(params: ExecuteParams, ctx: RequestContext) -> ExecuteResult | object:
        result = router.execute_nowait(params, ctx.arrived)
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
