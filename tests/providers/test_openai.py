"""The OpenAI-family backends against a loopback server speaking the real wire format, on both anyio backends.

Real sockets through the real HTTP client: what we send is read back from the server's record, and
every answer (bodies, streams, error bodies and headers, cuts, resets) is what the services send.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from llm_rpc import Router, errors
from llm_rpc.config import BackendConfig
from llm_rpc.providers import PROVIDER_KINDS, ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.providers import provider_class as kind_class
from llm_rpc.providers.openai import OpenAIProvider, parse_error
from llm_rpc.types import Message, ToolCall
from tests.conftest import CANARY_KEY
from tests.upstreams import Reply, Upstream
from tests.upstreams import openai_wire as wire

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"


@pytest.fixture(scope="module")
def server() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@pytest.fixture
def up(server: Upstream, canary_key: str, caplog: pytest.LogCaptureFixture) -> Iterator[Upstream]:
    """The module's upstream, reset; every test also checks that the key never reached the logs."""
    server.handler = lambda req: Reply.json({})
    server.requests.clear()
    caplog.set_level(logging.DEBUG)
    yield server
    assert canary_key not in caplog.text


def backend(up: Upstream, kind: str = "openai", **kwargs: Any) -> OpenAIProvider:
    return OpenAIProvider("main", kind=kind, base_url=up.url + "/v1", key_envs=[KEY_ENV], **kwargs)


def ask(**kwargs: Any) -> ProviderRequest:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Weather in Oslo?")]
    return ProviderRequest(model=wire.MODEL, messages=messages, **kwargs)


@contextlib.asynccontextmanager
async def opened(provider: OpenAIProvider) -> AsyncIterator[OpenAIProvider]:
    try:
        yield provider
    finally:
        await provider.aclose()


async def complete(provider: OpenAIProvider, request: ProviderRequest | None = None) -> ProviderResponse:
    async with opened(provider):
        with anyio.fail_after(5):
            return await provider.complete(request or ask())


async def drain(provider: OpenAIProvider, seen: list[StreamItem], request: ProviderRequest | None = None) -> None:
    """Read the whole stream into ``seen`` (what arrived before an error stays there)."""
    async with opened(provider):
        with anyio.fail_after(5):
            async for item in provider.stream(request or ask()):
                seen.append(item)


async def stream(provider: OpenAIProvider, request: ProviderRequest | None = None) -> list[StreamItem]:
    items: list[StreamItem] = []
    await drain(provider, items, request)
    return items


def sent(up: Upstream) -> dict[str, Any]:
    assert len(up.requests) == 1
    body: dict[str, Any] = up.requests[0].json()
    return body


def no_key_in(*things: object) -> None:
    """The canary key appears in none of these: str, repr, error data, encoded results."""
    for thing in things:
        texts = [str(thing), repr(thing)]
        if isinstance(thing, errors.LLMError):
            texts += [thing.message, json.dumps(thing.to_data())]
        if isinstance(thing, ProviderResponse):
            texts.append(msgspec.json.encode(thing).decode())
        for text in texts:
            assert CANARY_KEY not in text


# -- plain calls ----------------------------------------------------------------------------------------------


async def test_a_plain_answer_is_normalized_and_the_request_is_what_openai_expects(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(
        wire.completion(use=wire.usage(52, 14, cached=32, reasoning=6)), headers=wire.HEADERS
    )
    result = await complete(backend(up), ask(max_tokens=256, temperature=0.2, stop=["END"]))

    assert result.content == "Oslo is 4 °C and cloudy."
    assert result.model == wire.SNAPSHOT
    assert (result.finish_reason, result.native_finish_reason) == ("stop", "stop")
    assert result.id == "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG"
    assert result.tool_calls is None
    assert result.raw is None
    u = result.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (52, 14, 66)
    assert (u.cached_tokens, u.reasoning_tokens) == (32, 6)

    request = up.requests[0]
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == f"Bearer {CANARY_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("llm-rpc/")
    assert sent(up) == {
        "model": wire.MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}],
        "max_completion_tokens": 256,
        "temperature": 0.2,
        "stop": ["END"],
    }
    no_key_in(result)


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("xai", "/v1/chat/completions"),
        ("openrouter", "/api/v1/chat/completions"),
        ("openai-compatible", "/v1/chat/completions"),
    ],
)
async def test_the_compatible_kinds_send_max_tokens(up: Upstream, kind: str, path: str) -> None:
    up.handler = lambda req: Reply.json(wire.completion(model="vendor/model"))
    base = up.url + path.removesuffix("/chat/completions")
    provider = OpenAIProvider("other", kind=kind, base_url=base + "/", key_envs=[KEY_ENV])
    result = await complete(provider, ask(max_tokens=64))
    assert result.model == "vendor/model"
    assert up.requests[0].path == path
    body = sent(up)
    assert body["max_tokens"] == 64
    assert "max_completion_tokens" not in body
    assert provider.provider == kind


