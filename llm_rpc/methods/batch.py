"""``execute_batch``: a thin adapter over ``Router.execute_batch``."""

from __future__ import annotations

from llm_rpc.core.router import Router
from llm_rpc.errors import LLMError
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.types import (
    BatchItem,
    BatchSummary,
    ErrorObject,
    ExecuteBatchParams,
    ExecuteBatchResult,
    ExecuteResult,
)

__all__ = ["register"]


def register(table: MethodTable, router: Router) -> None:
    from llm_rpc.methods import error_mapper

    def to_item(outcome: object) -> BatchItem:
        if isinstance(outcome, LLMError):
            err = error_mapper(outcome)
            assert err is not None
            return BatchItem(error=ErrorObject(code=err.code, message=err.message, data=err.data))
        return BatchItem(ok=outcome)  # type: ignore[arg-type]

    async def execute_batch(params: ExecuteBatchParams, ctx: RequestContext) -> ExecuteBatchResult:
        """Run every item concurrently (at most ``concurrency`` at once); results in input order as
        ``{"ok": result}`` or ``{"error": {code, message, data}}``, so one failure never fails the
        batch; ``fail_fast`` cancels the rest after the first error."""
        outcome = await router.execute_batch(
            params.items,
            concurrency=params.concurrency,
            chain_id=params.chain_id,
            fail_fast=params.fail_fast,
            arrived=ctx.arrived,
        )
        # Each item's overhead_us also counts its own result's encoding, at the measured mean.
        encode_us = router.metrics.encode_seconds() * 1e6
        for result in outcome.outcomes:
            if isinstance(result, ExecuteResult) and result.overhead_us is not None:
                result.overhead_us = round(result.overhead_us + encode_us, 3)
        return ExecuteBatchResult(
            results=[to_item(o) for o in outcome.outcomes],
            summary=BatchSummary(
                ok=outcome.ok,
                failed=outcome.failed,
                total_tokens=outcome.total_tokens,
                cost_usd=outcome.cost_usd,
                wall_ms=outcome.wall_ms,
            ),
        )

    table.add(
        "execute_batch",
        execute_batch,
        params=ExecuteBatchParams,
        result=ExecuteBatchResult,
        summary="Run many execute calls at once",
    )
