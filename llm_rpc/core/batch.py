"""``execute_batch``: many calls at once, results in input order, one failure never fails the batch.

Items run concurrently in one task group, at most ``concurrency`` at a time; the wall time follows
the slowest item, not the sum. With ``fail_fast`` the first error cancels the items still running
or waiting, which then report ``cancelled``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import anyio

from llm_rpc import errors
from llm_rpc.types import ExecuteParams, ExecuteResult

__all__ = ["BatchOutcome", "run_batch"]

Outcome = ExecuteResult | errors.LLMError


@dataclass(slots=True)
class BatchOutcome:
    """Each item's result or error, in input order, and the batch's totals."""

    outcomes: list[Outcome]
    wall_ms: float

    @property
    def ok(self) -> int:
        return sum(isinstance(o, ExecuteResult) for o in self.outcomes)

    @property
    def failed(self) -> int:
        return len(self.outcomes) - self.ok

    @property
    def total_tokens(self) -> int:
        return sum(o.usage.total_tokens for o in self.outcomes if isinstance(o, ExecuteResult))

    @property
    def cost_usd(self) -> float | None:
        """Sum of the items' costs; None when any successful item has no price."""
        costs = [o.cost_usd for o in self.outcomes if isinstance(o, ExecuteResult)]
        if any(c is None for c in costs):
            return None
        return round(sum(c for c in costs if c is not None), 9)


async def run_batch(
    execute: Callable[..., Awaitable[ExecuteResult]],
    items: Sequence[ExecuteParams],
    *,
    concurrency: int,
    chain_id: str | None = None,
    fail_fast: bool = False,
    arrived: float | None = None,
) -> BatchOutcome:
    """Run ``items`` through ``execute``; a batch-level ``chain_id`` applies to items that have none.

    ``execute(item, arrived=...)`` is given the batch's arrival (default: now) moved on by the time
    the item waited for a ``concurrency`` slot, so that wait is not counted in its ``overhead_us``."""
    started = time.perf_counter()
    since = started if arrived is None else arrived
    outcomes: list[Outcome | None] = [None] * len(items)
    limiter = anyio.CapacityLimiter(concurrency)

    async with anyio.create_task_group() as tg:

        async def one(index: int, item: ExecuteParams) -> None:
            if chain_id is not None and item.chain_id is None:
                item = _with_chain(item, chain_id)
            try:
                queued = time.perf_counter()
                async with limiter:
                    outcomes[index] = await execute(item, arrived=since + (time.perf_counter() - queued))
            except errors.LLMError as exc:
                outcomes[index] = exc
                if fail_fast:
                    tg.cancel_scope.cancel()

        for index, item in enumerate(items):
            tg.start_soon(one, index, item)

    cancelled = errors.RequestCancelledError("cancelled: an earlier item of the batch failed (fail_fast)")
    return BatchOutcome(
        outcomes=[o if o is not None else cancelled for o in outcomes],
        wall_ms=round((time.perf_counter() - started) * 1000, 3),
    )


def _with_chain(item: ExecuteParams, chain_id: str) -> ExecuteParams:
    import msgspec

    return msgspec.structs.replace(item, chain_id=chain_id)
