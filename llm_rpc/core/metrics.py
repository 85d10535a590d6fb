"""Metrics: plain counters on the hot path, figures only when someone asks.

Recording is a few dict and list operations per call (no locks, no label objects, no import of a
metrics library): the inline mock path answers in microseconds and must stay there. A scrape, or
the ``metrics`` method, turns the counters into one ``MetricsSnapshot``; ``render_prometheus``
renders that same snapshot in the Prometheus text format with prometheus-client (imported then,
so a server nobody scrapes never loads it).

Where the time of an ``execute`` goes, as five stages: ``decode`` (the JSON-RPC params into
``ExecuteParams``), ``route`` (choosing a backend, building the provider request), ``queue``
(waiting for a backend's limits, a cooldown, a probe or a backoff), ``upstream`` (the provider
calls, every attempt: the provider's wire encoding, the network and its wire decoding), and
``encode`` (the result into the JSON reply).

Label sets that clients choose (model names, agent ids) are bounded: past ``MAX_SERIES`` distinct
sets a metric folds new ones into the label value ``"__other__"``.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import msgspec

from llm_rpc.types import AgentUsage, BackendHealth

__all__ = [
    "LATENCY_BUCKETS",
    "MAX_SERIES",
    "OTHER",
    "STAGES",
    "BudgetSource",
    "Histogram",
    "Metrics",
    "MetricsSnapshot",
    "render_prometheus",
    "snapshot",
]

#: Upper bounds (seconds) of the latency histograms' buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
#: Distinct label sets per metric with client-chosen labels; the rest fold into ``OTHER``.
MAX_SERIES = 1000
#: Open budget chains exported at most (the ones the budget store lists first).
MAX_BUDGET_SERIES = 100
OTHER = "__other__"
STAGES = ("decode", "route", "queue", "upstream", "encode")
_DECODE, _ROUTE, _QUEUE, _UPSTREAM, _ENCODE = range(5)


class Histogram:
    """Counts per bucket (the last one: above every bound), their sum and how many."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds
        self.count += 1


class BudgetSource(Protocol):
    """What the metrics need from a budget store: the remaining amounts of its open chains.

    The hook for ``llm_rpc.core.budgets`` (issue 6): until a router has a ``budgets`` attribute
    with this method, the snapshot says ``budgets: null`` and /metrics has no budget series.
    """

    def open_chains_remaining(self, limit: int) -> Iterable[tuple[str, str, float]]:
        """Up to ``limit`` ``(chain_id, unit, remaining)``, ``unit`` being ``tokens`` or ``usd``."""
        ...


class Metrics:
    """The counters of one router (and the server around it)."""

    __slots__ = ("gauges", "request_latency", "requests", "stage_counts", "stage_sums", "upstream", "upstream_latency")

    def __init__(self) -> None:
        #: ``(method, outcome)`` → requests; outcome ``ok`` or an error ``type``.
        self.requests: dict[tuple[str, str], int] = {}
        self.request_latency: dict[str, Histogram] = {}
        #: ``(backend, model, status)`` → upstream attempts; status ``ok``, an error type or ``cancelled``.
        self.upstream: dict[tuple[str, str, str], int] = {}
        self.upstream_latency: dict[tuple[str, str], Histogram] = {}
        self.stage_sums = [0.0] * len(STAGES)
        self.stage_counts = [0] * len(STAGES)
        #: Figures owned elsewhere, read at snapshot time (e.g. ``http_connections``).
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    # -- recording (hot path) ------------------------------------------------------------------------

    def request(self, method: str, outcome: str, seconds: float) -> None:
        key = (method, outcome)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        self.method_latency(method).observe(seconds)

    def method_latency(self, method: str) -> Histogram:
        """The latency histogram of ``method`` (a handler wrapper keeps it, saving the lookup)."""
        histogram = self.request_latency.get(method)
        if histogram is None:
            histogram = self.request_latency[method] = Histogram()
        return histogram

    def ok(self, method: str, histogram: Histogram, seconds: float) -> None:
        """A request answered successfully: the common case, kept short."""
        key = (method, "ok")
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram.observe(seconds)

    def upstream_call(self, backend: str, model: str, status: str, seconds: float) -> None:
        upstream = self.upstream
        key = (backend, model, status)
        count = upstream.get(key)
        if count is None:
            if len(upstream) >= MAX_SERIES:
                key = (backend, OTHER, status)
                model = OTHER
            count = upstream.get(key, 0)
        upstream[key] = count + 1
        lkey = (backend, model)
        histogram = self.upstream_latency.get(lkey)
        if histogram is None:
            if len(self.upstream_latency) >= MAX_SERIES:
                lkey = (backend, OTHER)
            histogram = self.upstream_latency.get(lkey)
            if histogram is None:
                histogram = self.upstream_latency[lkey] = Histogram()
        histogram.observe(seconds)

    def call_stages(self, route: float, queue: float, upstream: float) -> None:
        """One ``execute`` call's time in the router: routing, waiting for limits, upstream."""
        sums = self.stage_sums
        counts = self.stage_counts
        sums[_ROUTE] += route
        sums[_QUEUE] += queue
        sums[_UPSTREAM] += upstream
        counts[_ROUTE] += 1
        counts[_QUEUE] += 1
        counts[_UPSTREAM] += 1

    def decoded(self, seconds: float) -> None:
        self.stage_sums[_DECODE] += seconds
        self.stage_counts[_DECODE] += 1

    def encoded(self, seconds: float) -> None:
        self.stage_sums[_ENCODE] += seconds
        self.stage_counts[_ENCODE] += 1

    def encode_seconds(self) -> float:
        """The mean time to encode an ``execute`` result so far (0.0 before the first): the estimate of
        its encoding that a result's ``overhead_us`` includes (it cannot carry its own)."""
        count = self.stage_counts[_ENCODE]
        return self.stage_sums[_ENCODE] / count if count else 0.0

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """A figure read at snapshot time, exported as ``llm_rpc_<name>``."""
        self.gauges[name] = (help_text, read)


