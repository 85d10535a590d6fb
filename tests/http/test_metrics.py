"""GET /metrics parsed back with prometheus-client's own parser; the ``metrics`` method; the counters."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import httpx2 as httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_rpc.config import default_config
from llm_rpc.core.metrics import MAX_SERIES, OTHER, Metrics, render_prometheus, snapshot
from llm_rpc.core.router import Router
from tests.http._server import running
from tests.transports._proc import server_env

pytestmark = pytest.mark.anyio


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text page: (name, sorted labels) → value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(page: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return page.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_counts_the_calls_made_by_method_outcome_backend_model_and_agent() -> None:
    ok, failed, health = 7, 3, 4
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        for i in range(ok):
            body = {"prompt": f"w{i} x y", "model": "gpt-test", "agent_id": "planner"}
            await client.post("/rpc", json={"jsonrpc": "2.0", "id": i, "method": "execute", "params": body})
        for i in range(failed):
            failing: dict[str, Any] = {"prompt": f"f{i}", "model": "gpt-test", "agent_id": "critic"}
            failing["mock"] = {"fail_rate": 1}
            await client.post("/execute", json=failing)
        for i in range(health):
            await client.post("/rpc", json={"jsonrpc": "2.0", "id": i, "method": "health"})
        await client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "execute", "params": {"bad": 1}})
        response = await client.get("/metrics")
        snap = (await client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "metrics"})).json()["result"]
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    page = samples(response.text)

    assert value(page, "llm_rpc_requests_total", method="execute", outcome="ok") == ok
    assert value(page, "llm_rpc_requests_total", method="execute", outcome="server_error") == failed
    assert value(page, "llm_rpc_requests_total", method="health", outcome="ok") == health
    assert value(page, "llm_rpc_request_duration_seconds_count", method="execute") == ok + failed
    assert value(page, "llm_rpc_request_duration_seconds_bucket", method="execute", le="+Inf") == ok + failed

    assert value(page, "llm_rpc_upstream_calls_total", backend="mock", model="gpt-test", status="ok") == ok
    assert value(page, "llm_rpc_upstream_calls_total", backend="mock", model="gpt-test", status="server_error") == 3
    assert value(page, "llm_rpc_upstream_duration_seconds_count", backend="mock", model="gpt-test") == ok + failed

    # The mock counts words: "Mock answer to: wN x y" is 6 completion tokens, the prompt 3 words + 3.
    assert value(page, "llm_rpc_tokens_total", agent="planner", model="gpt-test", kind="completion") == 6 * ok
    assert value(page, "llm_rpc_tokens_total", agent="planner", model="gpt-test", kind="prompt") == 6 * ok
    assert value(page, "llm_rpc_cost_usd_total", agent="planner", model="gpt-test") == 0.0
    assert value(page, "llm_rpc_calls_total", agent="planner", model="gpt-test", outcome="ok") == ok
    assert value(page, "llm_rpc_calls_total", agent="critic", model="gpt-test", outcome="error") == failed

    for stage in ("decode", "route", "queue", "upstream", "encode"):
        count = value(page, "llm_rpc_execute_stage_seconds_count", stage=stage)
        assert count >= ok, stage
        assert value(page, "llm_rpc_execute_stage_seconds_sum", stage=stage) >= 0.0
    assert value(page, "llm_rpc_backend_cooling_down", backend="mock") == 0.0
    assert value(page, "llm_rpc_backend_state", backend="mock", state="healthy") == 1.0
    assert value(page, "llm_rpc_in_flight") == 0.0
    assert value(page, "llm_rpc_http_connections") == 1.0
    # No chain is open: no budget series (and none made up).
    assert not any(name == "llm_rpc_budget_remaining" for name, _ in page)
    assert value(page, "process_cpu_seconds_total") > 0

    # The same figures over JSON-RPC (the metrics call itself is counted once it has answered).
    counts = {(r["method"], r["outcome"]): r["count"] for r in snap["requests"]}
    assert counts[("execute", "ok")] == ok
    assert counts[("execute", "server_error")] == failed
    assert counts[("health", "ok")] == health
    assert [s["stage"] for s in snap["stages"]] == ["decode", "route", "queue", "upstream", "encode"]
    assert snap["budgets"] in (None, [])  # None while no budget store can list its chains
    assert snap["gauges"]["http_connections"] == 1


async def test_a_backend_in_cooldown_shows_in_the_metrics() -> None:
    router = Router(default_config(environ={}))
    (backend,) = router.backends
    backend.blocked_until = anyio.current_time() + 30
    backend.needs_probe = True
    snap = snapshot(router.metrics, uptime_s=1.0, in_flight=0, backends=router.health(), usage={})
    (row,) = snap.backends
    assert row.cooling_down
    assert 29 < row.cooldown_s <= 30
    page = samples(render_prometheus(snap)[0].decode())
    assert value(page, "llm_rpc_backend_cooling_down", backend="mock") == 1.0
    assert value(page, "llm_rpc_backend_state", backend="mock", state="cooling_down") == 1.0
    assert 29 < value(page, "llm_rpc_backend_cooldown_remaining_seconds", backend="mock") <= 30


async def test_budget_remaining_comes_from_a_store_that_lists_open_chains() -> None:
    class Store:
        def open_chains_remaining(self, limit: int) -> list[tuple[str, str, float]]:
            return [(f"chain-{i}", "tokens", 1000.0 - i) for i in range(limit + 50)]

    snap = snapshot(Metrics(), uptime_s=0, in_flight=0, backends=[], usage={}, budgets=Store())
    assert snap.budgets is not None
    assert len(snap.budgets) == 100  # bounded cardinality
    page = samples(render_prometheus(snap)[0].decode())
    assert value(page, "llm_rpc_budget_remaining", chain_id="chain-3", unit="tokens") == 997.0


def test_label_sets_that_clients_choose_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_SERIES + 500):
        metrics.upstream_call("mock", f"model-{i}", "ok", 0.001)
    assert len(metrics.upstream) <= MAX_SERIES + 1
    assert metrics.upstream[("mock", OTHER, "ok")] == 500
    assert len(metrics.upstream_latency) <= MAX_SERIES + 1


def test_prometheus_client_and_h11_are_not_imported_by_the_stdio_path() -> None:
    code = (
        "import sys, anyio\n"
        "from llm_rpc._inprocess import call_in_process\n"
        "reply = anyio.run(call_in_process, 'execute', {'prompt': 'x'})\n"
        "assert reply['result']['content'] == 'Mock answer to: x'\n"
        "print(sorted(m for m in ('prometheus_client', 'h11') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=server_env(), check=True
    )
    assert done.stdout.strip() == "[]"


async def test_the_metrics_method_answers_in_process() -> None:
    from llm_rpc._inprocess import call_in_process

    reply: dict[str, Any] = await call_in_process("metrics", None)
    result = reply["result"]
    assert result["latency_buckets"][0] == 0.0001
    assert {s["stage"] for s in result["stages"]} == {"decode", "route", "queue", "upstream", "encode"}
