"""The Anthropic backend against a loopback upstream speaking the Messages API's real wire format."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest

from llm_rpc import errors
from llm_rpc.core.router import Router
from llm_rpc.providers import PROVIDER_KINDS, provider_class
from llm_rpc.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider, reset_after_from_headers, to_wire
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.types import Message
from tests.upstreams import anthropic_wire as wire
from tests.upstreams._server import Reply, Upstream

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_ANTHROPIC_KEY"
CANARY = "sk-ant-canary-0123456789abcdef"
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, CANARY)
    return CANARY


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as up:
        yield up


@asynccontextmanager
async def backend(up: Upstream, **kwargs: Any) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider("claude-test", base_url=up.url, key_envs=[KEY_ENV], **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


def request(text: str = "Weather in Oslo?", **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(model="claude-sonnet-4-5", messages=[Message(role="user", content=text)], **kwargs)


async def collect(stream: AsyncIterator[StreamItem]) -> tuple[list[StreamItem], ProviderResponse]:
    items = [item async for item in stream]
    final = items[-1]
    assert isinstance(final, ProviderResponse)
    return items[:-1], final


async def consume(stream: AsyncIterator[StreamItem], seen: list[StreamItem]) -> None:
    async for item in stream:
        seen.append(item)


def assert_no_canary(*texts: object) -> None:
    for text in texts:
        assert CANARY not in str(text)


# -- requests as sent ------------------------------------------------------------------------------------


async def test_plain_answer_is_normalized_and_the_request_is_what_the_api_expects(upstream: Upstream, key: str) -> None:
    body = wire.message(
        [wire.thinking("Let me think."), wire.text("Sunny, "), wire.text("12 °C.")],
        usage_=wire.usage(40, 31, cache_read=100, cache_write=20, thinking=9),
    )
    upstream.handler = lambda req: Reply.json(body, headers={"request-id": wire.REQUEST_ID})
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="developer", content="Use metric units."),
        Message(role="user", content="Weather in Oslo?"),
    ]
    async with backend(upstream) as provider:
        result = await provider.complete(
            ProviderRequest(model="claude-sonnet-4-5", messages=messages, temperature=1.7, stop=["END"])
        )

    assert result.content == "Sunny, 12 °C."  # thinking excluded
    assert (result.finish_reason, result.native_finish_reason) == ("stop", "end_turn")
    assert result.model == wire.MODEL
    assert result.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert result.tool_calls is None
    assert result.raw is None
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (160, 31, 191)
    assert (usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (100, 20, 9)

    (sent,) = upstream.requests
    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == CANARY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert CANARY not in sent.path
    assert CANARY.encode() not in sent.body
    assert sent.json() == {
        "model": "claude-sonnet-4-5",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]}],
        "system": "Be brief.\n\nUse metric units.",
        "temperature": 1.0,
        "stop_sequences": ["END"],
    }


async def test_include_raw_returns_the_body_as_received(upstream: Upstream, key: str) -> None:
    body = json.dumps(wire.message([wire.text("hi")])).encode()
    upstream.handler = lambda req: Reply(body=body, content_type="application/json")
    async with backend(upstream) as provider:
        result = await provider.complete(request(include_raw=True, max_tokens=64))
    assert result.raw == body
    assert upstream.requests[0].json()["max_tokens"] == 64


async def test_tool_calls_and_tool_results_round_trip(upstream: Upstream, key: str) -> None:
    body = wire.message(
        [
            wire.text("Checking."),
            wire.tool_use("toolu_01A", "get_weather", {"city": "Oslo"}),
            wire.tool_use("toolu_01B", "get_weather", {"city": "Bergen", "units": {"temp": "C"}}),
        ],
        stop_reason="tool_use",
    )
    upstream.handler = lambda req: Reply.json(body)
    history = [
        Message(role="user", content="Weather in Oslo and Bergen?"),
        Message(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "toolu_9",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                },
                {"id": "toolu_10", "type": "function", "function": {"name": "get_weather", "arguments": ""}},
            ],
        ),
        Message(role="tool", tool_call_id="toolu_9", content="12 °C"),
        Message(role="tool", tool_call_id="toolu_10", content=[{"type": "text", "text": "9 °C"}]),
        Message(role="user", content="And tomorrow?"),
    ]
    async with backend(upstream) as provider:
        result = await provider.complete(
            ProviderRequest(model="claude-sonnet-4-5", messages=history, tools=[WEATHER_TOOL], tool_choice="required")
        )

    assert (result.finish_reason, result.native_finish_reason) == ("tool_calls", "tool_use")
    assert result.content == "Checking."
    assert result.tool_calls is not None
    assert [(c.id, c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("toolu_01A", "get_weather", {"city": "Oslo"}),
        ("toolu_01B", "get_weather", {"city": "Bergen", "units": {"temp": "C"}}),
    ]
    sent = upstream.requests[0].json()
    assert sent["tools"] == [
        {
            "name": "get_weather",
            "input_schema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
            "description": "Weather for a city",
        }
    ]
    assert sent["tool_choice"] == {"type": "any"}
    assert sent["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Bergen?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "toolu_10", "name": "get_weather", "input": {}},
            ],
        },
        {
            # Both results and the next question in one user turn: the API wants alternating roles.
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_9", "content": [{"type": "text", "text": "12 °C"}]},
                {"type": "tool_result", "tool_use_id": "toolu_10", "content": [{"type": "text", "text": "9 °C"}]},
                {"type": "text", "text": "And tomorrow?"},
            ],
        },
    ]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"type": "tool", "name": "get_weather"}),
        (None, None),
    ],
)
def test_tool_choice_is_translated(choice: Any, expected: Any) -> None:
    body = to_wire(request(tools=[WEATHER_TOOL], tool_choice=choice))
    assert body.get("tool_choice") == expected


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    req = request(tools=[WEATHER_TOOL], tool_choice="auto")
    req.extra["parallel_tool_calls"] = False
    assert to_wire(req)["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_images_become_image_blocks() -> None:
    message = Message(
        role="user",
        content=[
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}},
        ],
    )
    body = to_wire(ProviderRequest(model="claude-sonnet-4-5", messages=[message]))
    assert body["messages"][0]["content"][1:] == [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.org/cat.jpg"}},
    ]


def test_temperature_is_left_out_for_models_that_reject_it() -> None:
    body = to_wire(
        ProviderRequest(model="claude-sonnet-5-5", messages=[Message(role="user", content="x")], temperature=0.2)
    )
    assert "temperature" not in body


def test_invalid_tool_call_arguments_are_refused_before_sending() -> None:
    message = Message(
        role="assistant", tool_calls=[{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]
    )
    with pytest.raises(errors.BadRequestError) as caught:
        to_wire(ProviderRequest(model="claude-sonnet-4-5", messages=[message]))
    assert caught.value.data["path"] == "messages[0].tool_calls[0]"


async def test_structured_output_goes_in_output_config(upstream: Upstream, key: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    upstream.handler = lambda req: Reply.json(wire.message([wire.text('{"answer":"yes"}')]))
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    async with backend(upstream) as provider:
        result = await provider.complete(request(response_format=response_format))
    assert json.loads(result.content or "") == {"answer": "yes"}
    sent = upstream.requests[0].json()
    assert sent["output_config"] == {"format": {"type": "json_schema", "schema": schema}}
    assert "tools" not in sent
    assert "tool_choice" not in sent


# -- streaming -------------------------------------------------------------------------------------------


async def test_streamed_text_assembles_the_same_result_with_usage_from_the_final_events(
    upstream: Upstream, key: str
) -> None:
    upstream.handler = lambda req: Reply.sse(wire.text_stream(["Sun", "ny, 12", " °C."], output_tokens=12))
    async with backend(upstream) as provider:
        deltas, final = await collect(provider.stream(request(include_raw=True)))

    assert deltas == [TextDelta("Sun"), TextDelta("ny, 12"), TextDelta(" °C.")]
    assert final.content == "Sunny, 12 °C."
    assert (final.finish_reason, final.native_finish_reason) == ("stop", "end_turn")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (45, 12, 57)
    assert final.usage.cached_tokens == 5
    assert final.model == wire.MODEL
    assert final.id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert final.raw is not None
    assert [e["type"] for e in json.loads(final.raw)][:3] == ["message_start", "content_block_start", "ping"]
    sent = upstream.requests[0]
    assert sent.json()["stream"] is True
    assert sent.headers["x-api-key"] == CANARY


async def test_streamed_tool_calls_concatenate_json_per_block(upstream: Upstream, key: str) -> None:
    events = [
        wire.message_start(),
        wire.block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        wire.block_stop(0),
        wire.block_start(1, {"type": "text", "text": ""}),
        wire.text_delta(1, "Checking."),
        wire.block_stop(1),
        wire.block_start(2, {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {}}),
        wire.json_delta(2, ""),
        wire.json_delta(2, '{"city": "Os'),
        wire.json_delta(2, 'lo"}'),
        wire.block_stop(2),
        wire.block_start(3, {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}}),
        wire.block_stop(3),
        wire.message_delta("tool_use", 31, thinking=4),
        wire.message_stop(),
    ]
    upstream.handler = lambda req: Reply.sse(events)
    async with backend(upstream) as provider:
        deltas, final = await collect(provider.stream(request(tools=[WEATHER_TOOL])))

    assert deltas == [
        TextDelta("Checking."),
        ToolCallDelta(index=0, id="toolu_01A", name="get_weather"),
        ToolCallDelta(index=0, arguments='{"city": "Os'),
        ToolCallDelta(index=0, arguments='lo"}'),
        ToolCallDelta(index=1, id="toolu_01B", name="get_time"),
    ]
    assert final.tool_calls is not None
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("toolu_01A", "get_weather", '{"city": "Oslo"}'),
        ("toolu_01B", "get_time", "{}"),
    ]
    assert (final.finish_reason, final.content) == ("tool_calls", "Checking.")
    assert (final.usage.completion_tokens, final.usage.reasoning_tokens) == (31, 4)


async def test_an_error_event_mid_stream_raises_its_typed_error(upstream: Upstream, key: str) -> None:
    events = [wire.message_start(), wire.block_start(0, {"type": "text", "text": ""}), wire.text_delta(0, "Hel")]
    upstream.handler = lambda req: Reply.sse([*events, wire.stream_error()])
    seen: list[StreamItem] = []
    async with backend(upstream) as provider:
        with pytest.raises(errors.OverloadedError) as caught:
            await consume(provider.stream(request()), seen)
    assert seen == [TextDelta("Hel")]
    assert caught.value.data["provider_message"] == "Overloaded"
    assert caught.value.data["provider_code"] == "overloaded_error"
    assert caught.value.is_retryable


async def test_a_stream_cut_off_in_the_middle_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.sse(wire.text_stream(["a", "b", "c"]), cut_after=4)
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError):
            await collect(provider.stream(request()))


async def test_a_stream_that_ends_without_message_stop_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.sse(wire.text_stream(["a", "b"])[:-1])
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError) as caught:
            await collect(provider.stream(request()))
    assert "message_stop" in str(caught.value)


async def test_a_stream_answered_with_json_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.json(wire.message([wire.text("hi")]))
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError):
            await collect(provider.stream(request()))


async def test_an_error_status_on_a_stream_request_is_typed(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: wire.error_reply(529, "overloaded_error", "Overloaded")
    async with backend(upstream) as provider:
        with pytest.raises(errors.OverloadedError) as caught:
            await collect(provider.stream(request()))
    assert caught.value.status == 529


# -- errors ----------------------------------------------------------------------------------------------

SPEND_LIMIT = (
    "You have reached your API usage limits: your organization has crossed its monthly API usage threshold. "
    "You will regain access on 2026-12-01 at 00:00 UTC."
)


@pytest.mark.parametrize(
    ("status", "error_type", "message", "headers", "details", "expected", "retry_after"),
    [
        (400, "invalid_request_error", "messages: at least one message is required", {}, None, "bad_request", None),
        (
            400,
            "invalid_request_error",
            "You have reached your specified API usage limits. You will regain access on 2026-12-01 at 00:00 UTC.",
            {},
            None,
            "quota_exceeded",
            None,
        ),
        (401, "authentication_error", "invalid x-api-key", {}, None, "auth", None),
        (
            402,
            "billing_error",
            "Your credit balance is too low to access the Anthropic API.",
            {},
            None,
            "billing",
            None,
        ),
        (
            403,
            "permission_error",
            "Your API key does not have permission to use the specified resource.",
            {},
            None,
            "auth",
            None,
        ),
        (404, "not_found_error", "model: claude-nope", {}, None, "bad_request", None),
        (409, "conflict_error", "Conflict", {}, None, "server_error", None),
        (
            413,
            "request_too_large",
            "Request exceeds the maximum allowed number of bytes.",
            {},
            None,
            "bad_request",
            None,
        ),
        (
            429,
            "rate_limit_error",
            "This request would exceed your organization's rate limit of 50 requests per minute.",
            {"retry-after": "7"},
            None,
            "rate_limited",
            7.0,
        ),
        (
            429,
            "rate_limit_error",
            SPEND_LIMIT,
            {},
            {"error_code": "enforced_spend_limit_reached"},
            "quota_exceeded",
            None,
        ),
        (500, "api_error", "Internal server error", {}, None, "server_error", None),
        (504, "timeout_error", "Request timed out", {}, None, "timeout", None),
        (529, "overloaded_error", "Overloaded", {}, None, "overloaded", None),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    upstream: Upstream,
    key: str,
    status: int,
    error_type: str,
    message: str,
    headers: dict[str, str],
    details: dict[str, Any] | None,
    expected: str,
    retry_after: float | None,
) -> None:
    upstream.handler = lambda req: wire.error_reply(status, error_type, message, headers=headers, details=details)
    async with backend(upstream) as provider:
        with pytest.raises(errors.ProviderError) as caught:
            await provider.complete(request())
    error = caught.value
    assert error.type == expected
    assert error.status == status
    assert error.retry_after == retry_after
    assert error.data["backend"] == "claude-test"
    assert error.data["provider_message"] == message
    assert error.data["provider_code"] == (details or {}).get("error_code", error_type)
    assert error.data["request_id"] == wire.REQUEST_ID
    assert error.is_retryable == (expected in ("rate_limited", "server_error", "timeout", "overloaded"))


async def test_x_should_retry_overrides_the_status_rule(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: wire.error_reply(500, "api_error", "no", headers={"x-should-retry": "false"})
    async with backend(upstream) as provider:
        with pytest.raises(errors.ServerError) as caught:
            await provider.complete(request())
    assert caught.value.is_retryable is False


async def test_a_429_without_retry_after_waits_for_the_exhausted_buckets_reset(upstream: Upstream, key: str) -> None:
    now = datetime.now(UTC)
    headers = wire.rate_limit_headers(
        {
            "requests": (now + timedelta(seconds=5)).isoformat().replace("+00:00", "Z"),
            "tokens": (now + timedelta(seconds=40)).isoformat().replace("+00:00", "Z"),
        },
        remaining={"requests": 37, "tokens": 0},
    )
    upstream.handler = lambda req: wire.error_reply(429, "rate_limit_error", "tokens per minute", headers=headers)
    async with backend(upstream) as provider:
        with pytest.raises(errors.RateLimitedError) as caught:
            await provider.complete(request())
    assert caught.value.retry_after is not None
    assert 30 < caught.value.retry_after <= 40


def test_reset_headers_without_an_empty_bucket_use_the_lowest_one() -> None:
    headers = wire.rate_limit_headers(
        {"requests": "2030-01-01T00:00:10Z", "input-tokens": "2030-01-01T00:00:20Z"},
        remaining={"requests": 900, "input-tokens": 3},
    )
    now = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert reset_after_from_headers(headers, now=now) == 20.0
    assert reset_after_from_headers({}, now=now) is None
    assert reset_after_from_headers({"anthropic-ratelimit-tokens-reset": "soon"}, now=now) is None


async def test_a_body_that_is_not_json_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(body=b"<html>hello</html>", content_type="text/html")
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError) as caught:
            await provider.complete(request())
    assert caught.value.status == 200


async def test_an_error_page_that_is_not_json_is_classified_by_status(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html")
    async with backend(upstream) as provider:
        with pytest.raises(errors.ServerError) as caught:
            await provider.complete(request())
    assert caught.value.status == 502
    assert caught.value.data["provider_message"] == "<html>Bad Gateway</html>"


async def test_a_reset_connection_is_a_connection_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(reset=True)
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamConnectionError):
            await provider.complete(request())


async def test_an_upstream_that_never_answers_times_out(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(hang=10)
    async with backend(upstream, timeout=0.3) as provider:
        with anyio.fail_after(5), pytest.raises(errors.UpstreamTimeoutError):
            await provider.complete(request())


async def test_a_missing_key_is_an_auth_error_naming_the_variable(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    async with backend(upstream) as provider:
        with pytest.raises(errors.AuthError) as caught:
            await provider.complete(request())
    assert KEY_ENV in str(caught.value)
    assert upstream.requests == []


# -- the key never leaks ---------------------------------------------------------------------------------


async def test_the_key_never_appears_in_errors_results_or_logs(
    upstream: Upstream, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"invalid x-api-key: {CANARY}"
    replies = iter(
        [
            wire.error_reply(401, "authentication_error", echo),
            Reply.sse([wire.message_start(), wire.stream_error("api_error", echo)]),
            Reply.json(wire.message([wire.text("fine")])),
        ]
    )
    upstream.handler = lambda req: next(replies)
    async with backend(upstream) as provider:
        with pytest.raises(errors.AuthError) as first:
            await provider.complete(request())
        with pytest.raises(errors.ServerError) as second:
            await collect(provider.stream(request()))
        result = await provider.complete(request(include_raw=True))
        assert_no_canary(repr(provider))
    for caught in (first, second):
        error = caught.value
        assert_no_canary(str(error), repr(error), error.data, error.to_data(), error.args)
        assert "***" in error.data["provider_message"]
    assert_no_canary(result, result.raw, caplog.text, [r.getMessage() for r in caplog.records])


# -- registration and the in-process API -----------------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert "anthropic" in PROVIDER_KINDS
    assert provider_class("anthropic") is AnthropicProvider


async def test_router_from_config_reaches_the_backend(upstream: Upstream, key: str, tmp_path: Path) -> None:
    upstream.handler = lambda req: Reply.json(wire.message([wire.text("Hello from Claude.")]))
    config = tmp_path / "llm-rpc.toml"
    config.write_text(
        f'[[backends]]\nname = "claude"\nprovider = "anthropic"\nbase_url = "{upstream.url}"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )
    router = Router.from_config(config)
    async with router:
        result = await router.execute(prompt="Say hello", model="claude-sonnet-4-5")
    assert (result.content, result.provider, result.backend) == ("Hello from Claude.", "anthropic", "claude")
    assert result.usage.total_tokens == 71
    assert upstream.requests[0].headers["x-api-key"] == CANARY
