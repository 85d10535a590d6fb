"""The budget ledger's rules, written once: chains, holds (reservations) and what each operation does.

The memory and SQLite stores run this code over their own storage (a ``Repo``); the Redis store runs
the same rules as one Lua script (``_redis.py``), and one test suite holds all three to them
(tests/budgets). The rules, in short (contracts/budgets.md has the whole story):

* A chain has optional totals (tokens, USD) and, per total, what was **spent** and what is
  **reserved** by calls in flight. A child's path lists it and every ancestor; every reservation and
  spend counts at once against every chain on the path (decisions.md #3: children share, they do
  not carve out).
* A reservation fits whole on every level or is refused: ``exceeds_budget`` when it cannot fit even
  once every reservation in flight has ended (``total - spent``), ``in_flight`` when it would fit but
  for those reservations (``retry_after``: when the earliest lease on that level ends).
* Settling turns a reservation into spend at the real amounts; more than was held is recorded as
  overrun, never hidden. Releasing gives the reservation back. Both are idempotent, and a lease that
  runs out releases the reservation by itself.
* Closed or expired chains accept nothing new; a reservation granted before still settles.

USD is kept as integer nano-dollars (``nusd``) everywhere, so sums are exact and the three stores
agree to the last digit.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from llm_rpc.errors import LLMBudgetExceededError, LLMError

__all__ = [
    "NANO",
    "BudgetListResult",
    "BudgetRequestError",
    "BudgetSpendResult",
    "BudgetStatus",
    "Chain",
    "Hold",
    "Ledger",
    "OpenSpec",
    "Refusal",
    "Repo",
    "Reservation",
    "Settlement",
    "from_nusd",
    "new_id",
    "remaining_of",
    "status_of",
    "to_nusd",
]

NANO = 1_000_000_000
#: How deep a delegation chain may nest (each level is touched by every reservation).
MAX_DEPTH = 32
#: How long a settled or released reservation is remembered, so a repeated settle or release is a no-op.
TOMBSTONE_SECONDS = 600.0

State = Literal["open", "exhausted", "closed", "expired"]
Reason = Literal["exceeds_budget", "in_flight", "unpriced_model", "closed", "expired", "unknown_chain"]

_PREFIX = os.urandom(5).hex()
_COUNTER = itertools.count(1)


def new_id() -> str:
    """A reservation id, unique across processes (a random prefix per process, then a counter)."""
    return f"r{_PREFIX}{next(_COUNTER):x}"


def to_nusd(usd: float, *, up: bool = False) -> int:
    """USD as integer nano-dollars: rounded (``up``: rounded up, for reservations)."""
    value = usd * NANO
    return math.ceil(value - 1e-6) if up else math.floor(value + 0.5)


def from_nusd(nusd: int) -> float:
    return round(nusd / NANO, 9)


# -- the model ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Chain:
    """One chain's row. Amounts include everything on its descendants."""

    id: str
    parent_id: str | None
    path: tuple[str, ...]  # itself first, then its ancestors up to the root
    total_tokens: int | None
    total_nusd: int | None
    allow_unpriced: bool
    created_at: float
    expires_at: float | None
    ttl_s: float | None
    metadata: dict[str, Any] | None
    spec: str
    spent_tokens: int = 0
    spent_nusd: int = 0
    reserved_tokens: int = 0
    reserved_nusd: int = 0
    overrun_tokens: int = 0
    overrun_nusd: int = 0
    closed_at: float | None = None

    def purge_at(self, retention: float) -> float | None:
        """When this chain may be forgotten: ``retention`` after it closed or expired."""
        ends = [t for t in (self.closed_at, self.expires_at) if t is not None]
        return min(ends) + retention if ends else None


HoldState = Literal["active", "settled", "settled_late", "released", "expired", "recovered"]


@dataclass(slots=True)
class Hold:
    """One reservation: what it holds on every level of its path, and until when."""

    id: str
    chain_id: str
    path: tuple[str, ...]
    tokens: int
    nusd: int
    lease_until: float
    state: HoldState = "active"
    done_at: float | None = None
    settled_tokens: int = 0
    settled_nusd: int = 0
    over_tokens: int = 0
    over_nusd: int = 0


class OpenSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What ``budget.open`` was asked, as given (defaults not filled in): reopening compares this."""

    chain_id: str
    total_tokens: int | None = None
    total_usd: float | None = None
    parent_id: str | None = None
    ttl_s: float | None = None
    metadata: dict[str, Any] | None = None
    allow_unpriced: bool | None = None

    def canonical(self) -> str:
        return msgspec.json.encode(msgspec.to_builtins(self), order="sorted").decode()


# -- results -----------------------------------------------------------------------------------------


class BudgetStatus(msgspec.Struct, kw_only=True):
    """A chain's ledger: totals, spent, reserved and remaining (null: no such limit on the chain or above)."""

    chain_id: str
    parent_id: str | None
    state: State
    total_tokens: int | None
    total_usd: float | None
    spent_tokens: int
    spent_usd: float
    reserved_tokens: int
    reserved_usd: float
    #: What a new reservation may still take: the least, over this chain and its ancestors, of
    #: total - spent - reserved (never below 0).
    remaining_tokens: int | None
    remaining_usd: float | None
    #: Spend recorded beyond what was reserved or what remained (a provider over max_tokens, a forced spend).
    overrun_tokens: int
    overrun_usd: float
    #: Reservations in flight against this chain (its own and its descendants').
    in_flight: int
    children: list[str]
    allow_unpriced: bool
    created_at: float
    expires_at: float | None
    closed_at: float | None
    ttl_s: float | None
    metadata: dict[str, Any] | None


class BudgetSpendResult(msgspec.Struct, kw_only=True):
    """What ``budget.spend`` recorded, and what is left."""

    chain_id: str
    tokens: int
    usd: float
    forced: bool
    #: The chain (or an ancestor) has nothing left in some limit.
    exhausted: bool
    remaining_tokens: int | None
    remaining_usd: float | None
    #: How far this spend went past what remained (only a forced spend can).
    overrun_tokens: int = 0
    overrun_usd: float = 0.0


class BudgetListResult(msgspec.Struct, kw_only=True):
    chains: list[BudgetStatus]


@dataclass(slots=True, frozen=True)
class Reservation:
    """A granted reservation: settle or release it by ``id`` before ``lease_until`` (epoch seconds)."""

    id: str
    chain_id: str
    tokens: int
    nusd: int
    lease_until: float


@dataclass(slots=True)
class Settlement:
    """The outcome of settling or releasing a reservation (the same again when repeated)."""

    id: str
    state: HoldState | Literal["unknown"]
    chain_id: str | None = None
    tokens: int = 0
    nusd: int = 0
    overrun_tokens: int = 0
    overrun_nusd: int = 0
    remaining_tokens: int | None = None
    remaining_nusd: int | None = None


@dataclass(slots=True)
class Refusal:
    """Why a reservation or spend does not fit, in the ledger's own units."""

    reason: Reason
    chain_id: str
    limit: str | None = None  # "total_tokens" | "total_usd"
    remaining: int | None = None
    requested: int | None = None
    reserved: int | None = None
    retry_after: float | None = None
    model: str | None = None

    def error(self, requested_chain: str, overrun: tuple[int, int] = (0, 0)) -> LLMBudgetExceededError:
        """The ``budget_exceeded`` error for this refusal (data in tokens, or USD for ``total_usd``)."""
        usd = self.limit == "total_usd"

        def unit(v: int | None) -> float | int | None:
            return from_nusd(v) if usd and v is not None else v

        where = f"chain {self.chain_id!r}" + (
            f" (an ancestor of {requested_chain!r})" if self.chain_id != requested_chain else ""
        )
        what = "USD" if usd else "tokens"
        messages = {
            "exceeds_budget": f"budget of {where} refuses: {unit(self.requested)} {what} requested, "
            f"{unit(self.remaining)} remain of {self.limit} and {unit(self.reserved)} are held by calls in flight",
            "in_flight": f"budget of {where} is held by calls in flight: {unit(self.requested)} {what} requested, "
            f"{unit(self.remaining)} remain of {self.limit} now; retry after {self.retry_after}s",
            "unpriced_model": f"model {self.model!r} has no price and {where} has a USD limit "
            "(open it with allow_unpriced: true to allow it)",
            "closed": f"{where} is closed",
            "expired": f"{where} has expired",
            "unknown_chain": f"no budget is open for {where}",
        }
        data: dict[str, Any] = {
            "chain_id": self.chain_id,
            "reason": self.reason,
            "limit": self.limit,
            "remaining": unit(self.remaining),
            "requested": unit(self.requested),
            "reserved": unit(self.reserved),
            "retry_after": self.retry_after,
            "model": self.model,
        }
        if self.chain_id != requested_chain:
            data["requested_chain_id"] = requested_chain
        if overrun != (0, 0):
            data["overrun"] = {"tokens": overrun[0], "usd": from_nusd(overrun[1])}
        return LLMBudgetExceededError(messages[self.reason], **data)


