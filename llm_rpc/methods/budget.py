"""``budget.open``, ``budget.spend``, ``budget.status``, ``budget.close``, ``budget.list``: delegation-chain
budgets (contracts/budgets.md), thin adapters over the router's budget store.

On the memory store every method answers inline (no task); on SQLite and Redis it runs as a task
that awaits the store. A request the store cannot do as asked (reopening a chain with other params,
an unknown chain, a child asking more than its parent has left) answers -32602 with ``data.reason``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from llm_rpc import _codes
from llm_rpc.core.budgets import (
    BudgetListResult,
    BudgetRequestError,
    BudgetSpendResult,
    BudgetStatus,
    MemoryBudgetStore,
    OpenSpec,
    to_nusd,
)
from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext, RpcError

__all__ = ["BudgetChainParams", "BudgetListParams", "BudgetOpenParams", "BudgetSpendParams", "register"]

T = TypeVar("T")

ChainId = Annotated[str, Meta(min_length=1, max_length=256)]
NonNegativeInt = Annotated[int, Meta(ge=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]


class _In(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    pass


class BudgetOpenParams(_In):
    """Open a chain's budget: at least one total, unless ``parent_id`` names the chain it delegates from."""

    chain_id: ChainId
    #: Tokens (prompt and completion) the chain may spend in all, its descendants included.
    total_tokens: NonNegativeInt | None = None
    #: USD the chain may spend in all (calls priced by the price table; USD, not per 1M).
    total_usd: NonNegativeFloat | None = None
    #: The chain this one delegates from: totals default to, and may not exceed, what it has left.
    parent_id: ChainId | None = None
    #: Seconds until the chain expires (default: the config's ``[budgets] default_ttl_seconds``; a
    #: child never outlives its parent).
    ttl_s: Annotated[float, Meta(gt=0)] | None = None
    metadata: dict[str, Any] | None = None
    #: Let calls on models without a price run under a USD total (their cost counted as 0).
    allow_unpriced: bool | None = None

    def __post_init__(self) -> None:
        if self.parent_id is None and self.total_tokens is None and self.total_usd is None:
            raise ValueError("at least one of `total_tokens` and `total_usd` is required (or `parent_id`)")


class BudgetSpendParams(_In):
    """Record spend made outside llm-rpc on a chain (and every ancestor)."""

    chain_id: ChainId
    tokens: NonNegativeInt = 0
    usd: NonNegativeFloat = 0.0
    #: Record it even if it does not fit (it already happened); the chain is then exhausted.
    force: bool = False


class BudgetChainParams(_In):
    chain_id: ChainId


class BudgetListParams(_In):
    """Chains, oldest first: children of ``parent_id``, or every chain; optionally in one ``state``."""

    parent_id: ChainId | None = None
    state: Literal["open", "exhausted", "closed", "expired"] | None = None
    limit: Annotated[int, Meta(ge=1, le=10_000)] = 1000


def _invalid(exc: BudgetRequestError) -> RpcError:
    data = {"type": "invalid_params", **exc.data}
    return RpcError(_codes.INVALID_PARAMS, exc.message, data)


def register(table: MethodTable, router: Router) -> None:
    budgets = router.budgets
    store = budgets.store
    ledger = store.ledger if isinstance(store, MemoryBudgetStore) else None

    def spec(p: BudgetOpenParams) -> OpenSpec:
        return OpenSpec(
            chain_id=p.chain_id,
            total_tokens=p.total_tokens,
            total_usd=p.total_usd,
            parent_id=p.parent_id,
            ttl_s=p.ttl_s,
            metadata=p.metadata,
            allow_unpriced=p.allow_unpriced,
        )

    async def awaited(make: Callable[[], Awaitable[T]]) -> T:
        try:
            return await make()
        except BudgetRequestError as exc:
            raise _invalid(exc) from None

    def now(call: Callable[[], T]) -> T:
        try:
            return call()
        except BudgetRequestError as exc:
            raise _invalid(exc) from None

    # Each method: the async handler (any store) and, on the memory store, the same call inline.

    async def open_(params: BudgetOpenParams, ctx: RequestContext) -> BudgetStatus:
        """Open a delegation chain's budget (idempotent: the same params again return it; others are an
        error). With ``parent_id`` it is a child: every reservation and spend on it counts against
        every ancestor too."""
        return await awaited(lambda: store.open(spec(params)))

    async def spend(params: BudgetSpendParams, ctx: RequestContext) -> BudgetSpendResult:
        """Record spend made outside llm-rpc: all or nothing (``budget_exceeded`` says which chain and
        limit, and what remains), or with ``force`` recorded anyway."""
        return await awaited(
            lambda: store.spend(params.chain_id, params.tokens, to_nusd(params.usd), force=params.force)
        )

    async def status(params: BudgetChainParams, ctx: RequestContext) -> BudgetStatus:
        """A chain's totals, spent, reserved, remaining, children and state."""
        return await awaited(lambda: store.status(params.chain_id))

    async def close(params: BudgetChainParams, ctx: RequestContext) -> BudgetStatus:
        """Freeze a chain and its descendants; its final ledger. What it did not use stays with the parent."""
        return await awaited(lambda: store.close(params.chain_id))

    async def list_(params: BudgetListParams, ctx: RequestContext) -> BudgetListResult:
        """Chains: the children of ``parent_id``, or all; filtered by ``state``."""
        chains = await awaited(lambda: store.list_chains(params.parent_id, params.state, params.limit))
        return BudgetListResult(chains=chains)

    inline: dict[str, Callable[[Any, RequestContext], Any]] = {}
    if ledger is not None:
        led = ledger
        inline = {
            "budget.open": lambda p, ctx: now(lambda: led.open(spec(p))),
            "budget.spend": lambda p, ctx: now(lambda: led.spend(p.chain_id, p.tokens, to_nusd(p.usd), force=p.force)),
            "budget.status": lambda p, ctx: now(lambda: led.status(p.chain_id)),
            "budget.close": lambda p, ctx: now(lambda: led.close(p.chain_id)),
            "budget.list": lambda p, ctx: BudgetListResult(
                chains=now(lambda: led.list_chains(p.parent_id, p.state, p.limit))
            ),
        }
    errors = ("budget_exceeded",)
    for name, handler, params_type, result_type, summary in (
        ("budget.open", open_, BudgetOpenParams, BudgetStatus, "Open a delegation chain's budget"),
        ("budget.spend", spend, BudgetSpendParams, BudgetSpendResult, "Record spend made outside llm-rpc"),
        ("budget.status", status, BudgetChainParams, BudgetStatus, "A chain's budget ledger"),
        ("budget.close", close, BudgetChainParams, BudgetStatus, "Close a chain; its final ledger"),
        ("budget.list", list_, BudgetListParams, BudgetListResult, "List chains"),
    ):
        table.add(
            name,
            handler,
            try_inline=inline.get(name),
            params=params_type,
            result=result_type,
            summary=summary,
            errors=errors,
        )
