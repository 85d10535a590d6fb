"""JSON-RPC over HTTP on loopback, both anyio backends: bodies, SSE, keep-alive, limits, slow clients."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.lowlevel
import httpx2 as httpx
import pytest

from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.types import ExecuteParams
from tests.http._server import listening, raw_exchange, running, sse_events

pytestmark = pytest.mark.anyio


def rpc(method: str, params: Any = None, id: Any = 1) -> dict[str, Any]:
    message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if params is not None:
        message["params"] = params
    if id is not None:
        message["id"] = id
    return message


async def test_a_request_in_the_body_gets_its_reply_as_the_body_on_rpc_and_on_root() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        for path in ("/rpc", "/"):
            response = await client.post(path, json=rpc("execute", {"prompt": "over http"}, id="a"))
            assert response.status_code == 200
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert body["id"] == "a"
            assert body["result"]["content"] == "Mock answer to: over http"


async def test_a_batch_gets_one_array_without_the_notifications() -> None:
    batch = [
        rpc("execute", {"prompt": "one"}, id=1),
        rpc("health", id=None),
        rpc("execute", {"prompt": "two", "mock": {"latency_ms": 20}}, id=2),
        rpc("no.such.method", id=3),
    ]
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/rpc", json=batch)
    assert response.status_code == 200
    replies = response.json()
    assert [r["id"] for r in replies] == [1, 2, 3]
    assert replies[1]["result"]["content"] == "Mock answer to: two"
    assert replies[2]["error"]["code"] == -32601


async def test_a_body_of_only_notifications_gets_204_and_no_body() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        single = await client.post("/rpc", json=rpc("health", id=None))
        batch = await client.post("/rpc", json=[rpc("health", id=None), rpc("execute", {"prompt": "x"}, id=None)])
        slow = await client.post("/rpc", json=rpc("execute", {"prompt": "x", "mock": {"latency_ms": 5000}}, id=None))
    for response in (single, batch, slow):
        assert response.status_code == 204
        assert response.content == b""


async def test_json_rpc_errors_are_200_with_the_error_in_the_body() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        parse = await client.post("/rpc", content=b"{not json")
        params = await client.post("/rpc", json=rpc("execute", {"prompt": "x", "typo": 1}))
        empty = await client.post("/rpc", content=b"")
    assert parse.status_code == params.status_code == empty.status_code == 200
    assert parse.json()["error"]["code"] == -32700
    assert params.json()["error"]["data"]["unknown_field"] == "typo"
    assert empty.json()["error"]["code"] == -32700


async def test_keep_alive_serves_every_request_on_one_connection() -> None:
    table = MethodTable()

    def echo(params: list[int], ctx: RequestContext) -> list[int]:
        return params

    table.add("echo", echo, params=list[int], result=list[int], inline=True)
    async with (
        listening(table) as server,
        httpx.AsyncClient(base_url=server.url, limits=httpx.Limits(max_connections=1)) as client,
    ):
        for i in range(20):
            response = await client.post("/rpc", json=rpc("echo", [i], id=i))
            assert response.json()["result"] == [i]
        assert server.stats.accepted == 1
        assert server.stats.requests == 20


async def test_a_slow_request_is_awaited_while_other_connections_are_served() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        results: dict[str, Any] = {}

        async def slow() -> None:
            response = await client.post("/rpc", json=rpc("execute", {"prompt": "s", "mock": {"latency_ms": 300}}))
            results["slow"] = response.json()["result"]["content"]

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            for i in range(5):
                response = await client.post("/rpc", json=rpc("execute", {"prompt": f"f{i}"}))
                assert response.json()["result"]["content"] == f"Mock answer to: f{i}"
            assert "slow" not in results  # the fast ones did not wait for it
    assert results["slow"] == "Mock answer to: s"


async def test_an_oversized_body_gets_413_with_a_json_rpc_error_and_the_connection_closes() -> None:
    async with running(max_message_bytes=1000) as url, httpx.AsyncClient(base_url=url) as client:
        big = rpc("execute", {"prompt": "y" * 5000})
        response = await client.post("/rpc", json=big)
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        error = response.json()["error"]
        assert error["code"] == -32600
        assert error["data"] == {
            "type": "message_too_large",
            "limit": "max_message_bytes",
            "max_bytes": 1000,
            "size": len(json.dumps(big, separators=(",", ":"))),
        }
        execute = await client.post("/execute", content=b'{"prompt": "' + b"z" * 2000 + b'"}')
        assert execute.status_code == 413
        assert execute.json()["error"]["data"]["type"] == "message_too_large"
        after = await client.post("/rpc", json=rpc("execute", {"prompt": "small"}))
        assert after.json()["result"]["content"] == "Mock answer to: small"


async def test_an_oversized_chunked_body_gets_413_too() -> None:
    async def chunks() -> Any:
        for _ in range(10):
            yield b"x" * 500

    async with running(max_message_bytes=1000) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/rpc", content=chunks())
    assert response.status_code == 413
    assert response.json()["error"]["data"]["max_bytes"] == 1000


async def test_a_slow_client_is_timed_out_without_affecting_others() -> None:
    async with running(http_header_timeout=0.3, http_body_timeout=0.3) as url:
        host, port = url.removeprefix("http://").split(":")
        async with (
            await anyio.connect_tcp(host, int(port)) as slow_head,
            await anyio.connect_tcp(host, int(port)) as slow_body,
            httpx.AsyncClient(base_url=url) as client,
        ):
            # One sends half a request head, the other a head and half its body; then both stall.
            await slow_head.send(b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-le")
            await slow_body.send(b'POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"jsonrpc"')
            for i in range(10):
                response = await client.post("/rpc", json=rpc("execute", {"prompt": f"p{i}"}))
                assert response.json()["result"]["content"] == f"Mock answer to: p{i}"
            head_reply = await raw_exchange(slow_head, b"")
            body_reply = await raw_exchange(slow_body, b"")
    assert head_reply.startswith(b"HTTP/1.1 408 ")
    assert b'"limit":"header_timeout"' in head_reply
    assert body_reply.startswith(b"HTTP/1.1 408 ")
    assert b'"limit":"body_timeout"' in body_reply


async def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    async with running(http_keepalive_timeout=0.2) as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            body = json.dumps(rpc("health")).encode()
            reply = await raw_exchange(
                stream, b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
            )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")  # answered, then closed when idle


async def test_requests_spaced_within_the_keepalive_timeout_keep_one_connection() -> None:
    table = MethodTable()
    async with (
        listening(table, keepalive_timeout=0.4) as server,
        httpx.AsyncClient(base_url=server.url, limits=httpx.Limits(max_connections=1)) as client,
    ):
        for _ in range(6):
            assert (await client.get("/health")).status_code == 200
            await anyio.sleep(0.15)  # more than the deadline's slack, less than the timeout
        assert server.stats.accepted == 1


async def test_over_the_connection_cap_a_new_connection_gets_503_server_busy() -> None:
    table = MethodTable()
    async with listening(table, max_connections=1) as server:
        async with await anyio.connect_tcp(server.host, server.port) as first:
            await first.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            assert (await first.receive()).startswith(b"HTTP/1.1 200 OK")
            async with await anyio.connect_tcp(server.host, server.port) as second:
                refused = await raw_exchange(second, b"")
        assert refused.startswith(b"HTTP/1.1 503 ")
        body = json.loads(refused.partition(b"\r\n\r\n")[2])
        assert body["error"]["data"]["type"] == "server_busy"
        assert server.stats.rejected == 1


async def test_http_1_0_and_connection_close_end_the_connection_after_the_response() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        for request in (
            b"GET /health HTTP/1.0\r\n\r\n",
            b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        ):
            async with await anyio.connect_tcp(host, int(port)) as stream:
                reply = await raw_exchange(stream, request)
            assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
            assert b"connection: close\r\n" in reply
            assert reply.endswith(b'{"status":"ok"}')


async def test_malformed_http_gets_400_and_is_closed() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply = await raw_exchange(stream, b"NOT HTTP AT ALL\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


# -- Server-Sent Events ---------------------------------------------------------------------------------


def ticker_table() -> MethodTable:
    """A test-only method that sends ``n`` notifications through ctx.notify, then answers."""
    table = MethodTable()

    async def ticker(params: list[int], ctx: RequestContext) -> dict[str, int]:
        (n,) = params
        for i in range(n):
            ctx.notify("ticker.tick", {"i": i})
            await anyio.lowlevel.checkpoint()
        return {"ticks": n}

    def quick(params: list[int], ctx: RequestContext) -> str:
        ctx.notify("quick.note", {"inline": True})
        return "done"

    table.add("ticker", ticker, params=list[int], result=dict[str, int])
    table.add("quick", quick, params=list[int], result=str, inline=True)
    return table


async def test_accept_event_stream_turns_a_requests_notifications_into_events_then_the_reply() -> None:
    async with listening(ticker_table()) as server, httpx.AsyncClient(base_url=server.url) as client:
        response = await client.post("/rpc", json=rpc("ticker", [5], id=9), headers={"accept": "text/event-stream"})
        quick = await client.post("/rpc", json=rpc("quick", [], id=10), headers={"accept": "text/event-stream"})
        plain = await client.post("/rpc", json=rpc("ticker", [3], id=11))
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    assert events[:-1] == [{"jsonrpc": "2.0", "method": "ticker.tick", "params": {"i": i}} for i in range(5)]
    assert events[-1] == {"jsonrpc": "2.0", "id": 9, "result": {"ticks": 5}}
    assert sse_events(quick.text) == [
        {"jsonrpc": "2.0", "method": "quick.note", "params": {"inline": True}},
        {"jsonrpc": "2.0", "id": 10, "result": "done"},
    ]
    # Without SSE the notifications have nowhere to go: the reply alone.
    assert plain.json() == {"jsonrpc": "2.0", "id": 11, "result": {"ticks": 3}}


async def test_events_are_sent_as_they_happen_not_at_the_end() -> None:
    table = MethodTable()
    gate = anyio.Event()

    async def gated(params: list[int], ctx: RequestContext) -> str:
        ctx.notify("gated.first", {})
        await gate.wait()
        return "released"

    table.add("gated", gated, params=list[int], result=str)
    async with listening(table) as server, httpx.AsyncClient(base_url=server.url) as client:
        request = client.build_request("POST", "/rpc", json=rpc("gated", []), headers={"accept": "text/event-stream"})
        response = await client.send(request, stream=True)
        lines = response.aiter_lines()
        with anyio.fail_after(5):
            first = await anext(lines)
        assert json.loads(first.removeprefix("data: "))["method"] == "gated.first"
        gate.set()
        rest = "\n".join([line async for line in lines])
        await response.aclose()
    assert sse_events(rest) == [{"jsonrpc": "2.0", "id": 1, "result": "released"}]


async def test_execute_with_stream_true_answers_as_server_sent_events() -> None:
    params = ExecuteParams(prompt="one two three", stream=True)
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/rpc", json=rpc("execute", {"prompt": params.prompt, "stream": True}, id=4))
    assert response.headers["content-type"] == "text/event-stream"
    events = sse_events(response.text)
    deltas = [e["params"] for e in events[:-1]]
    assert all(e["method"] == "execute.delta" for e in events[:-1])
    assert [d["index"] for d in deltas] == list(range(len(deltas)))
    assert {d["request_id"] for d in deltas} == {4}
    final = events[-1]["result"]
    assert "".join(d["delta"]["content"] for d in deltas) == final["content"] == "Mock answer to: one two three"


def _abandonable(table: MethodTable) -> tuple[anyio.Event, list[str]]:
    """Adds ``forever``: ``[0]`` answers "done" after 50 ms; anything else runs until cancelled (then
    "cancelled" is recorded). Returns the event set when such a call starts, and the record."""
    started = anyio.Event()
    outcome: list[str] = []

    async def forever(params: list[int], ctx: RequestContext) -> str:
        if params == [0]:
            await anyio.sleep(0.05)
            return "done"
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            outcome.append("cancelled")
        return "never"  # pragma: no cover

    table.add("forever", forever, params=list[int], result=str)
    return started, outcome


def _post(body: bytes) -> bytes:
    return b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


async def _cancelled(outcome: list[str]) -> None:
    with anyio.fail_after(5):
        while not outcome:
            await anyio.sleep(0.01)
    assert outcome == ["cancelled"]


async def test_a_client_that_disconnects_mid_request_cancels_it() -> None:
    table = MethodTable()
    started, outcome = _abandonable(table)
    async with listening(table) as server:
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            await stream.send(_post(json.dumps(rpc("forever", [])).encode()))
            with anyio.fail_after(5):
                await started.wait()
        await _cancelled(outcome)


async def test_a_disconnect_is_seen_on_a_kept_alive_connection_after_earlier_requests() -> None:
    """The reader that watches for the client's close lives across requests: after two answered calls
    on one connection, a third that the client abandons is cancelled, and a notification-only call
    between them changes nothing."""
    table = MethodTable()
    started, outcome = _abandonable(table)
    async with listening(table) as server:
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            for i in range(2):
                await stream.send(_post(json.dumps(rpc("forever", [0], id=i)).encode()))
                received = b""
                with anyio.fail_after(5):
                    while b'"done"' not in received:
                        received += await stream.receive()
            note = json.dumps({"jsonrpc": "2.0", "method": "forever", "params": [0]}).encode()
            await stream.send(_post(note))
            with anyio.fail_after(5):
                received = b""
                while b"204" not in received:
                    received += await stream.receive()
            await stream.send(_post(json.dumps(rpc("forever", [1], id=3)).encode()))
            with anyio.fail_after(5):
                await started.wait()
        await _cancelled(outcome)


async def test_shutdown_closes_idle_connections_and_drains_a_busy_one() -> None:
    table = MethodTable()
    release = anyio.Event()

    async def slow(params: list[int], ctx: RequestContext) -> str:
        await release.wait()
        return "finished"

    table.add("slow", slow, params=list[int], result=str)
    async with (
        listening(table) as server,
        await anyio.connect_tcp(server.host, server.port) as idle,
        httpx.AsyncClient(base_url=server.url) as client,
    ):
        replies: list[Any] = []

        async def call() -> None:
            replies.append(await client.post("/rpc", json=rpc("slow", [])))

        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            with anyio.fail_after(5):
                while server.stats.requests < 1:
                    await anyio.sleep(0.01)
            server.lifecycle.request_stop("test")
            assert await raw_exchange(idle, b"") == b""  # the idle one closes at once
            release.set()
    (reply,) = replies
    assert reply.json()["result"] == "finished"
    assert reply.headers["connection"] == "close"