async def test_openrouter_sends_its_attribution_headers_and_config_headers_override_them(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion())
    await complete(backend(up, "openrouter"))
    headers = up.requests[0].headers
    assert headers["http-referer"].startswith("https://")
    assert headers["x-title"] == "llm-rpc"

    up.requests.clear()
    config = BackendConfig(
        provider="openrouter",
        name="or",
        base_url=up.url + "/api/v1",
        api_key_env=KEY_ENV,
        headers={"HTTP-Referer": "https://example.org/app", "X-Title": "", "X-Extra": "1"},
    )
    await complete(OpenAIProvider.from_config(config))
    headers = up.requests[0].headers
    assert headers["http-referer"] == "https://example.org/app"
    assert "x-title" not in headers  # an empty value opts out
    assert headers["x-extra"] == "1"
    assert headers["authorization"] == f"Bearer {CANARY_KEY}"


async def test_tools_tool_choice_and_response_format_pass_through(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.tool_completion(), headers=wire.HEADERS)
    bare = {"name": "get_time", "parameters": {"type": "object"}}
    schema_without_name = {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}
    request = ask(
        tools=[wire.WEATHER_TOOL, bare],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format=schema_without_name,
        extra={"parallel_tool_calls": True, "model": "not-this-one"},
    )
    result = await complete(backend(up), request)

    assert result.content is None
    assert (result.finish_reason, result.native_finish_reason) == ("tool_calls", "tool_calls")
    assert result.tool_calls == [
        ToolCall(id="call_Oslo1", name="get_weather", arguments='{"city":"Oslo"}'),
        ToolCall(id="call_Time2", name="get_time", arguments='{"tz":"Europe/Oslo"}'),
    ]
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (82, 41, 123)
    body = sent(up)
    assert body["tools"] == [wire.WEATHER_TOOL, {"type": "function", "function": bare}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }
    assert body["parallel_tool_calls"] is True
    assert body["model"] == wire.MODEL


async def test_a_json_schema_response_format_is_sent_as_given(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion('{"city":"Oslo"}'))
    result = await complete(backend(up), ask(response_format=wire.ANSWER_SCHEMA))
    assert sent(up)["response_format"] == wire.ANSWER_SCHEMA
    assert json.loads(result.content or "") == {"city": "Oslo"}


async def test_tool_messages_go_out_as_openai_messages(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion("It is 4 °C."))
    history = [
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant",
            tool_calls=[wire.tool_call("call_Oslo1", "get_weather", '{"city":"Oslo"}')],
        ),
        Message(role="tool", tool_call_id="call_Oslo1", content='{"temp_c": 4}'),
    ]
    await complete(backend(up), ProviderRequest(model=wire.MODEL, messages=history))
    assert sent(up)["messages"] == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "tool_calls": [wire.tool_call("call_Oslo1", "get_weather", '{"city":"Oslo"}')]},
        {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_Oslo1"},
    ]


async def test_a_refusal_is_reported_as_content_filter(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion(None, refusal="I'm sorry, I can't help with that."))
    result = await complete(backend(up))
    assert result.content == "I'm sorry, I can't help with that."
    assert (result.finish_reason, result.native_finish_reason) == ("content_filter", "stop")


async def test_length_and_content_filter_finishes_are_normalized(up: Upstream) -> None:
    for native, normalized in [("length", "length"), ("content_filter", "content_filter"), ("weird_new", "stop")]:
        up.handler = lambda req, n=native: Reply.json(wire.completion("x", finish_reason=n))  # type: ignore[misc]
        result = await complete(backend(up))
        assert (result.finish_reason, result.native_finish_reason) == (normalized, native)


async def test_include_raw_returns_the_body_as_sent(up: Upstream) -> None:
    body = wire.completion()
    up.handler = lambda req: Reply.json(body)
    result = await complete(backend(up), ask(include_raw=True))
    assert result.raw is not None
    assert json.loads(result.raw) == body