# -- the snapshot ------------------------------------------------------------------------------------


class _Out(msgspec.Struct, kw_only=True):
    pass


class RequestCount(_Out):
    method: str
    outcome: str
    count: int


class LatencyHistogram(_Out):
    """``counts[i]`` requests took at most ``latency_buckets[i]`` seconds (and more than the bound
    before it); the last count is above every bound."""

    count: int
    sum_s: float
    counts: list[int]


class MethodLatency(LatencyHistogram):
    method: str


class UpstreamCount(_Out):
    backend: str
    model: str
    status: str
    count: int


class UpstreamLatency(LatencyHistogram):
    backend: str
    model: str


class StageTime(_Out):
    """One stage of ``execute``: how many calls went through it and the seconds they spent there."""

    stage: str
    count: int
    sum_s: float
    mean_us: float


class UsageRow(_Out):
    agent: str
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float


class BackendRow(_Out):
    backend: str
    provider: str
    state: str
    cooling_down: bool
    cooldown_s: float
    in_flight: int
    error_rate: float


class BudgetRow(_Out):
    chain_id: str
    unit: str
    remaining: float


class MetricsSnapshot(_Out):
    """Every figure of the server at one moment (the ``metrics`` method's result; /metrics renders it)."""

    uptime_s: float
    in_flight: int
    latency_buckets: list[float]
    requests: list[RequestCount]
    request_latency: list[MethodLatency]
    upstream: list[UpstreamCount]
    upstream_latency: list[UpstreamLatency]
    stages: list[StageTime]
    usage: list[UsageRow]
    backends: list[BackendRow]
    #: Remaining budget per open chain; null until a budget store is wired in.
    budgets: list[BudgetRow] | None = None
    gauges: dict[str, float] = msgspec.field(default_factory=dict)