class BudgetRequestError(LLMError):
    """A budget request that cannot be done as asked: ``data.reason`` says why (``conflict``,
    ``unknown_chain``, ``unknown_parent``, ``parent_closed``, ``parent_expired``, ``exceeds_parent``,
    ``too_deep``, ``no_totals``, ``unknown_reservation``). The methods layer answers it as -32602."""

    type = "invalid_params"


# -- shared rules (the Lua script in _redis.py mirrors these) ----------------------------------------


def refuse(
    levels: list[Chain],
    tokens: int,
    nusd: int | None,
    now: float,
    earliest: Callable[[str], float | None],
    *,
    model: str | None = None,
    force: bool = False,
) -> Refusal | None:
    """Why ``tokens`` / ``nusd`` (None: unpriced) do not fit on ``levels`` (the chain, then its ancestors)."""
    for c in levels:
        if c.closed_at is not None:
            return Refusal("closed", c.id)
        if c.expires_at is not None and now >= c.expires_at:
            return Refusal("expired", c.id)
    if nusd is None:
        for c in levels:
            if c.total_nusd is not None and not c.allow_unpriced:
                return Refusal("unpriced_model", c.id, limit="total_usd", model=model)
        nusd = 0
    if force:
        return None
    for c in levels:
        if c.total_tokens is not None and tokens > c.total_tokens - c.spent_tokens:
            return _refusal("exceeds_budget", c, "total_tokens", tokens, None)
        if c.total_nusd is not None and nusd > c.total_nusd - c.spent_nusd:
            return _refusal("exceeds_budget", c, "total_usd", nusd, None)
    for c in levels:
        if c.total_tokens is not None and tokens > c.total_tokens - c.spent_tokens - c.reserved_tokens:
            return _refusal("in_flight", c, "total_tokens", tokens, _retry(earliest(c.id), now))
        if c.total_nusd is not None and nusd > c.total_nusd - c.spent_nusd - c.reserved_nusd:
            return _refusal("in_flight", c, "total_usd", nusd, _retry(earliest(c.id), now))
    return None


def _retry(lease: float | None, now: float) -> float:
    return round(max(0.0, lease - now), 3) if lease is not None else 0.0


def _refusal(reason: Reason, c: Chain, limit: str, requested: int, retry_after: float | None) -> Refusal:
    if limit == "total_tokens":
        assert c.total_tokens is not None
        left, held = c.total_tokens - c.spent_tokens - c.reserved_tokens, c.reserved_tokens
    else:
        assert c.total_nusd is not None
        left, held = c.total_nusd - c.spent_nusd - c.reserved_nusd, c.reserved_nusd
    return Refusal(reason, c.id, limit, max(0, left), requested, held, retry_after)


def remaining_of(levels: Iterable[Chain]) -> tuple[int | None, int | None]:
    """The least ``total - spent - reserved`` over ``levels``, per unit (None: no level limits it)."""
    tokens: int | None = None
    nusd: int | None = None
    for c in levels:
        if c.total_tokens is not None:
            left = max(0, c.total_tokens - c.spent_tokens - c.reserved_tokens)
            tokens = left if tokens is None else min(tokens, left)
        if c.total_nusd is not None:
            left = max(0, c.total_nusd - c.spent_nusd - c.reserved_nusd)
            nusd = left if nusd is None else min(nusd, left)
    return tokens, nusd


