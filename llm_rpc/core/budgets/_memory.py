"""The in-process budget store (the default): the ledger's rows in dicts, every operation synchronous.

Being synchronous, it also serves the router's inline path (``execute_nowait``): a reservation there
costs a few dict operations, no task and no thread. Nothing survives the process.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Callable

from llm_rpc.core.budgets._ledger import (
    BudgetSpendResult,
    BudgetStatus,
    Chain,
    Hold,
    Ledger,
    OpenSpec,
    Reservation,
    Settlement,
    State,
)

__all__ = ["MemoryBudgetStore", "MemoryRepo"]


class MemoryRepo:
    """Rows in dicts; leases in a heap (expiry) and per level (``retry_after``, ``in_flight``)."""

    __slots__ = ("_done", "_due", "_kids", "_leases", "_purges", "chains", "holds", "retention")

    def __init__(self, retention: float) -> None:
        self.retention = retention
        self.chains: dict[str, Chain] = {}
        self.holds: dict[str, Hold] = {}
        self._kids: dict[str, dict[str, None]] = {}
        self._leases: dict[str, dict[str, float]] = {}
        self._due: list[tuple[float, str]] = []
        self._purges: list[tuple[float, str]] = []
        self._done: deque[tuple[float, str]] = deque()

    def chain(self, chain_id: str) -> Chain | None:
        return self.chains.get(chain_id)

    def add_chain(self, chain: Chain, purge_at: float | None) -> None:
        self.chains[chain.id] = chain
        if chain.parent_id is not None:
            self._kids.setdefault(chain.parent_id, {})[chain.id] = None
        self.set_purge(chain, purge_at)

    def save(self, chain: Chain) -> None:
        return None  # the rows are live objects

    def set_purge(self, chain: Chain, purge_at: float | None) -> None:
        if purge_at is not None:
            heapq.heappush(self._purges, (purge_at, chain.id))

    def children(self, chain_id: str) -> list[str]:
        kids = self._kids.get(chain_id)
        return list(kids) if kids else []

    def ids(self, parent_id: str | None, limit: int) -> list[str]:
        source = self.chains if parent_id is None else self._kids.get(parent_id, {})
        out: list[str] = []
        for chain_id in source:
            out.append(chain_id)
            if len(out) >= limit:
                break
        return out

    def hold(self, hold_id: str) -> Hold | None:
        return self.holds.get(hold_id)

    def add_hold(self, hold: Hold) -> None:
        self.holds[hold.id] = hold
        for level in hold.path:
            leases = self._leases.get(level)
            if leases is None:
                leases = self._leases[level] = {}
            leases[hold.id] = hold.lease_until
        heapq.heappush(self._due, (hold.lease_until, hold.id))

    def end_hold(self, hold: Hold) -> None:
        for level in hold.path:
            leases = self._leases.get(level)
            if leases is not None:
                leases.pop(hold.id, None)
                if not leases:
                    del self._leases[level]
        self._done.append((hold.done_at or 0.0, hold.id))

    def save_hold(self, hold: Hold) -> None:
        return None

    def due(self, now: float) -> list[Hold]:
        due = self._due
        out: list[Hold] = []
        while due and due[0][0] <= now:
            _, hold_id = heapq.heappop(due)
            hold = self.holds.get(hold_id)
            if hold is not None and hold.state == "active":
                out.append(hold)
        return out

    def earliest(self, chain_id: str) -> float | None:
        leases = self._leases.get(chain_id)
        return min(leases.values()) if leases else None

    def in_flight(self, chain_id: str) -> int:
        leases = self._leases.get(chain_id)
        return len(leases) if leases else 0

    def active(self) -> list[Hold]:
        return [h for h in self.holds.values() if h.state == "active"]

    def purge(self, now: float, tombstone_before: float) -> None:
        done = self._done
        while done and done[0][0] <= tombstone_before:
            _, hold_id = done.popleft()
            hold = self.holds.get(hold_id)
            if hold is not None and hold.state != "active":
                del self.holds[hold_id]
        purges = self._purges
        while purges and purges[0][0] <= now:
            _, chain_id = heapq.heappop(purges)
            chain = self.chains.get(chain_id)
            if chain is None:
                continue
            due = chain.purge_at(self.retention)
            if due is None or due > now:
                continue  # a stale entry (the id was opened again since)
            self._forget(chain)

    def _forget(self, chain: Chain) -> None:
        # Children close and expire no later than their parent, so they are past retention too.
        for kid in self.children(chain.id):
            k = self.chains.get(kid)
            if k is not None:
                self._forget(k)
        self.chains.pop(chain.id, None)
        self._kids.pop(chain.id, None)
        self._leases.pop(chain.id, None)
        if chain.parent_id is not None and (siblings := self._kids.get(chain.parent_id)) is not None:
            siblings.pop(chain.id, None)


class MemoryBudgetStore:
    """Budgets in this process. Every method is synchronous underneath (``ledger``), so it may be
    called inline; the ``async`` methods are the ``BudgetStore`` face of the same calls."""

    kind = "memory"
    inline = True

    def __init__(
        self,
        *,
        retention: float = 86400.0,
        default_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._skew = 0.0
        self._clock = clock
        self.repo = MemoryRepo(retention)
        self.ledger = Ledger(self.repo, self._now, retention=retention, default_ttl=default_ttl)

    def _now(self) -> float:
        return self._clock() + self._skew

    def advance(self, seconds: float) -> None:
        """Move this store's clock forward (tests of leases and expiry)."""
        self._skew += seconds

    @property
    def location(self) -> str:
        return "memory"

    def health(self) -> dict[str, int | float]:
        return {"chains": len(self.repo.chains)}

    async def open(self, spec: OpenSpec) -> BudgetStatus:
        return self.ledger.open(spec)

    async def reserve(
        self, chain_id: str, tokens: int, nusd: int | None, lease_s: float, *, model: str | None = None
    ) -> Reservation:
        return self.ledger.reserve(chain_id, tokens, nusd, lease_s, model=model)

    async def settle(self, reservation_id: str, tokens: int, nusd: int) -> Settlement:
        return self.ledger.settle(reservation_id, tokens, nusd)

    async def release(self, reservation_id: str) -> Settlement:
        return self.ledger.release(reservation_id)

    async def spend(self, chain_id: str, tokens: int, nusd: int, *, force: bool = False) -> BudgetSpendResult:
        return self.ledger.spend(chain_id, tokens, nusd, force=force)

    async def status(self, chain_id: str) -> BudgetStatus:
        return self.ledger.status(chain_id)

    async def close(self, chain_id: str) -> BudgetStatus:
        return self.ledger.close(chain_id)

    async def list_chains(
        self, parent_id: str | None = None, state: State | None = None, limit: int = 1000
    ) -> list[BudgetStatus]:
        return self.ledger.list_chains(parent_id, state, limit)

    def open_chains_remaining(self, limit: int) -> list[tuple[str, str, float]]:
        """(chain_id, unit, remaining) of open chains, for the metrics."""
        out: list[tuple[str, str, float]] = []
        for chain_id in self.repo.ids(None, limit):
            status = self.ledger.status(chain_id)
            if status.state in ("closed", "expired"):
                continue
            if status.remaining_tokens is not None:
                out.append((chain_id, "tokens", float(status.remaining_tokens)))
            if status.remaining_usd is not None:
                out.append((chain_id, "usd", status.remaining_usd))
        return out[:limit]

    async def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
