"""Cancellation and disconnects over a real socket: the upstream call is closed, the reply is
-32800, and a client that goes away takes its in-flight requests with it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from llm_rpc.client import Client
from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.protocol.errors import RequestCancelledError
from llm_rpc.server import ServeOptions, serve
from tests.upstreams import Reply, Upstream

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"


@pytest.fixture
def hanging(canary_key: str) -> Iterator[Upstream]:
    with Upstream(lambda req: Reply(hang=30)) as up:
        yield up


@asynccontextmanager
async def server_for(up: Upstream) -> AsyncIterator[tuple[str, int, Router]]:
    backend = BackendConfig(provider="openai-compatible", base_url=up.url + "/v1", api_key_env=KEY_ENV)
    router = Router(Config(router=RouterSettings(retries=0), backends=[backend]))
    async with router, anyio.create_task_group() as tg:
        bound = await tg.start(serve, ServeOptions(tcp=[("127.0.0.1", 0)]), router)
        ((host, port),) = bound["tcp"]
        yield host, port, router
        tg.cancel_scope.cancel()


async def _wait_for(predicate: Any, what: str) -> None:
    with anyio.fail_after(10):
        while not predicate():
            await anyio.sleep(0.01)


@pytest.mark.parametrize("how", ["cancel", "$/cancelRequest", "notifications/cancelled"])
async def test_a_cancelled_request_closes_its_upstream_call_and_answers_cancelled(hanging: Upstream, how: str) -> None:
    async with server_for(hanging) as (host, port, _router), Client.connect_tcp(host, port) as client:
        async with anyio.create_task_group() as tg:
            outcome: list[BaseException] = []

            async def call() -> None:
                try:
                    await client.call("execute", {"prompt": "x", "model": "m"})
                except RequestCancelledError as exc:
                    outcome.append(exc)

            tg.start_soon(call)
            await _wait_for(lambda: len(hanging.requests) == 1, "the upstream call")
            request_id = 1  # the client's first id
            if how == "cancel":
                assert await client.call("cancel", {"id": request_id}) == {"cancelled": True}
                assert await client.call("cancel", {"id": 999}) == {"cancelled": False}
            elif how == "$/cancelRequest":
                await client.notify(how, {"id": request_id})
            else:
                await client.notify(how, {"requestId": request_id, "reason": "user gave up"})
        await _wait_for(lambda: hanging.client_disconnects >= 1, "the upstream to see the close")
    (error,) = outcome
    assert isinstance(error, RequestCancelledError)
    assert error.code == -32800


async def test_a_client_that_disconnects_has_every_in_flight_request_cancelled(hanging: Upstream) -> None:
    async with server_for(hanging) as (host, port, router):
        stream = await anyio.connect_tcp(host, port)
        for i in range(3):
            request = {"jsonrpc": "2.0", "id": i, "method": "execute", "params": {"prompt": f"x{i}", "model": "m"}}
            await stream.send((json.dumps(request) + "\n").encode())
        await _wait_for(lambda: len(hanging.requests) == 3, "three upstream calls")
        await stream.aclose()
        await _wait_for(lambda: hanging.client_disconnects >= 3, "every upstream call to be closed")
        await _wait_for(lambda: all(b.in_flight == 0 for b in router.backends), "nothing left in flight")


async def test_a_reader_that_never_reads_is_cut_off_without_stalling_other_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    options = ServeOptions(tcp=[("127.0.0.1", 0)], max_outbox_bytes=256 * 1024)
    prompt = "word " * 20_000  # the mock echoes it: ~100 KB per reply
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, options)
        ((host, port),) = bound["tcp"]
        stalled = await anyio.connect_tcp(host, port)
        request = {"jsonrpc": "2.0", "id": 0, "method": "execute", "params": {"prompt": prompt}}
        closed = False
        async with Client.connect_tcp(host, port) as other:
            with anyio.fail_after(20):
                # Keep asking without ever reading, until the server gives up on this connection.
                for i in range(2000):
                    request["id"] = i
                    try:
                        await stalled.send((json.dumps(request) + "\n").encode())
                    except (anyio.BrokenResourceError, OSError):
                        closed = True
                        break
                    if i % 20 == 0:
                        # Another client is served all along.
                        assert (await other.call("health"))["status"] == "ok"
        await stalled.aclose()
        tg.cancel_scope.cancel()
    assert closed
    assert any(getattr(r, "limit", None) == "outbox_bytes" for r in caplog.records)
