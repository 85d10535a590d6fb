"""``execute`` reaches every provider through one config file, over a real server process.

One loopback upstream answers in each provider's wire format (chosen by path); the server runs as
a subprocess with a TOML config naming all four backends and a canary key, and is driven over
stdio exactly as a client would. The key must reach the upstream and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CANARY_KEY
from tests.transports._proc import ServerProcess
from tests.upstreams import Reply, Upstream, UpstreamRequest, anthropic_wire, gemini_wire, ollama_wire, openai_wire

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"


def _answer(req: UpstreamRequest) -> Reply:
    body: dict[str, Any] = req.json() if req.body else {}
    if req.path == "/v1/chat/completions":
        if body.get("model") == "gpt-limited":
            return Reply.json(
                {"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}},
                status=429,
                headers={"retry-after": "7"},
            )
        return Reply.json(openai_wire.completion("from openai"))
    if req.path == "/v1/messages":
        return Reply.json(anthropic_wire.message([anthropic_wire.text("from anthropic")]))
    if req.path.startswith("/v1beta/models/"):
        usage = {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}
        return Reply.json(gemini_wire.response([gemini_wire.text("from gemini")], usage_=usage))
    if req.path == "/api/chat":
        return Reply.json(ollama_wire.chat("from ollama"))
    return Reply.json({"error": "not found"}, status=404)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream(_answer) as up:
        yield up


def _config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "llm-rpc.toml"
    path.write_text(
        f"""
[router]
retries = 0

[[backends]]
name = "oa"
provider = "openai"
base_url = "{url}/v1"
api_key_env = "{KEY_ENV}"
models = ["gpt-*"]

[[backends]]
name = "claude"
provider = "anthropic"
base_url = "{url}"
api_key_env = "{KEY_ENV}"

[[backends]]
name = "gem"
provider = "gemini"
base_url = "{url}/v1beta"
api_key_env = "{KEY_ENV}"

[[backends]]
name = "local"
provider = "ollama"
base_url = "{url}"
models = ["llama*"]
local = true
"""
    )
    return path


def test_execute_reaches_every_provider_through_one_config_file(upstream: Upstream, tmp_path: Path) -> None:
    config = _config(tmp_path, upstream.url)
    server = ServerProcess("--stdio", "--config", str(config), "--log-level", "debug", env={KEY_ENV: CANARY_KEY})
    try:
        models = ["gpt-4o-mini", "claude-sonnet-5-5", "gemini-3.8-flash", "llama3.2", "gpt-limited"]
        for i, model in enumerate(models):
            server.request({"jsonrpc": "2.0", "id": i, "method": "execute", "params": {"prompt": "hi", "model": model}})
        server.close_stdin()
        replies = {r["id"]: r for r in server.read_all()}
        assert server.wait() == 0
    finally:
        server.kill()
    expected = [("oa", "openai"), ("claude", "anthropic"), ("gem", "gemini"), ("local", "ollama")]
    for i, (backend, provider) in enumerate(expected):
        result = replies[i]["result"]
        assert (result["backend"], result["provider"]) == (backend, provider)
        assert result["content"] == f"from {provider}"
        assert result["usage"]["total_tokens"] > 0
        assert result["finish_reason"] == "stop"
    error = replies[4]["error"]
    assert error["code"] == -32005
    assert error["data"]["type"] == "rate_limited"
    assert error["data"]["retry_after"] == 7
    assert error["data"]["backend"] == "oa"
    key_headers = ("authorization", "x-api-key", "x-goog-api-key")
    auth = [next((r.headers[h] for h in key_headers if h in r.headers), "") for r in upstream.requests]
    assert sum(CANARY_KEY in a for a in auth) == 4  # openai twice (the answer and the 429), anthropic, gemini
    assert all(CANARY_KEY not in r.path for r in upstream.requests)
    everything = bytes(server.raw_stdout).decode() + "".join(server.stderr_lines)
    assert CANARY_KEY not in everything
    assert json.dumps(replies).count(CANARY_KEY) == 0


@pytest.mark.anyio
async def test_tools_response_format_and_include_raw_reach_the_provider_in_its_own_shape(
    upstream: Upstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anyio_backend: str
) -> None:
    from llm_rpc import Router

    monkeypatch.setenv(KEY_ENV, CANARY_KEY)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    schema = {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}}
    async with Router.from_config(_config(tmp_path, upstream.url)) as router:
        result = await router.execute(
            prompt="hi",
            model="claude-sonnet-5-5",
            tools=tools,
            tool_choice="required",
            response_format=schema,
            stop=["END"],
            include_raw=True,
        )
    sent = upstream.requests[-1].json()
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["output_config"]["format"] == {"type": "json_schema", "schema": {"type": "object"}}
    assert sent["stop_sequences"] == ["END"]
    assert result.raw is not None
    assert json.loads(bytes(result.raw))["content"][0]["text"] == "from anthropic"
