"""The shell surface: ``llm-rpc call`` in-process and against a running server, exit codes, ``Client.spawn``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llm_rpc.client import Client
from tests.transports._proc import ServerProcess, server_env


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_rpc", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=30,
        check=False,
    )


def test_call_in_process_prints_the_result_as_json() -> None:
    done = run_cli("call", "execute", '{"prompt": "from the shell"}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["content"] == "Mock answer to: from the shell"


def test_call_reads_params_from_stdin_with_a_dash() -> None:
    done = run_cli("call", "execute", "-", stdin='{"prompt": "piped", "config": {"max_tokens": 2}}')
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["content"] == "Mock answer"
    assert result["finish_reason"] == "length"


def test_call_error_goes_to_stderr_as_json_with_exit_1() -> None:
    done = run_cli("call", "execute", '{"prompt": 5}')
    assert done.returncode == 1
    assert done.stdout == ""
    error = json.loads(done.stderr)
    assert error["code"] == -32602
    assert error["data"]["path"] == "params.prompt"


@pytest.mark.parametrize("args", [("call", "execute", "{not json"), ("call",), ("bogus",)])
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert run_cli(*args).returncode == 2


def test_call_against_a_running_tcp_server() -> None:
    server = ServerProcess("--tcp", "127.0.0.1:0")
    try:
        line = server.wait_stderr(lambda s: '"listening"' in s)
        port = json.loads(line)["port"]
        done = run_cli("call", "--tcp", f"127.0.0.1:{port}", "health")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "ok"
        missing = run_cli("call", "--tcp", f"127.0.0.1:{port}", "no.such.method")
        assert missing.returncode == 1
        assert json.loads(missing.stderr)["code"] == -32601
    finally:
        server.proc.terminate()
        assert server.wait() == 0
        server.kill()


@pytest.mark.anyio
async def test_client_spawns_the_server_as_a_stdio_child(anyio_backend: str) -> None:
    argv = [sys.executable, "-m", "llm_rpc", "serve", "--stdio", "--backend", anyio_backend]
    async with Client.spawn(argv, env=server_env()) as client:
        results: list[Any] = await client.batch([("execute", {"prompt": "a"}), ("execute", {"prompt": "b"})])
        assert [r["content"] for r in results] == ["Mock answer to: a", "Mock answer to: b"]
        health = await client.call("health")
        assert health["backends"][0]["name"] == "mock"


def test_call_over_a_unix_socket_and_text_logs(tmp_path: Path) -> None:
    path = str(tmp_path / "cli.sock")
    server = ServerProcess("--unix", path, "--log-format", "text", "--log-level", "info")
    try:
        server.wait_stderr(lambda s: '"listening"' in s)
        done = run_cli("call", "--unix", path, "execute", '{"prompt": "unix"}')
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["content"] == "Mock answer to: unix"
    finally:
        server.proc.send_signal(signal.SIGINT)
        assert server.wait() == 0
        server.kill()
    text_lines = [line for line in server.stderr_lines if "llm_rpc" in line]
    assert text_lines
    assert all(not line.lstrip().startswith("{") for line in text_lines)


@pytest.mark.anyio
async def test_client_streams_execute_deltas_as_an_async_iterator(anyio_backend: str) -> None:
    argv = [sys.executable, "-m", "llm_rpc", "serve", "--stdio", "--backend", anyio_backend]
    async with Client.spawn(argv, env=server_env()) as client:
        call = await client.call("execute", {"prompt": "one two three", "mock": {"stream_delay_ms": 5}}, stream=True)
        deltas = [delta async for delta in call]
        assert len(deltas) == 6
        assert "".join(d["content"] for d in deltas) == call.result["content"] == "Mock answer to: one two three"
        failing = await client.call("execute", {"prompt": "x", "mock": {"fail_rate": 1}}, stream=True)
        assert [d async for d in failing] == []
        from llm_rpc.errors import ServerError

        with pytest.raises(ServerError):
            _ = failing.result
