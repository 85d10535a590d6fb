"""Delegation-chain budgets: the store seam (``BudgetStore``), ``open_store(url)``, and ``Budgets``, what
the router uses to hold a call's budget while it runs (contracts/budgets.md).

A call with a ``chain_id`` (or a ``BudgetTracker``) is held before anything is sent upstream: its
prompt (estimated) plus its ``max_tokens`` in tokens, and that many tokens at the dearest price among
the backends that may serve it in USD. When the call ends the hold is settled at the real usage, or
released when the call failed, or settled at the prompt's cost when it was cut off after the prompt
went out. Settling is shielded from the cancellation that may have ended the call.

Stores: ``memory`` (``_memory.py``, the default), ``sqlite:///path`` (``_sqlite.py``),
``redis://host:port/db`` (``_redis.py``). One ``Ledger`` (``_ledger.py``) holds the rules for the
first two; the Redis script mirrors it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import anyio

from llm_rpc.config import BudgetSettings
from llm_rpc.core.budgets._ledger import (
    BudgetListResult,
    BudgetRequestError,
    BudgetSpendResult,
    BudgetStatus,
    OpenSpec,
    Reservation,
    Settlement,
    State,
    from_nusd,
    to_nusd,
)
from llm_rpc.core.budgets._memory import MemoryBudgetStore
from llm_rpc.core.budgets._tracker import BudgetTracker
from llm_rpc.core.policy import BudgetState
from llm_rpc.core.pricing import Price
from llm_rpc.errors import ConfigError, LLMBudgetExceededError, LLMError
from llm_rpc.types import BudgetHealth, BudgetOverrun, BudgetRemaining, ExecuteResult

__all__ = [
    "Ask",
    "BudgetListResult",
    "BudgetRequestError",
    "BudgetSpendResult",
    "BudgetStatus",
    "BudgetStore",
    "BudgetTracker",
    "Budgets",
    "CallBudget",
    "MemoryBudgetStore",
    "OpenSpec",
    "Reservation",
    "Settlement",
    "State",
    "ask_for",
    "from_nusd",
    "open_store",
    "to_nusd",
]

log = logging.getLogger("llm_rpc.budgets")

#: A settlement that takes longer than this is left to the lease (the reservation then lapses).
SETTLE_TIMEOUT = 10.0
_SEEN_MAX = 1000  # chains whose last known remaining the metrics may show (sqlite, redis)


class BudgetStore(Protocol):
    """Where budgets live. Every store has the same semantics (tests/budgets holds them to it).

    Amounts are tokens and integer nano-dollars (``nusd``); ``nusd=None`` on ``reserve`` means the
    model has no price.
    """

    kind: str
    inline: bool

    @property
    def location(self) -> str:
        """Where the store is, for ``health`` (a path, ``host:port/db``; never a password)."""

    async def open(self, spec: OpenSpec) -> BudgetStatus: ...

    async def reserve(
        self, chain_id: str, tokens: int, nusd: int | None, lease_s: float, *, model: str | None = None
    ) -> Reservation:
        """Hold the amounts on the chain and every ancestor, whole, or raise ``LLMBudgetExceededError``."""

    async def settle(self, reservation_id: str, tokens: int, nusd: int) -> Settlement: ...

    async def release(self, reservation_id: str) -> Settlement: ...

    async def spend(self, chain_id: str, tokens: int, nusd: int, *, force: bool = False) -> BudgetSpendResult: ...

    async def status(self, chain_id: str) -> BudgetStatus: ...

    async def close(self, chain_id: str) -> BudgetStatus: ...

    async def list_chains(
        self, parent_id: str | None = None, state: State | None = None, limit: int = 1000
    ) -> list[BudgetStatus]: ...

    def health(self) -> dict[str, int | float]: ...

    def advance(self, seconds: float) -> None:
        """Move the store's clock forward (tests only)."""

    async def start(self) -> None:
        """Get ready to serve (open a file, recover); otherwise the first operation does it."""

    async def aclose(self) -> None: ...


