"""``metrics``, and the instrumentation that counts every method's requests by outcome and time.

``instrument`` wraps each registered handler once, at table build time: a request pays for two
clock reads and a dict update. For ``execute`` it also times the params decoding and the result
encoding (the result goes back to the dispatcher already encoded, as ``msgspec.Raw``), the two
stages of a call that happen outside the router.
"""

from __future__ import annotations

import time
from typing import Any, cast

import anyio
import msgspec

from llm_rpc import _codes
from llm_rpc.core.metrics import STAGES, Metrics, MetricsSnapshot, render_prometheus, snapshot
from llm_rpc.core.router import Router
from llm_rpc.errors import LLMError
from llm_rpc.methods.admin import NoParams, ServerHooks
from llm_rpc.protocol import MethodTable, RequestContext, RpcError
from llm_rpc.protocol.registry import NOT_INLINE, Method

__all__ = ["collect", "instrument", "prometheus_text", "register"]

_perf = time.perf_counter
_encode = msgspec.json.Encoder().encode
#: Methods whose params decoding and result encoding count as stages of a call.
_STAGED = frozenset({"execute"})
_DECODE = STAGES.index("decode")
_ENCODE = STAGES.index("encode")


def collect(router: Router, server: ServerHooks) -> MetricsSnapshot:
    """Every figure now: the router's counters plus its live health, usage and budgets."""
    return snapshot(
        router.metrics,
        uptime_s=time.monotonic() - server.started_at,
        in_flight=server.in_flight(),
        backends=router.health(),
        usage=router.get_all_usage(),
        budgets=_budget_source(router),
    )


def prometheus_text(router: Router, server: ServerHooks) -> tuple[bytes, str]:
    """``GET /metrics``: the same snapshot in the Prometheus text format."""
    gauge_help = {name: help_text for name, (help_text, _) in router.metrics.gauges.items()}
    return render_prometheus(collect(router, server), gauge_help)


def _budget_source(router: Router) -> Any:
    # The hook for the budget store (issue 6): used once the router has one that can list its chains.
    budgets = getattr(router, "budgets", None)
    return budgets if budgets is not None and hasattr(budgets, "open_chains_remaining") else None


def register(table: MethodTable, router: Router, server: ServerHooks) -> None:
    def metrics(params: NoParams, ctx: RequestContext) -> MetricsSnapshot:
        """Requests by method and outcome, latency histograms, upstream calls by backend, model and
        status, where execute's time goes (decode, route, queue, upstream, encode), tokens and cost by
        agent and model, backends' cooldowns, budgets of open chains: what GET /metrics exports."""
        return collect(router, server)

    table.add("metrics", metrics, params=NoParams, result=MetricsSnapshot, summary="Server metrics", inline=True)


# -- instrumentation ---------------------------------------------------------------------------------------


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a failed request: its error ``type``."""
    if isinstance(exc, LLMError):
        return exc.type
    if isinstance(exc, RpcError):
        data = exc.data or {}
        return str(data.get("type") or _codes.TYPES_BY_CODE.get(exc.code, "error"))
    return "internal_error"


class _TimedDecoder:
    """A params decoder that adds its time to the ``decode`` stage."""

    __slots__ = ("_counts", "_decode", "_sums")

    def __init__(self, decoder: msgspec.json.Decoder[Any], metrics: Metrics) -> None:
        self._decode = decoder.decode
        self._sums = metrics.stage_sums
        self._counts = metrics.stage_counts

    def decode(self, data: bytes) -> Any:
        start = _perf()
        try:
            return self._decode(data)
        finally:
            self._sums[_DECODE] += _perf() - start
            self._counts[_DECODE] += 1


def instrument(table: MethodTable, metrics: Metrics) -> None:
    """Count and time every method of ``table`` (call it once, after the last registration)."""
    for method in table:
        staged = method.name in _STAGED
        if staged and method.decoder is not None:
            method.decoder = cast(Any, _TimedDecoder(method.decoder, metrics))  # it quacks like a Decoder
        if method.inline:
            method.handler = _inline(method, metrics, staged)
        else:
            method.handler = _async(method, metrics, staged)
            if method.try_inline is not None:
                method.try_inline = _try_inline(method, metrics, staged)


def _add_encoding(result: Any, sums: list[float], counts: list[int]) -> None:
    """A result about to be encoded: its ``overhead_us`` gets the mean encoding time so far."""
    overhead = getattr(result, "overhead_us", None)
    if overhead is not None:
        count = counts[_ENCODE]
        if count:
            result.overhead_us = round(overhead + sums[_ENCODE] / count * 1e6, 3)


def _encoded(result: Any, metrics: Metrics) -> msgspec.Raw:
    _add_encoding(result, metrics.stage_sums, metrics.stage_counts)
    start = _perf()
    raw = msgspec.Raw(_encode(result))
    metrics.encoded(_perf() - start)
    return raw


def _inline(method: Method, metrics: Metrics, staged: bool) -> Any:
    handler = method.handler
    name = method.name
    record = metrics.request
    ok = metrics.ok
    histogram = metrics.method_latency(name)

    def counted(params: Any, ctx: RequestContext) -> Any:
        start = _perf()
        try:
            result = handler(params, ctx)
            if staged:
                result = _encoded(result, metrics)
        except Exception as exc:
            record(name, outcome_of(exc), _perf() - start)
            raise
        ok(name, histogram, _perf() - start)
        return result

    return counted


def _try_inline(method: Method, metrics: Metrics, staged: bool) -> Any:
    # The inline mock path answers in microseconds: one closure, three clock reads, no lookups.
    try_inline = method.try_inline
    assert try_inline is not None
    name = method.name
    record = metrics.request
    ok = metrics.ok
    histogram = metrics.method_latency(name)
    sums = metrics.stage_sums
    counts = metrics.stage_counts

    def counted(params: Any, ctx: RequestContext) -> Any:
        start = _perf()
        try:
            result = try_inline(params, ctx)
            if result is NOT_INLINE:
                return result  # the async handler runs, and counts
            if staged:
                # overhead_us gets the mean encoding time so far (see _add_encoding), inlined here.
                overhead = result.overhead_us
                if overhead is not None and counts[_ENCODE]:
                    result.overhead_us = round(overhead + sums[_ENCODE] / counts[_ENCODE] * 1e6, 3)
                encoding = _perf()
                result = msgspec.Raw(_encode(result))
                end = _perf()
                sums[_ENCODE] += end - encoding
                counts[_ENCODE] += 1
            else:
                end = _perf()
        except Exception as exc:
            record(name, outcome_of(exc), _perf() - start)
            raise
        ok(name, histogram, end - start)
        return result

    return counted


def _async(method: Method, metrics: Metrics, staged: bool) -> Any:
    handler = method.handler
    name = method.name
    record = metrics.request
    ok = metrics.ok
    histogram = metrics.method_latency(name)

    async def counted(params: Any, ctx: RequestContext) -> Any:
        start = _perf()
        try:
            result = await handler(params, ctx)
            if staged:
                result = _encoded(result, metrics)
        except anyio.get_cancelled_exc_class():
            record(name, "cancelled", _perf() - start)
            raise
        except Exception as exc:
            record(name, outcome_of(exc), _perf() - start)
            raise
        ok(name, histogram, _perf() - start)
        return result

    return counted
