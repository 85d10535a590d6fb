"""``BudgetTracker``: a chain budget held in this process, for in-process calls (llm-connect's request).

::

    tracker = BudgetTracker(total=4000)              # this proposal may spend 4000 tokens
    await router.execute(prompt="...", budget=tracker)
    reviewer = tracker.child(total=1000)             # a delegate: at most 1000 of what is left
    await router.execute(prompt="...", budget=reviewer)
    tracker.remaining                                # what is left for the whole chain

Every call passed the same tracker (or one of its children) counts against it, however many run at
once; a call that does not fit raises ``LLMBudgetExceededError`` before anything is sent.
"""

from __future__ import annotations

from typing import Any

from llm_rpc.core.budgets._ledger import (
    BudgetRequestError,
    BudgetSpendResult,
    BudgetStatus,
    OpenSpec,
    Reservation,
    Settlement,
    new_id,
    to_nusd,
)
from llm_rpc.core.budgets._memory import MemoryBudgetStore

__all__ = ["BudgetTracker"]


class BudgetTracker:
    """A delegation-chain budget in this process, shared by the calls it is passed to (``budget=``).

    ``total`` is in tokens; ``total_usd`` in USD (a call on a model without a price is then refused,
    unless ``allow_unpriced``). At least one is required for a root tracker; a ``child`` defaults to,
    and may not exceed, what its parent has left, and every call on it counts against the parent too.

    Raises:
        ValueError: no total, or a child asking more than its parent has left.
    """

    __slots__ = ("chain_id", "parent", "store")

    def __init__(
        self,
        total: int | None = None,
        *,
        total_usd: float | None = None,
        allow_unpriced: bool | None = None,
        ttl_s: float | None = None,
        chain_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        _parent: BudgetTracker | None = None,
    ) -> None:
        self.parent = _parent
        self.store: MemoryBudgetStore = _parent.store if _parent is not None else MemoryBudgetStore()
        self.chain_id = chain_id or f"tracker-{new_id()[1:]}"
        spec = OpenSpec(
            chain_id=self.chain_id,
            total_tokens=total,
            total_usd=total_usd,
            parent_id=_parent.chain_id if _parent is not None else None,
            ttl_s=ttl_s,
            metadata=metadata,
            allow_unpriced=allow_unpriced,
        )
        try:
            self.store.ledger.open(spec)
        except BudgetRequestError as exc:
            raise ValueError(exc.message) from None

    def child(
        self,
        total: int | None = None,
        *,
        total_usd: float | None = None,
        allow_unpriced: bool | None = None,
        chain_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> BudgetTracker:
        """A delegate's budget: its caps default to (and may not exceed) what this one has left."""
        return BudgetTracker(
            total,
            total_usd=total_usd,
            allow_unpriced=allow_unpriced,
            chain_id=chain_id,
            metadata=metadata,
            _parent=self,
        )

    def status(self) -> BudgetStatus:
        """The ledger: totals, spent, reserved by calls in flight, remaining, children, state."""
        return self.store.ledger.status(self.chain_id)

    @property
    def remaining(self) -> int | None:
        """Tokens a new call may still reserve (None: no token limit on this chain or above)."""
        return self.status().remaining_tokens

    @property
    def remaining_usd(self) -> float | None:
        return self.status().remaining_usd

    @property
    def spent(self) -> int:
        return self.status().spent_tokens

    @property
    def spent_usd(self) -> float:
        return self.status().spent_usd

    def spend(self, tokens: int = 0, usd: float = 0.0, *, force: bool = False) -> BudgetSpendResult:
        """Record spend made outside llm-rpc: all or nothing, or recorded anyway with ``force``.

        Raises:
            LLMBudgetExceededError: it does not fit (``data.reason``: ``exceeds_budget``, ``in_flight``) or
                the chain is closed or expired.
        """
        return self.store.ledger.spend(self.chain_id, tokens, to_nusd(usd), force=force)

    def reserve(self, tokens: int, usd: float | None = 0.0, *, lease_s: float = 600.0) -> Reservation:
        """Hold ``tokens`` (and ``usd``; None: an unpriced model) for work about to start; then ``settle``
        or ``release`` it. A hold not ended within ``lease_s`` is released by itself.

        Raises:
            LLMBudgetExceededError: it does not fit whole.
        """
        nusd = to_nusd(usd, up=True) if usd is not None else None
        return self.store.ledger.reserve(self.chain_id, tokens, nusd, lease_s)

    def settle(self, reservation: Reservation | str, tokens: int, usd: float = 0.0) -> Settlement:
        """Turn a reservation into spend at the real amounts (idempotent)."""
        rid = reservation.id if isinstance(reservation, Reservation) else reservation
        return self.store.ledger.settle(rid, tokens, to_nusd(usd))

    def release(self, reservation: Reservation | str) -> Settlement:
        """Give a reservation back (idempotent)."""
        rid = reservation.id if isinstance(reservation, Reservation) else reservation
        return self.store.ledger.release(rid)

    def close(self) -> BudgetStatus:
        """Freeze this chain and its children; the final ledger."""
        return self.store.ledger.close(self.chain_id)

    def __repr__(self) -> str:
        s = self.status()
        left = [f"{s.remaining_tokens} tokens"] if s.remaining_tokens is not None else []
        if s.remaining_usd is not None:
            left.append(f"${s.remaining_usd:g}")
        return f"BudgetTracker({self.chain_id!r}, remaining={' + '.join(left) or 'unlimited'}, state={s.state!r})"