# -- streams --------------------------------------------------------------------------------------------------


async def test_a_streamed_answer_yields_deltas_then_the_same_result_with_usage(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.text_stream(), headers=wire.HEADERS)
    items = await stream(backend(up), ask(max_tokens=100))

    *deltas, final = items
    assert deltas == [TextDelta("Oslo is "), TextDelta("4 °C"), TextDelta(" and cloudy.")]
    assert isinstance(final, ProviderResponse)
    assert final.content == "Oslo is 4 °C and cloudy."
    assert (final.finish_reason, final.native_finish_reason) == ("stop", "stop")
    assert final.model == wire.SNAPSHOT
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (52, 9, 61)
    assert final.usage.cached_tokens == 32
    body = sent(up)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_completion_tokens"] == 100


async def test_streamed_tool_calls_are_assembled_by_index(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.tool_stream())
    items = await stream(backend(up), ask(tools=[wire.WEATHER_TOOL, wire.TIME_TOOL]))

    *deltas, final = items
    assert all(isinstance(d, ToolCallDelta) for d in deltas)
    assert deltas[0] == ToolCallDelta(index=0, id="call_Oslo1", name="get_weather", arguments="")
    assert isinstance(final, ProviderResponse)
    assert final.content is None
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [
        ToolCall(id="call_Oslo1", name="get_weather", arguments='{"city":"Oslo"}'),
        ToolCall(id="call_Time2", name="get_time", arguments='{"tz":"Europe/Oslo"}'),
    ]
    assert final.usage.total_tokens == 123


async def test_openrouter_keep_alive_comments_are_skipped_and_usage_is_read(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.openrouter_stream())
    items = await stream(backend(up, "openrouter"))
    *deltas, final = items
    assert deltas == [TextDelta("Hi"), TextDelta(" there.")]
    assert isinstance(final, ProviderResponse)
    assert (final.content, final.model) == ("Hi there.", "openai/gpt-4o-mini")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (40, 7)
    assert (final.usage.cached_tokens, final.usage.cache_write_tokens) == (0, 0)
    assert "stream_options" not in sent(up)  # a deprecated no-op there


async def test_a_caller_that_stops_reading_early_leaves_nothing_behind(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.text_stream(), chunk_delay=0.01)
    provider = backend(up)
    async with opened(provider):
        with anyio.fail_after(5):
            async with contextlib.aclosing(provider.stream(ask())) as items:  # type: ignore[type-var]
                async for item in items:
                    assert item == TextDelta("Oslo is ")
                    break
            gc.collect()  # an abandoned async generator would warn now (filterwarnings = error)
            up.handler = lambda req: Reply.json(wire.completion())
            assert (await provider.complete(ask())).content


async def test_include_raw_on_a_stream_gives_every_chunk_as_a_json_array(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.text_stream())
    final = (await stream(backend(up), ask(include_raw=True)))[-1]
    assert isinstance(final, ProviderResponse)
    assert final.raw is not None
    chunks = json.loads(final.raw)
    assert len(chunks) == len(wire.text_stream()) - 1  # every event but [DONE]
    assert chunks[-1]["usage"]["total_tokens"] == 61


@pytest.mark.parametrize(
    ("events", "status"),
    [(wire.openrouter_midstream_error(), 502), (wire.openai_midstream_error(), 200)],
    ids=["openrouter", "openai"],
)
async def test_an_error_inside_the_stream_is_a_typed_error(up: Upstream, events: list[str], status: int) -> None:
    up.handler = lambda req: Reply.sse(events)
    provider = backend(up)
    seen: list[StreamItem] = []
    with pytest.raises(errors.ServerError) as raised:
        await drain(provider, seen)
    assert seen == [TextDelta("Par")]
    err = raised.value
    assert err.data["status"] == status
    assert err.data["finish_reason"] == "error"
    assert err.data["provider_message"]
    assert err.is_retryable


async def test_a_stream_cut_in_the_middle_is_a_protocol_error_never_a_short_answer(up: Upstream) -> None:
    up.handler = lambda req: Reply.sse(wire.text_stream(), cut_after=3)
    provider = backend(up)
    seen: list[StreamItem] = []
    with pytest.raises(errors.UpstreamProtocolError):
        await drain(provider, seen)
    assert not any(isinstance(i, ProviderResponse) for i in seen)


