"""HTTP/1.1 at the byte level, over raw loopback sockets on both anyio backends: pipelining, chunked
bodies, 100-continue, trickled heads, the head limit, the Host rule, HTTP/1.0 and Upgrade."""

from __future__ import annotations

import json
from typing import Any

import anyio
import anyio.abc
import pytest

from llm_rpc.transports.http import MAX_HEADER_BYTES
from tests.http._server import listening, raw_exchange, running, sse_events
from tests.http.test_rpc import ticker_table

pytestmark = pytest.mark.anyio


def post(body: bytes, *, path: bytes = b"/rpc", extra: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST %s HTTP/%s\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        path,
        version,
        len(body),
        extra,
        body,
    )


def execute(prompt: str, id: int = 1, **params: Any) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": id, "method": "execute", "params": {"prompt": prompt, **params}}
    ).encode()


def responses(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split known-length responses read off a connection: (status, headers, body) each."""
    out = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        if len(rest) < length:
            raise ValueError("incomplete response")
        out.append((status, headers, rest[:length]))
        data = rest[length:]
    return out


async def read_until(stream: anyio.abc.ByteStream, count: int) -> bytes:
    """Read until ``count`` whole known-length responses have arrived."""
    data = b""
    with anyio.fail_after(10):
        while not _complete(data, count):
            data += await stream.receive()
    return data


def _complete(data: bytes, count: int) -> bool:
    try:
        return len(responses(data)) >= count
    except (ValueError, KeyError, IndexError):
        return False


async def test_pipelined_requests_in_one_write_are_answered_in_order() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"".join(post(execute(f"p{i}", id=i)) for i in range(5)))
            replies = responses(await read_until(stream, 5))
    assert [status for status, _, _ in replies] == [200] * 5
    assert [json.loads(body)["result"]["content"] for _, _, body in replies] == [
        f"Mock answer to: p{i}" for i in range(5)
    ]


async def test_a_request_trickled_one_byte_at_a_time_is_served() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            for byte in post(execute("slowly")):
                await stream.send(bytes([byte]))
            ((status, _, body),) = responses(await read_until(stream, 1))
    assert status == 200
    assert json.loads(body)["result"]["content"] == "Mock answer to: slowly"


async def test_a_chunked_request_body_is_read_whole() -> None:
    body = execute("in chunks")
    chunked = (
        b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:25], body[25:])) + b"0\r\n\r\n"
    )
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"POST /rpc HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n" + chunked)
            ((status, _, reply),) = responses(await read_until(stream, 1))
    assert status == 200
    assert json.loads(reply)["result"]["content"] == "Mock answer to: in chunks"


async def test_expect_100_continue_gets_an_interim_response_before_the_body_is_sent() -> None:
    body = execute("after continue")
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            head, _, _ = post(body, extra=b"expect: 100-continue\r\n").partition(b"\r\n\r\n")
            await stream.send(head + b"\r\n\r\n")
            with anyio.fail_after(5):
                interim = await stream.receive()
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            await stream.send(body)
            ((status, _, reply),) = responses(await read_until(stream, 1))
    assert status == 200
    assert json.loads(reply)["result"]["content"] == "Mock answer to: after continue"


async def test_a_head_over_the_limit_gets_431_and_the_connection_closes() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        # Many headers, and one header line that never ends: both are bounded.
        many = b"".join(b"x-h%d: %s\r\n" % (i, b"v" * 100) for i in range(MAX_HEADER_BYTES // 100))
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply_many = await raw_exchange(stream, b"GET /health HTTP/1.1\r\nhost: x\r\n" + many + b"\r\n")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(b"GET /health HTTP/1.1\r\nhost: x\r\nx-endless: ")
            for _ in range(4):
                await stream.send(b"a" * (MAX_HEADER_BYTES // 2))
            reply_endless = await raw_exchange(stream, b"")
    for reply in (reply_many, reply_endless):
        assert reply.startswith(b"HTTP/1.1 431 ")
        error = json.loads(reply.partition(b"\r\n\r\n")[2])["error"]
        assert error["data"] == {
            "type": "message_too_large",
            "limit": "max_header_bytes",
            "max_bytes": MAX_HEADER_BYTES,
        }


async def test_http_1_1_without_host_gets_400() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply = await raw_exchange(stream, b"GET /health HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert json.loads(reply.partition(b"\r\n\r\n")[2])["error"]["data"]["type"] == "invalid_http"


async def test_conflicting_lengths_get_400() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply = await raw_exchange(
                stream, b"POST /rpc HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"
            )
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_a_request_after_a_good_one_that_is_malformed_gets_the_good_ones_answer_first() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply = await raw_exchange(stream, post(execute("good")) + b"NOT HTTP\r\n\r\n")
    first, _, rest = reply.partition(b"HTTP/1.1 400 ")
    assert b"Mock answer to: good" in first
    assert rest  # then the 400, then the close


async def test_an_upgrade_request_is_answered_plainly_and_the_connection_closes() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            reply = await raw_exchange(
                stream, b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\nxyz"
            )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"connection: close\r\n" in reply
    assert reply.endswith(b'{"status":"ok"}')


def _dechunk(data: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert data == b"\r\n"
            return out
        out += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


async def test_an_event_stream_is_chunked_on_http_1_1_and_close_delimited_on_http_1_0() -> None:
    body = b'{"jsonrpc":"2.0","id":7,"method":"ticker","params":[3]}'
    async with listening(ticker_table()) as server:
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            await stream.send(post(body, extra=b"accept: text/event-stream\r\n"))
            data = b""
            with anyio.fail_after(5):
                while not data.endswith(b"0\r\n\r\n"):
                    data += await stream.receive()
            # The connection stays open for the next request.
            await stream.send(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            ((health_status, _, _),) = responses(await read_until(stream, 1))
        async with await anyio.connect_tcp(server.host, server.port) as stream:
            old = await raw_exchange(stream, post(body, extra=b"accept: text/event-stream\r\n", version=b"1.0"))
    head, _, chunked = data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    events_11 = sse_events(_dechunk(chunked).decode())
    assert health_status == 200
    head_10, _, raw_10 = old.partition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head_10
    assert b"connection: close" in head_10
    events_10 = sse_events(raw_10.decode())
    for events in (events_11, events_10):
        assert events == [
            *({"jsonrpc": "2.0", "method": "ticker.tick", "params": {"i": i}} for i in range(3)),
            {"jsonrpc": "2.0", "id": 7, "result": {"ticks": 3}},
        ]


async def test_a_client_that_leaves_mid_body_costs_nothing_to_the_next() -> None:
    async with running() as url:
        host, port = url.removeprefix("http://").split(":")
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(post(execute("never finished"))[:-10])
        async with await anyio.connect_tcp(host, int(port)) as stream:
            await stream.send(post(execute("next")))
            ((status, _, reply),) = responses(await read_until(stream, 1))
    assert status == 200
    assert json.loads(reply)["result"]["content"] == "Mock answer to: next"
