"""How one backend is chosen among the candidates for a model.

Each strategy is a scan over the candidates in priority order that returns an index, never a new
list. Every scan skips backends that are not usable (cooling down, or a probe in flight) and those
the call excludes (a bit mask: tried in this round, refused by a limit...); an optional extra filter
(fits its limits now) is asked only of a backend that would otherwise win. Nothing allocates. Choosing
is pure; the route's counters move only when the router commits to a choice (``Route.chose``), so a
choice that is abandoned (the inline path giving way to the task path) leaves no trace, and the same
state always gives the same choice (replayable routing decisions).

* ``failover``: the first eligible by ``priority``.
* ``round-robin``: the first eligible after the one chosen last, so healthy candidates share evenly.
* ``least-loaded``: the fewest calls in flight relative to ``max_concurrent`` (a backend without
  ``max_concurrent`` counts its calls in flight as they are); ties keep priority order.
* ``latency``: the lowest moving average of observed latency, a backend never measured first; every
  ``explore_every``-th choice goes instead to the eligible backend tried least recently, so that a
  backend that was slow once (or has recovered) is measured again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

__all__ = ["STRATEGIES", "Candidate", "Route", "pick", "usable"]

STRATEGIES = ("failover", "round-robin", "least-loaded", "latency")


class Candidate(Protocol):
    """What the strategies read from a backend."""

    in_flight: int
    capacity: float  # max_concurrent, or 1.0 when unlimited
    latency: float | None  # moving average, seconds; None until measured
    last_tried: int  # the router's choice counter when last chosen; -1 never
    blocked_until: float  # cooling down (or a Retry-After) until then

    @property
    def probe(self) -> object | None:  # the probe in flight, if any
        ...


B = TypeVar("B", bound=Candidate)


class Route(Generic[B]):
    """The candidates for one model, in priority order, with the wire model name each is sent."""

    __slots__ = ("backends", "cursor", "models", "tick")

    def __init__(self, backends: Sequence[B], models: Sequence[str]) -> None:
        self.backends = tuple(backends)
        self.models = tuple(models)
        self.cursor = 0  # round-robin: where the next scan starts
        self.tick = 0  # choices made on this route (latency exploration)

    def chose(self, index: int, seq: int) -> None:
        """Commit to a choice: move the round-robin cursor and the exploration tick."""
        self.cursor = index + 1
        self.tick += 1
        self.backends[index].last_tried = seq


def usable(b: Candidate, now: float) -> bool:
    """Not cooling down and no probe in flight."""
    return b.blocked_until <= now and b.probe is None


def pick(
    strategy: str,
    route: Route[B],
    excluded: int,
    now: float,
    also: Callable[[int], bool] | None = None,
    explore_every: int = 0,
) -> int:
    """The index in ``route.backends`` that ``strategy`` picks; -1 if no backend is eligible.

    Eligible: usable at ``now``, its bit not set in ``excluded``, and ``also(i)`` when given. The
    usability test is written out in each loop: this is the router's hot path.
    """
    backends = route.backends
    n = len(backends)
    if strategy == "failover":
        for i in range(n):
            b = backends[i]
            if b.blocked_until > now or b.probe is not None or (excluded and (excluded >> i) & 1):
                continue
            if also is None or also(i):
                return i
        return -1
    if strategy == "round-robin":
        start = route.cursor % n if n else 0
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            b = backends[i]
            if b.blocked_until > now or b.probe is not None or (excluded and (excluded >> i) & 1):
                continue
            if also is None or also(i):
                return i
        return -1
    best, best_key = -1, 0.0
    if strategy == "least-loaded":
        for i in range(n):
            b = backends[i]
            if b.blocked_until > now or b.probe is not None or (excluded and (excluded >> i) & 1):
                continue
            key = b.in_flight / b.capacity
            if (best < 0 or key < best_key) and (also is None or also(i)):
                best, best_key = i, key
        return best
    # latency
    explore = explore_every > 0 and route.tick % explore_every == explore_every - 1
    for i in range(n):
        b = backends[i]
        if b.blocked_until > now or b.probe is not None or (excluded and (excluded >> i) & 1):
            continue
        key = float(b.last_tried) if explore else -1.0 if b.latency is None else b.latency
        if (best < 0 or key < best_key) and (also is None or also(i)):
            best, best_key = i, key
    return best