def exhausted(levels: Iterable[Chain]) -> bool:
    """Some limit on the chain or above has been spent in full."""
    return any(
        (c.total_tokens is not None and c.spent_tokens >= c.total_tokens)
        or (c.total_nusd is not None and c.spent_nusd >= c.total_nusd)
        for c in levels
    )


def state_of(levels: list[Chain], now: float) -> State:
    c = levels[0]
    if c.closed_at is not None:
        return "closed"
    if c.expires_at is not None and now >= c.expires_at:
        return "expired"
    return "exhausted" if exhausted(levels) else "open"


def status_of(levels: list[Chain], children: list[str], in_flight: int, now: float) -> BudgetStatus:
    c = levels[0]
    tokens, nusd = remaining_of(levels)
    return BudgetStatus(
        chain_id=c.id,
        parent_id=c.parent_id,
        state=state_of(levels, now),
        total_tokens=c.total_tokens,
        total_usd=from_nusd(c.total_nusd) if c.total_nusd is not None else None,
        spent_tokens=c.spent_tokens,
        spent_usd=from_nusd(c.spent_nusd),
        reserved_tokens=c.reserved_tokens,
        reserved_usd=from_nusd(c.reserved_nusd),
        remaining_tokens=tokens,
        remaining_usd=from_nusd(nusd) if nusd is not None else None,
        overrun_tokens=c.overrun_tokens,
        overrun_usd=from_nusd(c.overrun_nusd),
        in_flight=in_flight,
        children=children,
        allow_unpriced=c.allow_unpriced,
        created_at=round(c.created_at, 3),
        expires_at=round(c.expires_at, 3) if c.expires_at is not None else None,
        closed_at=round(c.closed_at, 3) if c.closed_at is not None else None,
        ttl_s=c.ttl_s,
        metadata=c.metadata,
    )


def conflict(existing: str, spec: OpenSpec) -> BudgetRequestError:
    """Reopening ``spec.chain_id`` with other params than it was opened with."""
    old: dict[str, Any] = msgspec.json.decode(existing)
    new = msgspec.to_builtins(spec)
    differs = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return BudgetRequestError(
        f"chain {spec.chain_id!r} is already open with other params ({', '.join(differs)} differ)",
        reason="conflict",
        chain_id=spec.chain_id,
        path=f"params.{differs[0]}" if differs else None,
        differs=differs,
        existing=old,
    )


# -- one implementation over a repo (memory, SQLite) --------------------------------------------------


class Repo(Protocol):
    """Where a ``Ledger`` keeps its rows. Rows handed out are mutated by the ledger, then ``save``d."""

    def chain(self, chain_id: str) -> Chain | None: ...

    def add_chain(self, chain: Chain, purge_at: float | None) -> None: ...

    def save(self, chain: Chain) -> None: ...

    def set_purge(self, chain: Chain, purge_at: float | None) -> None: ...

    def children(self, chain_id: str) -> list[str]: ...

    def ids(self, parent_id: str | None, limit: int) -> list[str]: ...

    def hold(self, hold_id: str) -> Hold | None: ...

    def add_hold(self, hold: Hold) -> None: ...

    def end_hold(self, hold: Hold) -> None:
        """``hold`` is no longer active (its state and amounts are set): drop its leases."""

    def save_hold(self, hold: Hold) -> None: ...

    def due(self, now: float) -> list[Hold]:
        """Active holds whose lease has run out."""

    def earliest(self, chain_id: str) -> float | None:
        """The earliest lease end among active holds counting against ``chain_id``."""

    def in_flight(self, chain_id: str) -> int: ...

    def active(self) -> list[Hold]: ...

    def purge(self, now: float, tombstone_before: float) -> None: ...


@dataclass(slots=True)
class Recovered:
    """Reservations found in flight at start (SQLite): settled at their reserved amounts."""

    reservations: int = 0
    tokens: int = 0
    nusd: int = 0


