"""stdio over real pipes: both framings, bad input, drain on EOF and on SIGTERM, a clean stdout."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.transports._proc import ServerProcess, server_env

BACKENDS = ["asyncio", "trio"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def spawn(backend: str) -> Iterator[type[ServerProcess]]:
    procs: list[ServerProcess] = []

    class _Spawn(ServerProcess):
        def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
            super().__init__("--stdio", "--backend", backend, *args, env=env)
            procs.append(self)

    yield _Spawn
    for p in procs:
        p.kill()


def test_the_readme_one_shot_pipe_prints_one_result_and_exits_0(backend: str) -> None:
    line = '{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hello"}}\n'
    done = subprocess.run(
        [sys.executable, "-m", "llm_rpc", "serve", "--stdio", "--backend", backend],
        input=line.encode(),
        capture_output=True,
        env=server_env(),
        timeout=30,
        check=False,
    )
    assert done.returncode == 0
    (reply_line,) = done.stdout.decode().splitlines()
    reply = json.loads(reply_line)
    assert reply["id"] == 1
    result = reply["result"]
    assert result["content"] == "Mock answer to: Hello"
    assert result["provider"] == result["backend"] == "mock"
    assert result["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    assert result["finish_reason"] == "stop"
    assert result["cost_usd"] == 0.0
    assert result["metadata"] == {}


def test_bad_frames_get_errors_and_the_next_request_is_served(spawn: type[ServerProcess]) -> None:
    server = spawn("--max-message-bytes", "200")
    server.send(b'{"jsonrpc":"2.0","id":"big","method":"execute","params":{"prompt":"' + b"x" * 500 + b'"}}\n')
    server.send(b'{"jsonrpc":"2.0","id":1,"method":"health"}\n')
    server.send(b'{"jsonrpc":"2.0","id":"\xff\xfe","method":"health"}\n')
    server.send(b'{"jsonrpc": "2.0", "method"\n')
    server.send(b"\n\r\n   \n")
    server.send(b'{"jsonrpc":"2.0","id":2,"method":"health"}\r\n')
    server.close_stdin()
    replies = server.read_all()
    assert server.wait() == 0
    assert [r["id"] for r in replies] == [None, 1, None, None, 2]
    too_big, ok1, bad_utf8, bad_json, ok2 = replies
    assert too_big["error"]["code"] == -32600
    assert too_big["error"]["data"]["limit"] == "max_message_bytes"
    assert too_big["error"]["data"]["max_bytes"] == 200
    assert bad_utf8["error"]["code"] == -32700
    assert bad_json["error"]["code"] == -32700
    assert ok1["result"]["status"] == ok2["result"]["status"] == "ok"


def test_lsp_framing_is_detected_and_replies_use_it(spawn: type[ServerProcess]) -> None:
    server = spawn()
    body = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hi there"}}'
    server.send(b"Content-Length: %d\r\nContent-Type: application/json\r\n\r\n%s" % (len(body), body))
    server.close_stdin()
    assert server.wait() == 0
    raw = bytes(server.raw_stdout)
    header, _, rest = raw.partition(b"\r\n\r\n")
    assert header.startswith(b"Content-Length: ")
    assert len(rest) == int(header.split(b":")[1])
    assert json.loads(rest)["result"]["content"] == "Mock answer to: Hi there"


def test_eof_finishes_every_in_flight_request_before_exiting_0(spawn: type[ServerProcess]) -> None:
    server = spawn()
    for i in range(5):
        server.request(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "execute",
                "params": {"prompt": f"p{i}", "mock": {"latency_ms": 300}},
            }
        )
    server.close_stdin()
    replies = server.read_all()
    assert server.wait() == 0
    assert sorted(r["id"] for r in replies) == [0, 1, 2, 3, 4]
    assert all("result" in r for r in replies)


def test_a_slow_execute_does_not_delay_health(spawn: type[ServerProcess]) -> None:
    server = spawn()
    server.request(
        {
            "jsonrpc": "2.0",
            "id": "slow",
            "method": "execute",
            "params": {"prompt": "x", "mock": {"latency_ms": 2000}},
        }
    )
    server.request({"jsonrpc": "2.0", "id": "health", "method": "health"})
    first = server.read_line()
    assert first["id"] == "health"
    assert first["result"]["in_flight"] == 1
    server.close_stdin()
    assert server.read_line()["id"] == "slow"
    assert server.wait() == 0


def test_sigterm_drains_in_flight_requests_then_exits_0(spawn: type[ServerProcess]) -> None:
    server = spawn()
    server.request(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "execute",
            "params": {"prompt": "x", "mock": {"latency_ms": 500}},
        }
    )
    server.request({"jsonrpc": "2.0", "id": 2, "method": "health"})
    assert server.read_line()["id"] == 2
    server.proc.send_signal(signal.SIGTERM)
    reply = server.read_line()
    assert reply["id"] == 1
    assert "result" in reply
    assert server.wait() == 0


def test_drain_timeout_cancels_what_is_left_with_a_reply(spawn: type[ServerProcess]) -> None:
    server = spawn("--drain-timeout", "0.2")
    server.request(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "execute",
            "params": {"prompt": "x", "mock": {"latency_ms": 30000}},
        }
    )
    server.close_stdin()
    (reply,) = server.read_all()
    assert reply["error"]["code"] == -32800
    assert "drain timeout" in reply["error"]["data"]["reason"]
    assert server.wait() == 0


def test_shutdown_method_stops_the_server_gracefully(spawn: type[ServerProcess]) -> None:
    server = spawn()
    server.request(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "execute",
            "params": {"prompt": "x", "mock": {"latency_ms": 300}},
        }
    )
    server.request({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
    replies = [server.read_line(), server.read_line()]
    assert {r["id"] for r in replies} == {1, 2}
    assert server.wait() == 0


def test_stdout_carries_only_frames_and_logs_go_to_stderr_as_json(spawn: type[ServerProcess]) -> None:
    server = spawn("--log-level", "debug")
    server.request({"jsonrpc": "2.0", "id": 1, "method": "crash_me_not_a_method"})
    server.request({"jsonrpc": "2.0", "id": 2, "method": "shutdown"})
    server.read_all()
    assert server.wait() == 0
    for line in bytes(server.raw_stdout).decode().splitlines():
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0"
    log_lines = [line for line in server.stderr_lines if line.strip()]
    assert log_lines, "debug logging should say something"
    for line in log_lines:
        entry = json.loads(line)
        assert {"ts", "level", "msg"} <= entry.keys()


def test_batches_over_stdio_reply_once_in_order(spawn: type[ServerProcess]) -> None:
    server = spawn()
    batch = [
        {
            "jsonrpc": "2.0",
            "id": "a",
            "method": "execute",
            "params": {"prompt": "one", "mock": {"latency_ms": 200}},
        },
        {"jsonrpc": "2.0", "method": "health"},
        {"jsonrpc": "2.0", "id": "b", "method": "execute", "params": {"prompt": "two"}},
        {"jsonrpc": "2.0", "id": "c", "method": "execute", "params": {"prompt": 3}},
    ]
    server.send(json.dumps(batch) + "\n")
    server.send(json.dumps([{"jsonrpc": "2.0", "method": "health"}]) + "\n")
    server.close_stdin()
    (reply,) = server.read_all()
    assert server.wait() == 0
    assert [r["id"] for r in reply] == ["a", "b", "c"]
    assert reply[0]["result"]["content"] == "Mock answer to: one"
    assert reply[2]["error"]["code"] == -32602
    assert reply[2]["error"]["data"]["path"] == "params.prompt"
