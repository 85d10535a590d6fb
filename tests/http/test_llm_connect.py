"""llm-connect's serve-mode contract, case by case, and ``python -m llm_rpc.server`` as its drop-in."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx2 as httpx
import pytest

from llm_rpc.errors import ConfigError
from llm_rpc.server import ServeOptions, serve
from tests.http._server import running
from tests.transports._proc import server_env

pytestmark = pytest.mark.anyio

RESULT_KEYS = {"content", "model", "usage", "finish_reason", "metadata"}
USAGE_KEYS = {"prompt_tokens", "completion_tokens", "total_tokens"}


async def test_get_health_is_200_status_ok() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.get("/health")
        head = await client.head("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert head.status_code == 200
    assert head.content == b""


async def test_post_execute_with_only_a_prompt_uses_the_defaults() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", json={"prompt": "hello there"})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == RESULT_KEYS
    assert set(body["usage"]) == USAGE_KEYS
    assert body["content"] == "Mock answer to: hello there"
    assert body["model"] == "mock"
    assert body["finish_reason"] == "stop"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    assert body["metadata"]["provider"] == "mock"


async def test_post_execute_honours_every_config_field() -> None:
    config = {"model_name": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 2, "timeout_seconds": 30}
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", json={"prompt": "a b c d e f", "config": config})
        empty_config = await client.post("/execute", json={"prompt": "x", "config": {}})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "gpt-4o-mini"
    assert body["content"] == "Mock answer"  # max_tokens = 2 words
    assert body["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 2
    assert empty_config.status_code == 200


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        (b'{"config": {"model_name": "m"}}', "invalid_params"),
        (b"{}", "invalid_params"),
        (b"not json", "parse_error"),
        (b'["prompt"]', "parse_error"),
        (b"", "parse_error"),
        (b'{"prompt": "x", "config": {"temperature": "hot"}}', "invalid_params"),
        (b'{"prompt": "x", "config": {"max_tokens": 0}}', "invalid_params"),
        (b'{"prompt": 42}', "invalid_params"),
    ],
)
async def test_post_execute_with_a_bad_body_is_400_with_a_typed_error(body: bytes, error_type: str) -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    payload = response.json()
    assert isinstance(payload["detail"], str)
    assert payload["error"]["data"]["type"] == error_type


async def test_a_missing_prompt_names_the_field() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", json={"config": {}})
    assert response.json()["error"]["data"]["missing_field"] == "prompt"


async def test_an_unknown_path_is_404_and_a_wrong_method_405() -> None:
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        missing = await client.get("/v1/chat/completions")
        wrong = await client.get("/execute")
        wrong_health = await client.post("/health")
    assert missing.status_code == 404
    assert missing.json()["error"]["data"] == {"type": "not_found", "path": "/v1/chat/completions"}
    assert wrong.status_code == 405
    assert wrong.headers["allow"] == "POST"
    assert wrong_health.status_code == 405


async def test_a_failed_model_call_is_500_with_our_typed_error_in_the_body() -> None:
    body = {"prompt": "x", "mock": {"fail_rate": 1, "fail_type": "rate_limited"}}
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", json=body)
    assert response.status_code == 500
    payload = response.json()
    assert payload["error"]["code"] == -32005
    assert payload["error"]["data"]["type"] == "rate_limited"
    assert payload["detail"] == payload["error"]["message"]


async def test_a_call_that_times_out_is_500_timeout() -> None:
    body = {"prompt": "x", "config": {"timeout_seconds": 0.05}, "mock": {"latency_ms": 5000}}
    async with running() as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post("/execute", json=body)
    assert response.status_code == 500
    assert response.json()["error"]["data"]["type"] == "timeout"


# -- auth -----------------------------------------------------------------------------------------------


async def test_with_an_auth_token_every_route_but_health_needs_the_bearer_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_HTTP_TOKEN", "s3cret-token")
    async with running(auth_token_env="LLM_RPC_TEST_HTTP_TOKEN") as url, httpx.AsyncClient(base_url=url) as client:
        health = await client.get("/health")
        bare = await client.post("/execute", json={"prompt": "x"})
        rpc = await client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"})
        metrics = await client.get("/metrics")
        wrong = await client.post("/execute", json={"prompt": "x"}, headers={"authorization": "Bearer nope"})
        basic = await client.post("/execute", json={"prompt": "x"}, headers={"authorization": "Basic s3cret-token"})
        good = {"authorization": "Bearer s3cret-token"}
        ok = await client.post("/execute", json={"prompt": "x"}, headers=good)
        ok_rpc = await client.post("/rpc", json={"jsonrpc": "2.0", "id": 1, "method": "health"}, headers=good)
        ok_metrics = await client.get("/metrics", headers=good)
    assert health.status_code == 200
    for response in (bare, rpc, metrics, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
    assert bare.json()["error"]["code"] == -32002
    assert rpc.json() == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32002,
            "message": "Unauthorized: send Authorization: Bearer <token>",
            "data": {"type": "unauthorized"},
        },
    }
    assert ok.status_code == ok_rpc.status_code == ok_metrics.status_code == 200
    assert ok_rpc.json()["result"]["status"] == "ok"
    assert "s3cret-token" not in bare.text + rpc.text + wrong.text


async def test_binding_http_off_loopback_requires_an_auth_token() -> None:
    with pytest.raises(ConfigError) as info:
        await serve(ServeOptions(http=[("0.0.0.0", 0)]))
    assert info.value.data["option"] == "--auth-token-env"


# -- python -m llm_rpc.server ---------------------------------------------------------------------------


def test_python_m_llm_rpc_server_is_llm_connects_serve_mode() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_rpc.server", "--port", "0", "--model", "default-model"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(),
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        event: dict[str, Any] = json.loads(line)
        assert event["event"] == "listening"
        assert event["transport"] == "http"
        assert event["host"] == "127.0.0.1"
        url = f"http://127.0.0.1:{event['port']}"
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.get("/health").json() == {"status": "ok"}
            body = client.post("/execute", json={"prompt": "from a launcher"}).json()
            named = client.post("/execute", json={"prompt": "x", "config": {"model_name": "claude-x"}}).json()
        assert body["content"] == "Mock answer to: from a launcher"
        assert body["model"] == "default-model"
        assert named["model"] == "claude-x"  # the one provider serves every model name
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_python_m_llm_rpc_server_rejects_an_unknown_provider() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llm_rpc.server", "--provider", "nosuch", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        env=server_env(),
        check=False,
    )
    assert done.returncode == 2
    assert "provider" in done.stderr
    assert "Traceback" not in done.stderr
