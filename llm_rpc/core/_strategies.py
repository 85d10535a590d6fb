"""How one backend is chosen among the candidates for a model.

Each strategy is a scan over the candidates in priority order that returns an index, never a new
list, and takes the filter (healthy, not yet tried, fits its limits now...) as a callable: the router
asks the same question with different filters, and none of this allocates on the hot path. Choosing
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

__all__ = ["STRATEGIES", "Candidate", "Route", "pick"]

STRATEGIES = ("failover", "round-robin", "least-loaded", "latency")


class Candidate(Protocol):
    """What the strategies read from a backend."""

    in_flight: int
    capacity: float  # max_concurrent, or 1.0 when unlimited
    latency: float | None  # moving average, seconds; None until measured
    last_tried: int  # the router's choice counter when last chosen; -1 never


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


def pick(strategy: str, route: Route[B], eligible: Callable[[int], bool], explore_every: int = 0) -> int:
    """The index in ``route.backends`` that ``strategy`` picks among the eligible ones; -1 if none is."""
    backends = route.backends
    n = len(backends)
    if strategy == "failover":
        for i in range(n):
            if eligible(i):
                return i
        return -1
    if strategy == "round-robin":
        start = route.cursor % n if n else 0
        for k in range(n):
            i = start + k
            if i >= n:
                i -= n
            if eligible(i):
                return i
        return -1
    if strategy == "least-loaded":
        best, best_load = -1, 0.0
        for i in range(n):
            if eligible(i):
                b = backends[i]
                load = b.in_flight / b.capacity
                if best < 0 or load < best_load:
                    best, best_load = i, load
        return best
    # latency
    explore = explore_every > 0 and route.tick % explore_every == explore_every - 1
    best, best_key = -1, 0.0
    for i in range(n):
        if eligible(i):
            b = backends[i]
            key = float(b.last_tried) if explore else -1.0 if b.latency is None else b.latency
            if best < 0 or key < best_key:
                best, best_key = i, key
    return best
