"""TCP and Unix sockets, in process on both anyio backends: framing, limits, auth, shared state."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from llm_rpc.client import Client
from llm_rpc.errors import ConfigError
from llm_rpc.protocol.errors import InvalidParamsError, MethodNotFoundError, UnauthorizedError
from llm_rpc.server import ServeOptions, parse_host_port, serve

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def running(options: ServeOptions) -> AsyncIterator[dict[str, Any]]:
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, options)
        yield bound
        tg.cancel_scope.cancel()


class RawConnection:
    """Bytes in, replies out: for framing tests below the Client's level."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def send(self, data: bytes) -> None:
        await self.stream.send(data)

    async def replies(self, count: int) -> list[Any]:
        out: list[Any] = []
        with anyio.fail_after(10):
            while len(out) < count:
                while b"\n" in self.buffer and len(out) < count:
                    line, _, self.buffer = self.buffer.partition(b"\n")
                    out.append(json.loads(line))
                if len(out) < count:
                    self.buffer += await self.stream.receive()
        return out


async def test_tcp_port_0_is_announced_on_stderr_as_one_json_line(capsys: pytest.CaptureFixture[str]) -> None:
    async with running(ServeOptions(tcp=[("127.0.0.1", 0)])) as bound:
        ((host, port),) = bound["tcp"]
    assert host == "127.0.0.1"
    assert port > 0
    events = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert {"event": "listening", "transport": "tcp", "host": "127.0.0.1", "port": port} in events


async def test_tcp_pipelined_requests_and_errors_on_one_connection() -> None:
    async with running(ServeOptions(tcp=[("127.0.0.1", 0)], max_message_bytes=300)) as bound:
        ((host, port),) = bound["tcp"]
        async with await anyio.connect_tcp(host, port) as stream:
            conn = RawConnection(stream)
            lines = [
                json.dumps({"jsonrpc": "2.0", "id": i, "method": "execute", "params": {"prompt": f"n{i}"}})
                for i in range(50)
            ]
            await conn.send(("\n".join(lines) + "\n").encode())
            replies = await conn.replies(50)
            assert sorted(r["id"] for r in replies) == list(range(50))
            assert {r["result"]["content"] for r in replies} == {f"Mock answer to: n{i}" for i in range(50)}
            await conn.send(
                b'{"jsonrpc":"2.0","id":"big","method":"execute","params":{"prompt":"' + b"y" * 1000 + b'"}}\n'
            )
            await conn.send(b"not json\n")
            await conn.send(b'{"jsonrpc":"2.0","id":"after","method":"health"}\n')
            too_big, parse, ok = await conn.replies(3)
    assert too_big["error"]["code"] == -32600
    assert too_big["error"]["data"]["limit"] == "max_message_bytes"
    assert parse["error"]["code"] == -32700
    assert ok["id"] == "after"
    assert ok["result"]["status"] == "ok"


async def test_lsp_framing_over_tcp_trickled_one_byte_at_a_time() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"health"}'
    message = b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    async with running(ServeOptions(tcp=[("127.0.0.1", 0)])) as bound:
        ((host, port),) = bound["tcp"]
        async with await anyio.connect_tcp(host, port) as stream:
            for i in range(len(message)):
                await stream.send(message[i : i + 1])
            received = b""
            with anyio.fail_after(10):
                while b"\r\n\r\n" not in received or len(received.partition(b"\r\n\r\n")[2]) < int(
                    received.split(b"\r\n")[0].split(b":")[1]
                ):
                    received += await stream.receive()
    header, _, reply = received.partition(b"\r\n\r\n")
    assert header.startswith(b"Content-Length: ")
    assert json.loads(reply)["result"]["status"] == "ok"


async def test_unix_socket_is_private_and_removed_at_exit(tmp_path: Path) -> None:
    path = str(tmp_path / "llm.sock")
    async with running(ServeOptions(unix=[path])):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        async with Client.connect_unix(path) as client:
            result = await client.call("execute", {"prompt": "over unix"})
            assert result["content"] == "Mock answer to: over unix"
    assert not Path(path).exists()  # noqa: ASYNC240 (a test assertion after the server stopped)


async def test_transports_in_one_process_share_one_state(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    async with running(ServeOptions(tcp=[("127.0.0.1", 0)], unix=[path])) as bound:
        ((host, port),) = bound["tcp"]
        async with (
            Client.connect_tcp(host, port) as tcp,
            Client.connect_unix(path) as unix,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(tcp.call, "execute", {"prompt": "slow", "mock": {"latency_ms": 500}})
            with anyio.fail_after(5):
                while (await unix.call("health"))["in_flight"] < 1:
                    await anyio.sleep(0.01)


async def test_client_raises_typed_errors_by_code() -> None:
    async with running(ServeOptions(tcp=[("127.0.0.1", 0)])) as bound:
        ((host, port),) = bound["tcp"]
        async with Client.connect_tcp(host, port) as client:
            with pytest.raises(MethodNotFoundError) as not_found:
                await client.call("nope")
            assert not_found.value.code == -32601
            with pytest.raises(InvalidParamsError) as invalid:
                await client.call("execute", {"prompt": "x", "config": {"max_tokens": "many"}})
            assert invalid.value.data["path"] == "params.config.max_tokens"
            from llm_rpc.errors import ServerError

            with pytest.raises(ServerError) as upstream:
                await client.call("execute", {"prompt": "x", "mock": {"fail_rate": 1.0}})
            assert upstream.value.data["backend"] == "mock"
            results = await client.batch([("health", None), ("nope", None), ("execute", {"prompt": "b"})])
            assert results[0]["status"] == "ok"
            assert isinstance(results[1], MethodNotFoundError)
            assert results[2]["content"] == "Mock answer to: b"
            await client.notify("health")


async def test_auth_is_required_first_when_a_token_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_TOKEN", "t0ken-for-tests-123")
    options = ServeOptions(tcp=[("127.0.0.1", 0)], auth_token_env="LLM_RPC_TEST_TOKEN")
    async with running(options) as bound:
        ((host, port),) = bound["tcp"]
        async with Client.connect_tcp(host, port) as client:
            with pytest.raises(UnauthorizedError):
                await client.call("health")
            with pytest.raises(UnauthorizedError):
                await client.call("auth", {"token": "wrong"})
            assert await client.call("auth", {"token": "t0ken-for-tests-123"}) == {"authenticated": True}
            assert (await client.call("health"))["status"] == "ok"


async def test_binding_beyond_loopback_requires_an_auth_token() -> None:
    with pytest.raises(ConfigError) as refused:
        await serve(ServeOptions(tcp=[("0.0.0.0", 0)]))
    assert "--auth-token-env" in str(refused.value)


async def test_shutdown_over_tcp_lets_serve_return() -> None:
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, ServeOptions(tcp=[("127.0.0.1", 0)]))
        ((host, port),) = bound["tcp"]
        async with Client.connect_tcp(host, port) as client:
            assert await client.call("shutdown") == {"stopping": True}
        tg.cancel_scope.deadline = anyio.current_time() + 10
    # Leaving the task group before its deadline proves serve() returned by itself.
    assert not tg.cancel_scope.cancelled_caught


def test_host_port_parsing() -> None:
    assert parse_host_port("0") == ("127.0.0.1", 0)
    assert parse_host_port(":8080") == ("127.0.0.1", 8080)
    assert parse_host_port("localhost:1") == ("localhost", 1)
    assert parse_host_port("[::1]:9") == ("::1", 9)
    with pytest.raises(ValueError, match="port"):
        parse_host_port("host:http")