@pytest.mark.parametrize(
    "events",
    [wire.text_stream()[:-1], [e for e in wire.text_stream() if '"finish_reason": "stop"' not in e]],
    ids=["no-done", "no-finish"],
)
async def test_a_stream_that_ends_early_is_a_protocol_error(up: Upstream, events: list[str]) -> None:
    up.handler = lambda req: Reply.sse(events)
    with pytest.raises(errors.UpstreamProtocolError) as raised:
        await stream(backend(up))
    assert "truncated" in raised.value.message


async def test_an_error_status_before_the_stream_is_typed(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(
        wire.error(wire.RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"), status=429, headers={"retry-after": "7"}
    )
    with pytest.raises(errors.RateLimitedError) as raised:
        await stream(backend(up))
    assert raised.value.retry_after == 7


async def test_a_server_that_answers_a_stream_with_one_json_body_still_works(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion("Whole."))
    items = await stream(backend(up))
    assert items[0] == TextDelta("Whole.")
    assert isinstance(items[-1], ProviderResponse)
    assert items[-1].content == "Whole."


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "body", "headers", "type_", "retryable"),
    [case[1:] for case in wire.ERROR_CASES],
    ids=[case[0] for case in wire.ERROR_CASES],
)
async def test_each_error_status_with_the_real_body_is_typed(
    up: Upstream,
    kind: str,
    status: int,
    body: dict[str, Any] | str,
    headers: dict[str, str],
    type_: str,
    retryable: bool,
) -> None:
    up.handler = lambda req: Reply(status=status, body=body, headers={**wire.HEADERS, **headers})
    with pytest.raises(errors.ProviderError) as raised:
        await complete(backend(up, kind))
    err = raised.value
    assert err.type == type_
    assert err.is_retryable is retryable
    assert err.data["status"] == status
    assert err.data["backend"] == "main"
    assert err.data["request_id"] == wire.REQUEST_ID
    message = err.data["provider_message"]
    assert 0 < len(message) <= 500
    if isinstance(body, str):
        assert len(message) <= 200
        assert str(status) in message
    if "retry-after" in headers:
        assert err.retry_after == float(headers["retry-after"])
    no_key_in(err)