def open_store(url: str = "memory", *, retention: float = 86400.0, default_ttl: float | None = None) -> BudgetStore:
    """The store for ``url``: ``memory``, ``sqlite:///relative``, ``sqlite:////absolute`` or ``redis://host:port/db``.

    Raises:
        ConfigError: an unknown scheme, a bad path, a SQLite file another server holds, or no
            ``redis`` package for a Redis URL.
    """
    if url == "memory":
        return MemoryBudgetStore(retention=retention, default_ttl=default_ttl)
    if url.startswith("sqlite:"):
        from llm_rpc.core.budgets._sqlite import SqliteBudgetStore

        return SqliteBudgetStore(url, retention=retention, default_ttl=default_ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        try:
            import redis  # noqa: F401
        except ImportError:
            raise ConfigError(
                "a redis:// budget store needs the redis package: pip install 'llm-rpc[redis]'",
                path="budgets.store",
            ) from None
        from llm_rpc.core.budgets._redis import RedisBudgetStore

        return RedisBudgetStore(url, retention=retention, default_ttl=default_ttl)
    raise ConfigError(
        f"unknown budget store {url!r}: use memory, sqlite:///path or redis://host:port/db", path="budgets.store"
    )


@dataclass(slots=True, frozen=True)
class Ask:
    """What one call asks of its chain before it is sent."""

    chain_id: str
    tokens: int
    nusd: int | None  # None: some backend that may serve it has no price
    input_tokens: int
    input_nusd: int
    lease_s: float
    model: str


def ask_for(
    chain_id: str,
    *,
    prompt_tokens: int,
    max_tokens: int,
    prices: Sequence[Price | None],
    lease_s: float,
    model: str,
) -> Ask:
    """The hold for a call: prompt + ``max_tokens`` tokens, at the dearest of ``prices`` (USD per 1M)."""
    if not prices or any(p is None for p in prices):
        nusd: int | None = None
        input_nusd = 0
    else:
        known = [p for p in prices if p is not None]
        # tokens * (USD per 1M tokens) * 1000 = nano-dollars.
        nusd = max(math.ceil(prompt_tokens * p.input * 1000 + max_tokens * p.output * 1000 - 1e-6) for p in known)
        input_nusd = max(math.ceil(prompt_tokens * p.input * 1000 - 1e-6) for p in known)
    return Ask(chain_id, prompt_tokens + max_tokens, nusd, prompt_tokens, input_nusd, lease_s, model)


class CallBudget:
    """One call's hold: where it is, what it holds, and whether the prompt has gone upstream."""

    __slots__ = ("ask", "reservation", "sent", "store")

    def __init__(self, store: BudgetStore, ask: Ask, reservation: Reservation) -> None:
        self.store = store
        self.ask = ask
        self.reservation = reservation
        #: True while an attempt is with a provider: a call cut off then settles at its prompt's cost.
        self.sent = False


class Budgets:
    """The router's budgets: its store, and holding each budgeted call from before it is sent to its end."""

    def __init__(self, settings: BudgetSettings | None = None, *, store: BudgetStore | None = None) -> None:
        self.settings = settings if settings is not None else BudgetSettings()
        s = self.settings
        self.store: BudgetStore = (
            store
            if store is not None
            else open_store(s.store, retention=s.retention_seconds, default_ttl=s.default_ttl_seconds)
        )
        self._seen: dict[str, tuple[int | None, int | None]] = {}

    @property
    def inline(self) -> bool:
        """Holds can be taken without waiting (the memory store): the router's inline path may use them."""
        return self.store.inline

    @property
    def default_max_tokens(self) -> int:
        return self.settings.default_max_tokens

    def lease_for(self, timeout: float) -> float:
        """A call's lease: its deadline plus ``lease_seconds``, so it never lapses while the call may run."""
        return timeout + self.settings.lease_seconds

    # -- holding a call

    async def hold(self, ask: Ask, store: BudgetStore | None = None) -> CallBudget | None:
        """Reserve for one call, before it is sent; None: its chain has no budget and
        ``[budgets] unknown_chains = "allow"`` (never for a ``BudgetTracker``'s ``store``).

        Raises:
            LLMBudgetExceededError: it does not fit (``data.reason``), or the store cannot be reached.
        """
        strict = store is not None
        store = store if store is not None else self.store
        try:
            reservation = await store.reserve(ask.chain_id, ask.tokens, ask.nusd, ask.lease_s, model=ask.model)
        except LLMBudgetExceededError as exc:
            if not strict and self._unbudgeted(exc):
                return None
            raise
        return CallBudget(store, ask, reservation)

    def hold_nowait(self, ask: Ask) -> CallBudget | None:
        """``hold`` on the memory store, synchronously (the router's inline path)."""
        store = self.store
        assert isinstance(store, MemoryBudgetStore)
        try:
            reservation = store.ledger.reserve(ask.chain_id, ask.tokens, ask.nusd, ask.lease_s, model=ask.model)
        except LLMBudgetExceededError as exc:
            if self._unbudgeted(exc):
                return None
            raise
        return CallBudget(store, ask, reservation)

    def _unbudgeted(self, exc: LLMBudgetExceededError) -> bool:
        return exc.data.get("reason") == "unknown_chain" and self.settings.unknown_chains == "allow"

    @staticmethod
    def _amounts(hold: CallBudget, result: ExecuteResult) -> tuple[int, int]:
        usage = result.usage.total_tokens
        tokens = usage if usage > 0 else hold.reservation.tokens  # no usage reported: the safe side
        cost = result.cost_usd
        return tokens, to_nusd(cost) if cost is not None else 0

    def _report(self, hold: CallBudget, settled: Settlement, result: ExecuteResult) -> None:
        chain_id = hold.ask.chain_id
        self._remember(chain_id, settled.remaining_tokens, settled.remaining_nusd)
        overrun = None
        if settled.overrun_tokens or settled.overrun_nusd:
            overrun = BudgetOverrun(tokens=settled.overrun_tokens, usd=from_nusd(settled.overrun_nusd))
            log.warning(
                "a call spent more than it reserved",
                extra={"chain_id": chain_id, "overrun_tokens": overrun.tokens, "overrun_usd": overrun.usd},
            )
        result.budget = BudgetRemaining(
            chain_id=chain_id,
            remaining_tokens=settled.remaining_tokens,
            remaining_usd=from_nusd(settled.remaining_nusd) if settled.remaining_nusd is not None else None,
            overrun=overrun,
        )

    async def finish(self, hold: CallBudget, result: ExecuteResult | None) -> None:
        """End a call's hold: settle at its usage (``result``), at its prompt's cost (cut off after it was
        sent), or release it (failed, or never sent). Shielded; a store error is logged, never raised."""
        rid = hold.reservation.id
        store = hold.store
        with anyio.CancelScope(shield=True), anyio.move_on_after(SETTLE_TIMEOUT):
            try:
                if result is not None:
                    tokens, nusd = self._amounts(hold, result)
                    self._report(hold, await store.settle(rid, tokens, nusd), result)
                elif hold.sent:
                    await store.settle(rid, hold.ask.input_tokens, hold.ask.input_nusd)
                else:
                    await store.release(rid)
            except Exception as exc:
                log.warning(
                    "could not end a budget reservation; its lease will release it",
                    extra={"chain_id": hold.ask.chain_id, "reservation": rid, "error": type(exc).__name__},
                )

    def finish_nowait(self, hold: CallBudget, result: ExecuteResult | None) -> None:
        """``finish`` on the memory store, synchronously (the inline path never sends then waits)."""
        store = hold.store
        assert isinstance(store, MemoryBudgetStore)
        rid = hold.reservation.id
        if result is None:
            store.ledger.release(rid)
            return
        tokens, nusd = self._amounts(hold, result)
        self._report(hold, store.ledger.settle(rid, tokens, nusd), result)

    # -- views

    async def chain_state(self, chain_id: str) -> BudgetState | None:
        """What the chain has left, for the routing policy (``ChainBudgets``); None: no such chain."""
        try:
            s = await self.store.status(chain_id)
        except LLMError:
            return None
        self._remember(chain_id, s.remaining_tokens, to_nusd(s.remaining_usd) if s.remaining_usd is not None else None)
        return BudgetState(
            remaining_usd=s.remaining_usd,
            total_usd=s.total_usd,
            remaining_tokens=s.remaining_tokens,
            total_tokens=s.total_tokens,
        )

    def _remember(self, chain_id: str, tokens: int | None, nusd: int | None) -> None:
        seen = self._seen
        if chain_id not in seen and len(seen) >= _SEEN_MAX:
            seen.pop(next(iter(seen)))
        seen[chain_id] = (tokens, nusd)

    def open_chains_remaining(self, limit: int) -> list[tuple[str, str, float]]:
        """``(chain_id, unit, remaining)`` for the metrics: live for the memory store, else as last seen
        by this process (metrics only: no budget check ever reads this)."""
        store = self.store
        if isinstance(store, MemoryBudgetStore):
            return store.open_chains_remaining(limit)
        out: list[tuple[str, str, float]] = []
        for chain_id, (tokens, nusd) in list(self._seen.items())[-limit:]:
            if tokens is not None:
                out.append((chain_id, "tokens", float(tokens)))
            if nusd is not None:
                out.append((chain_id, "usd", from_nusd(nusd)))
        return out[:limit]

    def health(self) -> BudgetHealth:
        store = self.store
        figures = store.health()
        return BudgetHealth(
            store=store.kind,
            location=store.location,
            recovered_reservations=int(figures.get("recovered_reservations", 0)),
            recovered_tokens=int(figures.get("recovered_tokens", 0)),
            recovered_usd=float(figures.get("recovered_usd", 0.0)),
        )

    async def start(self) -> None:
        """Open the store before serving: a store that cannot open fails the start, not a call.

        Raises:
            ConfigError: the store cannot be opened (a SQLite file another server holds).
        """
        await self.store.start()

    async def aclose(self) -> None:
        await self.store.aclose()