@dataclass
class Ledger:
    """Every budget operation, over one ``Repo``. Not thread-safe: its store serializes calls."""

    repo: Repo
    clock: Callable[[], float]
    retention: float = 86400.0
    default_ttl: float | None = None
    tombstone: float = TOMBSTONE_SECONDS
    _next_purge: float = field(default=0.0, repr=False)

    # -- helpers

    def now(self) -> float:
        """The clock, after letting leases run out and forgetting what is past retention."""
        now = self.clock()
        for hold in self.repo.due(now):
            self._end(hold, "expired", now)
        if now >= self._next_purge:
            self._next_purge = now + 1.0
            self.repo.purge(now, now - self.tombstone)
        return now

    def _levels(self, chain_id: str) -> list[Chain] | None:
        chain = self.repo.chain(chain_id)
        if chain is None:
            return None
        levels = [chain]
        for ancestor in chain.path[1:]:
            c = self.repo.chain(ancestor)
            if c is not None:
                levels.append(c)
        return levels

    def _end(self, hold: Hold, state: HoldState, now: float) -> None:
        for level in hold.path:
            c = self.repo.chain(level)
            if c is not None:
                c.reserved_tokens -= hold.tokens
                c.reserved_nusd -= hold.nusd
                self.repo.save(c)
        hold.state = state
        hold.done_at = now
        self.repo.end_hold(hold)

    def _status(self, levels: list[Chain], now: float) -> BudgetStatus:
        c = levels[0]
        return status_of(levels, self.repo.children(c.id), self.repo.in_flight(c.id), now)

    # -- operations

    def open(self, spec: OpenSpec) -> BudgetStatus:
        now = self.now()
        canonical = spec.canonical()
        existing = self._levels(spec.chain_id)
        if existing is not None:
            if existing[0].spec != canonical:
                raise conflict(existing[0].spec, spec)
            return self._status(existing, now)
        total_tokens = spec.total_tokens
        total_nusd = to_nusd(spec.total_usd) if spec.total_usd is not None else None
        expires = now + spec.ttl_s if spec.ttl_s is not None else None
        allow = spec.allow_unpriced
        path: tuple[str, ...] = (spec.chain_id,)
        if spec.parent_id is None:
            if total_tokens is None and total_nusd is None:
                raise BudgetRequestError(
                    "a chain without a parent needs total_tokens or total_usd", reason="no_totals", path="params"
                )
            if expires is None and self.default_ttl is not None:
                expires = now + self.default_ttl
        else:
            parents = self._levels(spec.parent_id)
            if parents is None:
                raise BudgetRequestError(
                    f"no budget is open for parent {spec.parent_id!r}",
                    reason="unknown_parent",
                    chain_id=spec.parent_id,
                    path="params.parent_id",
                )
            for p in parents:
                if p.closed_at is not None or (p.expires_at is not None and now >= p.expires_at):
                    why = "parent_closed" if p.closed_at is not None else "parent_expired"
                    raise BudgetRequestError(
                        f"chain {p.id!r} is {why.removeprefix('parent_')}: no child can be opened under it",
                        reason=why,
                        chain_id=p.id,
                        path="params.parent_id",
                    )
            if len(parents) >= MAX_DEPTH:
                raise BudgetRequestError(
                    f"chains nest at most {MAX_DEPTH} deep", reason="too_deep", path="params.parent_id"
                )
            left_tokens, left_nusd = remaining_of(parents)
            if total_tokens is not None and left_tokens is not None and total_tokens > left_tokens:
                raise _exceeds_parent(spec, "total_tokens", left_tokens)
            if total_nusd is not None and left_nusd is not None and total_nusd > left_nusd:
                raise _exceeds_parent(spec, "total_usd", from_nusd(left_nusd))
            if total_tokens is None:
                total_tokens = left_tokens
            if total_nusd is None:
                total_nusd = left_nusd
            parent = parents[0]
            if allow is None:
                allow = parent.allow_unpriced
            if parent.expires_at is not None and (expires is None or parent.expires_at < expires):
                expires = parent.expires_at
            path = (spec.chain_id, *parent.path)
        chain = Chain(
            id=spec.chain_id,
            parent_id=spec.parent_id,
            path=path,
            total_tokens=total_tokens,
            total_nusd=total_nusd,
            allow_unpriced=bool(allow),
            created_at=now,
            expires_at=expires,
            ttl_s=spec.ttl_s,
            metadata=spec.metadata,
            spec=canonical,
        )
        self.repo.add_chain(chain, chain.purge_at(self.retention))
        return self._status(self._levels(chain.id) or [chain], now)

    def reserve(
        self, chain_id: str, tokens: int, nusd: int | None, lease_s: float, *, model: str | None = None
    ) -> Reservation:
        """Hold ``tokens`` and ``nusd`` (None: the model has no price) on every level, or refuse.

        Raises:
            LLMBudgetExceededError: it does not fit whole; ``data.reason`` says why.
        """
        now = self.now()
        levels = self._levels(chain_id)
        if levels is None:
            raise Refusal("unknown_chain", chain_id).error(chain_id)
        refusal = refuse(levels, tokens, nusd, now, self.repo.earliest, model=model)
        if refusal is not None:
            raise refusal.error(chain_id, (levels[0].overrun_tokens, levels[0].overrun_nusd))
        held = nusd or 0
        for c in levels:
            c.reserved_tokens += tokens
            c.reserved_nusd += held
            self.repo.save(c)
        hold = Hold(new_id(), chain_id, tuple(c.id for c in levels), tokens, held, now + lease_s)
        self.repo.add_hold(hold)
        return Reservation(hold.id, chain_id, tokens, held, hold.lease_until)

    def settle(self, hold_id: str, tokens: int, nusd: int) -> Settlement:
        """Turn a reservation into spend at the real amounts (again: the first outcome, unchanged)."""
        now = self.now()
        hold = self.repo.hold(hold_id)
        if hold is None:
            return Settlement(hold_id, "unknown")
        if hold.state in ("active", "expired"):
            late = hold.state == "expired"
            over_t, over_n = max(0, tokens - hold.tokens), max(0, nusd - hold.nusd)
            for level in hold.path:
                c = self.repo.chain(level)
                if c is None:
                    continue
                if not late:
                    c.reserved_tokens -= hold.tokens
                    c.reserved_nusd -= hold.nusd
                c.spent_tokens += tokens
                c.spent_nusd += nusd
                c.overrun_tokens += over_t
                c.overrun_nusd += over_n
                self.repo.save(c)
            hold.settled_tokens, hold.settled_nusd = tokens, nusd
            hold.over_tokens, hold.over_nusd = over_t, over_n
            if late:
                hold.state = "settled_late"
                self.repo.save_hold(hold)
            else:
                hold.state = "settled"
                hold.done_at = now
                self.repo.end_hold(hold)
        return self._outcome(hold)

    def release(self, hold_id: str) -> Settlement:
        """Give a reservation back (a failed call); a no-op once it is settled or released."""
        now = self.now()
        hold = self.repo.hold(hold_id)
        if hold is None:
            return Settlement(hold_id, "unknown")
        if hold.state == "active":
            self._end(hold, "released", now)
        return self._outcome(hold)

    def _outcome(self, hold: Hold) -> Settlement:
        levels = self._levels(hold.chain_id)
        tokens, nusd = remaining_of(levels) if levels is not None else (None, None)
        return Settlement(
            hold.id,
            hold.state,
            hold.chain_id,
            hold.settled_tokens,
            hold.settled_nusd,
            hold.over_tokens,
            hold.over_nusd,
            tokens,
            nusd,
        )

    def spend(self, chain_id: str, tokens: int, nusd: int, *, force: bool = False) -> BudgetSpendResult:
        """Record spend made elsewhere: all or nothing, or (``force``) recorded whatever it does.

        Raises:
            LLMBudgetExceededError: it does not fit (and ``force`` is false), or the chain is closed,
                expired or unknown.
        """
        now = self.now()
        levels = self._levels(chain_id)
        if levels is None:
            raise Refusal("unknown_chain", chain_id).error(chain_id)
        refusal = refuse(levels, tokens, nusd, now, self.repo.earliest, force=force)
        if refusal is not None:
            raise refusal.error(chain_id, (levels[0].overrun_tokens, levels[0].overrun_nusd))
        left_tokens, left_nusd = remaining_of(levels)
        over_t = max(0, tokens - left_tokens) if left_tokens is not None else 0
        over_n = max(0, nusd - left_nusd) if left_nusd is not None else 0
        for c in levels:
            c.spent_tokens += tokens
            c.spent_nusd += nusd
            c.overrun_tokens += over_t
            c.overrun_nusd += over_n
            self.repo.save(c)
        after_tokens, after_nusd = remaining_of(levels)
        return BudgetSpendResult(
            chain_id=chain_id,
            tokens=tokens,
            usd=from_nusd(nusd),
            forced=force,
            exhausted=exhausted(levels),
            remaining_tokens=after_tokens,
            remaining_usd=from_nusd(after_nusd) if after_nusd is not None else None,
            overrun_tokens=over_t,
            overrun_usd=from_nusd(over_n),
        )

    def status(self, chain_id: str) -> BudgetStatus:
        """Raises: BudgetRequestError: no such chain (never opened, or forgotten after retention)."""
        now = self.now()
        levels = self._levels(chain_id)
        if levels is None:
            raise _unknown(chain_id)
        return self._status(levels, now)

    def close(self, chain_id: str) -> BudgetStatus:
        """Freeze the chain and its descendants; the final ledger. Closing again changes nothing."""
        now = self.now()
        levels = self._levels(chain_id)
        if levels is None:
            raise _unknown(chain_id)
        for c in self._subtree(levels[0]):
            if c.closed_at is None:
                c.closed_at = now
                self.repo.save(c)
                self.repo.set_purge(c, c.purge_at(self.retention))
        return self._status(levels, now)

    def _subtree(self, root: Chain) -> Iterator[Chain]:
        stack = [root]
        while stack:
            c = stack.pop()
            yield c
            for kid in self.repo.children(c.id):
                k = self.repo.chain(kid)
                if k is not None:
                    stack.append(k)

    def list_chains(self, parent_id: str | None, state: State | None, limit: int) -> list[BudgetStatus]:
        now = self.now()
        out: list[BudgetStatus] = []
        for chain_id in self.repo.ids(parent_id, 1_000_000 if state is not None else limit):
            levels = self._levels(chain_id)
            if levels is None:
                continue
            status = self._status(levels, now)
            if state is None or status.state == state:
                out.append(status)
                if len(out) >= limit:
                    break
        return out

    def recover(self) -> Recovered:
        """At start: every reservation still in flight is settled at what it reserved (the safe side)."""
        now = self.clock()
        found = Recovered()
        for hold in self.repo.active():
            for level in hold.path:
                c = self.repo.chain(level)
                if c is not None:
                    c.reserved_tokens -= hold.tokens
                    c.reserved_nusd -= hold.nusd
                    c.spent_tokens += hold.tokens
                    c.spent_nusd += hold.nusd
                    self.repo.save(c)
            hold.settled_tokens, hold.settled_nusd = hold.tokens, hold.nusd
            hold.state = "recovered"
            hold.done_at = now
            self.repo.end_hold(hold)
            found.reservations += 1
            found.tokens += hold.tokens
            found.nusd += hold.nusd
        return found


def _unknown(chain_id: str) -> BudgetRequestError:
    return BudgetRequestError(
        f"no budget is open for chain {chain_id!r}", reason="unknown_chain", chain_id=chain_id, path="params.chain_id"
    )


def _exceeds_parent(spec: OpenSpec, limit: str, remaining: float | int) -> BudgetRequestError:
    return BudgetRequestError(
        f"a child's {limit} may not exceed its parent's remaining ({remaining})",
        reason="exceeds_parent",
        chain_id=spec.parent_id,
        limit=limit,
        remaining=remaining,
        path=f"params.{limit}",
    )