def snapshot(
    metrics: Metrics,
    *,
    uptime_s: float,
    in_flight: int,
    backends: list[BackendHealth],
    usage: dict[str, AgentUsage],
    budgets: BudgetSource | None = None,
) -> MetricsSnapshot:
    """The counters as figures, with the live state read from the router (health, usage, budgets)."""
    rows: list[UsageRow] = []
    for agent_id, agent in usage.items():
        for model, counts in agent.by_model.items():
            rows.append(
                UsageRow(
                    agent=agent_id,
                    model=model,
                    requests=counts.requests,
                    errors=counts.errors,
                    prompt_tokens=counts.prompt_tokens,
                    completion_tokens=counts.completion_tokens,
                    total_tokens=counts.total_tokens,
                    cost_usd=counts.cost_usd,
                )
            )
    rows = _fold_usage(rows)
    budget_rows: list[BudgetRow] | None = None
    if budgets is not None:
        budget_rows = [
            BudgetRow(chain_id=chain_id, unit=unit, remaining=remaining)
            for chain_id, unit, remaining in list(budgets.open_chains_remaining(MAX_BUDGET_SERIES))[:MAX_BUDGET_SERIES]
        ]
    return MetricsSnapshot(
        uptime_s=round(uptime_s, 3),
        in_flight=in_flight,
        latency_buckets=list(LATENCY_BUCKETS),
        requests=[RequestCount(method=m, outcome=o, count=c) for (m, o), c in sorted(metrics.requests.items())],
        request_latency=[
            MethodLatency(method=m, count=h.count, sum_s=h.sum, counts=list(h.counts))
            for m, h in sorted(metrics.request_latency.items())
        ],
        upstream=[
            UpstreamCount(backend=b, model=m, status=s, count=c) for (b, m, s), c in sorted(metrics.upstream.items())
        ],
        upstream_latency=[
            UpstreamLatency(backend=b, model=m, count=h.count, sum_s=h.sum, counts=list(h.counts))
            for (b, m), h in sorted(metrics.upstream_latency.items())
        ],
        stages=[
            StageTime(
                stage=name,
                count=metrics.stage_counts[i],
                sum_s=metrics.stage_sums[i],
                mean_us=round(metrics.stage_sums[i] / metrics.stage_counts[i] * 1e6, 3)
                if metrics.stage_counts[i]
                else 0.0,
            )
            for i, name in enumerate(STAGES)
        ],
        usage=rows,
        backends=[
            BackendRow(
                backend=b.name,
                provider=b.provider,
                state=b.state,
                cooling_down=b.state == "cooling_down",
                cooldown_s=b.cooldown_s or 0.0,
                in_flight=b.in_flight,
                error_rate=b.error_rate,
            )
            for b in backends
        ],
        budgets=budget_rows,
        gauges={name: float(read()) for name, (_, read) in metrics.gauges.items()},
    )


def _fold_usage(rows: list[UsageRow]) -> list[UsageRow]:
    """At most MAX_SERIES rows: the first ones seen keep their labels, the rest add up in OTHER."""
    if len(rows) <= MAX_SERIES:
        return rows
    kept = rows[: MAX_SERIES - 1]
    rest = rows[MAX_SERIES - 1 :]
    kept.append(
        UsageRow(
            agent=OTHER,
            model=OTHER,
            requests=sum(r.requests for r in rest),
            errors=sum(r.errors for r in rest),
            prompt_tokens=sum(r.prompt_tokens for r in rest),
            completion_tokens=sum(r.completion_tokens for r in rest),
            total_tokens=sum(r.total_tokens for r in rest),
            cost_usd=sum(r.cost_usd for r in rest),
        )
    )
    return kept


# -- Prometheus ----------------------------------------------------------------------------------------