async def test_retry_after_ms_wins_over_retry_after(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(
        wire.error(wire.RATE_LIMIT_MESSAGE, "tokens", "rate_limit_exceeded"),
        status=429,
        headers={"retry-after-ms": "1500", "retry-after": "20"},
    )
    with pytest.raises(errors.RateLimitedError) as raised:
        await complete(backend(up))
    assert raised.value.retry_after == 1.5
    assert raised.value.data["retry_after"] == 1.5


@pytest.mark.parametrize(
    ("status", "body", "header", "retryable"),
    [
        (500, wire.error("boom", "server_error"), "false", False),
        (400, wire.error("try again", "invalid_request_error"), "true", True),
        (429, wire.error(wire.QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"), "true", False),
    ],
    ids=["500-told-not-to", "400-told-to", "quota-never"],
)
async def test_x_should_retry_overrides_the_status_rule_except_for_quota(
    up: Upstream, status: int, body: dict[str, Any], header: str, retryable: bool
) -> None:
    up.handler = lambda req: Reply.json(body, status=status, headers={"x-should-retry": header})
    with pytest.raises(errors.ProviderError) as raised:
        await complete(backend(up))
    assert raised.value.is_retryable is retryable


async def test_a_2xx_body_holding_an_error_is_typed_by_its_code(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.openrouter_error(429, "Rate limit exceeded upstream"))
    with pytest.raises(errors.RateLimitedError) as raised:
        await complete(backend(up, "openrouter"))
    assert raised.value.data["status"] == 429


@pytest.mark.parametrize(
    "body",
    [b"<html><body>upstream maintenance</body></html>", b'{"id": "x", "choices": [', b'{"object": "list", "data": []}'],
    ids=["html", "truncated-json", "not-a-completion"],
)
async def test_a_200_that_is_not_a_completion_is_a_protocol_error(up: Upstream, body: bytes) -> None:
    up.handler = lambda req: Reply(body=body, content_type="application/json")
    with pytest.raises(errors.UpstreamProtocolError) as raised:
        await complete(backend(up))
    assert raised.value.data["status"] == 200
    assert raised.value.is_retryable


async def test_a_connection_reset_is_a_connection_error(up: Upstream) -> None:
    up.handler = lambda req: Reply(reset=True)
    with pytest.raises(errors.UpstreamConnectionError) as raised:
        await complete(backend(up))
    assert raised.value.data == {"backend": "main"}


async def test_an_upstream_that_never_answers_times_out(up: Upstream) -> None:
    up.handler = lambda req: Reply(hang=5)
    with pytest.raises(errors.UpstreamTimeoutError):
        await complete(backend(up, timeout=0.2))


async def test_a_refused_connection_is_a_connection_error(canary_key: str) -> None:
    with anyio.fail_after(5):
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        await listener.aclose()
    provider = OpenAIProvider("gone", kind="openai-compatible", base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(errors.UpstreamConnectionError):
        await complete(provider)


# -- keys and config ------------------------------------------------------------------------------------------


async def test_a_missing_key_fails_at_call_time_naming_the_variable(
    up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    up.handler = lambda req: Reply.json(wire.completion())
    provider = backend(up)
    with pytest.raises(errors.AuthError) as raised:
        await provider.complete(ask())
    assert KEY_ENV in raised.value.message
    assert raised.value.data["key_env"] == KEY_ENV
    assert up.requests == []

    monkeypatch.setenv(KEY_ENV, CANARY_KEY)  # set later: the next call finds it
    assert (await complete(provider)).content


async def test_openai_compatible_without_a_key_sends_no_authorization(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.completion())
    provider = OpenAIProvider.from_config(BackendConfig(provider="openai-compatible", base_url=up.url + "/v1"))
    await complete(provider)
    assert "authorization" not in up.requests[0].headers


def test_openai_compatible_needs_a_base_url() -> None:
    with pytest.raises(errors.ConfigError) as raised:
        OpenAIProvider.from_config(BackendConfig(provider="openai-compatible", name="vllm"))
    assert "base_url" in raised.value.message
    assert raised.value.data["path"] == "base_url"


def test_the_family_is_registered_under_every_kind() -> None:
    for kind in ("openai", "xai", "openrouter", "openai-compatible"):
        assert kind_class(kind) is OpenAIProvider
        assert kind in PROVIDER_KINDS
    default = OpenAIProvider.from_config(BackendConfig(provider="xai"))
    assert default.base_url == "https://api.x.ai/v1"
    assert default.key_envs == ["XAI_API_KEY"]


async def test_the_key_never_shows_even_when_the_upstream_echoes_it(up: Upstream) -> None:
    def echo(req: Any) -> Reply:
        quoted = req.headers["authorization"]
        return Reply.json(wire.error(f"Bad header: {quoted}", "invalid_request_error", quoted), status=401)

    up.handler = echo
    provider = backend(up)
    with pytest.raises(errors.AuthError) as raised:
        await complete(provider)
    err = raised.value
    assert "***" in err.data["provider_message"]
    logging.getLogger("llm_rpc.test").error("failed: %s %r %s", err, err, err.to_data())
    no_key_in(err, provider, provider.__dict__)
    direct = parse_error(401, {}, json.dumps(wire.error(f"key {CANARY_KEY}", "x", CANARY_KEY)).encode(), backend="x")
    no_key_in(direct)


# -- the Python API -------------------------------------------------------------------------------------------


async def test_router_from_config_executes_against_an_openai_backend(up: Upstream, tmp_path: Path) -> None:
    up.handler = lambda req: Reply.json(wire.completion(), headers=wire.HEADERS)
    path = tmp_path / "llm-rpc.toml"
    path.write_text(
        f'[[backends]]\nname = "openai-main"\nprovider = "openai"\nbase_url = "{up.url}/v1"\n'
        f'api_key_env = "{KEY_ENV}"\n'
        '\n[[models]]\nname = "gpt-4o-mini-2024-07-18"\ninput = 0.15\noutput = 0.60\n'
    )
    router = Router.from_config(path)
    try:
        with anyio.fail_after(5):
            result = await router.execute(prompt="Weather in Oslo?", model=wire.MODEL)
    finally:
        await router.aclose()
    assert result.content == "Oslo is 4 °C and cloudy."
    assert (result.provider, result.backend, result.model) == ("openai", "openai-main", wire.SNAPSHOT)
    assert result.usage.total_tokens == 66
    assert result.cost_usd == pytest.approx((52 * 0.15 + 14 * 0.60) / 1e6)
    assert sent(up)["messages"] == [{"role": "user", "content": "Weather in Oslo?"}]
    assert CANARY_KEY not in msgspec.json.encode(result).decode()
