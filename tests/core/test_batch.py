"""``execute_batch`` against a loopback upstream that holds each request: all items in flight at
once, input order kept, failures per item, ``fail_fast`` stopping the rest; and the JSON-RPC method."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.errors import RequestCancelledError, ServerError
from llm_rpc.types import ExecuteResult
from tests.protocol._harness import harness
from tests.upstreams import Reply, Upstream, UpstreamRequest
from tests.upstreams import openai_wire as wire

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"


def _handler(request: UpstreamRequest) -> Reply:
    body: dict[str, Any] = request.json()
    text = body["messages"][-1]["content"]
    if text.startswith("fail now"):
        return Reply.json({"error": {"message": "boom", "type": "server_error"}}, status=500)
    if text.startswith("fail"):
        reply = Reply.json({"error": {"message": "boom", "type": "server_error"}}, status=500)
        reply.delay = 0.3
        return reply
    if text.startswith("hang"):
        return Reply(hang=10)
    reply = Reply.json(wire.completion(f"answer to {text}"))
    reply.delay = 0.3
    return reply


@pytest.fixture
def upstream(canary_key: str) -> Iterator[Upstream]:
    with Upstream(_handler) as up:
        yield up


def _router(up: Upstream) -> Router:
    backend = BackendConfig(provider="openai-compatible", base_url=up.url + "/v1", api_key_env=KEY_ENV)
    return Router(Config(router=RouterSettings(retries=0), backends=[backend]))


async def test_every_item_is_in_flight_at_once_and_results_keep_input_order(upstream: Upstream) -> None:
    all_arrived = threading.Barrier(12, timeout=5)

    def held(request: UpstreamRequest) -> Reply:
        all_arrived.wait()  # no item is answered before every item has reached the upstream
        reply = _handler(request)
        reply.delay = 0.0
        return reply

    upstream.handler = held
    items: list[dict[str, Any]] = [{"prompt": f"item {i}", "model": "m"} for i in range(12)]
    items[5] = {"prompt": "fail please", "model": "m"}
    async with _router(upstream) as router:
        with anyio.fail_after(10):
            outcome = await router.execute_batch(items)
    assert upstream.max_in_flight == 12
    assert outcome.ok == 11
    assert outcome.failed == 1
    assert isinstance(outcome.outcomes[5], ServerError)
    contents = [o.content for o in outcome.outcomes if isinstance(o, ExecuteResult)]
    assert contents == [f"answer to item {i}" for i in range(12) if i != 5]
    assert outcome.total_tokens == 11 * outcome.outcomes[0].usage.total_tokens  # type: ignore[union-attr]


async def test_concurrency_bounds_how_many_run_at_once(upstream: Upstream) -> None:
    async with _router(upstream) as router:
        with anyio.fail_after(10):
            outcome = await router.execute_batch([{"prompt": f"x{i}", "model": "m"} for i in range(6)], concurrency=2)
    assert outcome.ok == 6
    assert upstream.max_in_flight == 2


async def test_fail_fast_cancels_the_items_still_running(upstream: Upstream) -> None:
    items = [
        {"prompt": "hang 1", "model": "m"},
        {"prompt": "fail now", "model": "m"},
        {"prompt": "hang 2", "model": "m"},
    ]
    async with _router(upstream) as router:
        with anyio.fail_after(5):
            outcome = await router.execute_batch(items, fail_fast=True)
        with anyio.fail_after(5):
            while upstream.client_disconnects < 2:
                await anyio.sleep(0.01)
    assert isinstance(outcome.outcomes[1], ServerError)
    assert isinstance(outcome.outcomes[0], RequestCancelledError)
    assert isinstance(outcome.outcomes[2], RequestCancelledError)


async def test_a_batch_chain_id_applies_to_items_without_one() -> None:
    seen: list[str | None] = []
    async with Router() as router:
        original = router.execute

        async def spy(params: Any, **kwargs: Any) -> ExecuteResult:
            seen.append(params.chain_id)
            return await original(params, **kwargs)

        router.execute = spy  # type: ignore[method-assign, assignment]
        await router.execute_batch([{"prompt": "a"}, {"prompt": "b", "chain_id": "own"}], chain_id="batch-chain")
    assert sorted(seen, key=str) == ["batch-chain", "own"]


async def test_the_method_reports_each_item_and_a_summary() -> None:
    from llm_rpc._inprocess import _LocalServer
    from llm_rpc.methods import build_table

    async with Router() as router, harness(build_table(router, _LocalServer())) as h:
        h.feed(
            '{"jsonrpc":"2.0","id":1,"method":"execute_batch","params":{"items":['
            '{"prompt":"one"},{"prompt":"two","mock":{"fail_rate":1,"fail_type":"overloaded"}}]}}'
        )
        (reply,) = await h.settle()
    results = reply["result"]["results"]
    assert results[0]["ok"]["content"] == "Mock answer to: one"
    assert results[1] == {
        "error": {
            "code": -32006,
            "message": "mock failure (overloaded)",
            "data": {"type": "overloaded", "backend": "mock", "provider_message": "simulated by the mock provider"},
        }
    }
    summary = reply["result"]["summary"]
    assert (summary["ok"], summary["failed"], summary["total_tokens"], summary["cost_usd"]) == (1, 1, 8, 0.0)