def render_prometheus(snap: MetricsSnapshot, gauge_help: dict[str, str] | None = None) -> tuple[bytes, str]:
    """The snapshot in the Prometheus text format, and its content type (prometheus-client does the format).

    ``gauge_help``: the help text of each entry of ``snap.gauges`` (``Metrics.gauges`` has them)."""
    from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest

    families = list(_families(snap, gauge_help or {}))

    class _Snapshot:
        def collect(self) -> list[Any]:
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Snapshot())
    ProcessCollector(registry=registry)
    # The classic text format (what generate_latest writes with its default escaping), which every
    # Prometheus version accepts; newer clients call the same bytes "version=1.0.0".
    return generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*(repr(b) for b in LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        total += count
        out.append((bound, total))
    return out


def _families(snap: MetricsSnapshot, gauge_help: dict[str, str]) -> Iterator[Any]:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        SummaryMetricFamily,
    )

    yield GaugeMetricFamily("llm_rpc_uptime_seconds", "Seconds since the server started.", value=snap.uptime_s)
    yield GaugeMetricFamily(
        "llm_rpc_in_flight", "JSON-RPC requests running now, all connections.", value=snap.in_flight
    )

    requests = CounterMetricFamily(
        "llm_rpc_requests",
        "JSON-RPC requests handled, by method and outcome (ok or the error type).",
        labels=["method", "outcome"],
    )
    for r in snap.requests:
        requests.add_metric([r.method, r.outcome], r.count)
    yield requests

    latency = HistogramMetricFamily(
        "llm_rpc_request_duration_seconds", "Time to answer a JSON-RPC request, by method.", labels=["method"]
    )
    for h in snap.request_latency:
        latency.add_metric([h.method], _buckets(h.counts), sum_value=h.sum_s)
    yield latency

    upstream = CounterMetricFamily(
        "llm_rpc_upstream_calls",
        "Calls to upstream backends (every attempt), by backend, model and status (ok or the error type).",
        labels=["backend", "model", "status"],
    )
    for u in snap.upstream:
        upstream.add_metric([u.backend, u.model, u.status], u.count)
    yield upstream

    upstream_latency = HistogramMetricFamily(
        "llm_rpc_upstream_duration_seconds",
        "Time of one upstream call, by backend and model.",
        labels=["backend", "model"],
    )
    for ul in snap.upstream_latency:
        upstream_latency.add_metric([ul.backend, ul.model], _buckets(ul.counts), sum_value=ul.sum_s)
    yield upstream_latency

    stages = SummaryMetricFamily(
        "llm_rpc_execute_stage_seconds",
        "Where the time of execute calls goes: decode, route, queue, upstream, encode.",
        labels=["stage"],
    )
    for s in snap.stages:
        stages.add_metric([s.stage], count_value=s.count, sum_value=s.sum_s)
    yield stages

    tokens = CounterMetricFamily(
        "llm_rpc_tokens",
        "Tokens used, by agent, model and kind (prompt or completion).",
        labels=["agent", "model", "kind"],
    )
    cost = CounterMetricFamily("llm_rpc_cost_usd", "USD spent, by agent and model.", labels=["agent", "model"])
    calls = CounterMetricFamily(
        "llm_rpc_calls",
        "execute calls, by agent, model and outcome (ok or error).",
        labels=["agent", "model", "outcome"],
    )
    for row in snap.usage:
        tokens.add_metric([row.agent, row.model, "prompt"], row.prompt_tokens)
        tokens.add_metric([row.agent, row.model, "completion"], row.completion_tokens)
        cost.add_metric([row.agent, row.model], row.cost_usd)
        calls.add_metric([row.agent, row.model, "ok"], row.requests - row.errors)
        calls.add_metric([row.agent, row.model, "error"], row.errors)
    yield tokens
    yield cost
    yield calls

    in_flight = GaugeMetricFamily(
        "llm_rpc_backend_in_flight", "Upstream calls running now, by backend.", labels=["backend"]
    )
    cooling = GaugeMetricFamily(
        "llm_rpc_backend_cooling_down",
        "1 while a backend is cooling down (no requests sent to it).",
        labels=["backend"],
    )
    cooldown = GaugeMetricFamily(
        "llm_rpc_backend_cooldown_remaining_seconds", "Seconds left of a backend's cooldown.", labels=["backend"]
    )
    state = GaugeMetricFamily(
        "llm_rpc_backend_state", "A backend's state (1 for the current one).", labels=["backend", "state"]
    )
    error_rate = GaugeMetricFamily(
        "llm_rpc_backend_error_rate",
        "Share of recent calls to a backend that failed (moving average).",
        labels=["backend"],
    )
    for b in snap.backends:
        in_flight.add_metric([b.backend], b.in_flight)
        cooling.add_metric([b.backend], 1.0 if b.cooling_down else 0.0)
        cooldown.add_metric([b.backend], b.cooldown_s)
        for name in ("healthy", "cooling_down", "probing"):
            state.add_metric([b.backend, name], 1.0 if b.state == name else 0.0)
        error_rate.add_metric([b.backend], b.error_rate)
    yield in_flight
    yield cooling
    yield cooldown
    yield state
    yield error_rate

    if snap.budgets is not None:
        budget = GaugeMetricFamily(
            "llm_rpc_budget_remaining", "Remaining budget of an open delegation chain.", labels=["chain_id", "unit"]
        )
        for chain in snap.budgets:
            budget.add_metric([chain.chain_id, chain.unit], chain.remaining)
        yield budget

    for name, value in snap.gauges.items():
        yield GaugeMetricFamily(f"llm_rpc_{name}", gauge_help.get(name, name.replace("_", " ")), value=value)
