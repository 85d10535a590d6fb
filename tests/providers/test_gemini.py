"""The Gemini backend against a loopback upstream speaking the Generative Language API's real wire format."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from llm_rpc import errors
from llm_rpc.core.router import Router
from llm_rpc.providers import PROVIDER_KINDS, provider_class
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.providers.gemini import SKIP_SIGNATURE, SYNTHETIC_ID_PREFIX, GeminiProvider, to_wire
from llm_rpc.types import Message
from tests.upstreams import gemini_wire as wire
from tests.upstreams._server import Reply, Upstream

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_GEMINI_KEY"
CANARY = "AIzaSy-canary-0123456789abcdef"
MODEL = "gemini-3.8-flash"
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
async def backend(up: Upstream, **kwargs: Any) -> AsyncIterator[GeminiProvider]:
    # The default base URL has a path (/v1beta): the loopback one has one too, to test the joining.
    provider = GeminiProvider("gemini-test", base_url=up.url + "/v1beta", key_envs=[KEY_ENV], **kwargs)
    try:
        yield provider
    finally:
        await provider.aclose()


def request(text: str = "Weather in Oslo?", **kwargs: Any) -> ProviderRequest:
    return ProviderRequest(model=MODEL, messages=[Message(role="user", content=text)], **kwargs)


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
    body = wire.response(
        [wire.text("Thinking about Oslo.", thought=True), wire.text("Sunny, "), wire.text("12 °C.")],
        usage_=wire.usage(40, 8, thoughts=30, tool_use_prompt=5, cached=16),
    )
    upstream.handler = lambda req: Reply.json(body)
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content="Weather in Oslo?"),
        Message(role="assistant", content="Which unit?"),
        Message(role="user", content=[{"type": "text", "text": "Celsius."}]),
    ]
    async with backend(upstream) as provider:
        result = await provider.complete(
            ProviderRequest(model=MODEL, messages=messages, temperature=1.4, max_tokens=256, stop=["END"])
        )

    assert result.content == "Sunny, 12 °C."  # the thought part is skipped
    assert (result.finish_reason, result.native_finish_reason) == ("stop", "STOP")
    assert result.model == wire.MODEL_VERSION
    assert result.id == "mPfvaMXkI4W-1e8Pq8Hd0Qg"
    usage = result.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (45, 38, 83)
    assert (usage.cached_tokens, usage.reasoning_tokens, usage.cache_write_tokens) == (16, 30, None)

    (sent,) = upstream.requests
    assert (sent.method, sent.path) == ("POST", f"/v1beta/models/{MODEL}:generateContent")
    assert sent.headers["x-goog-api-key"] == CANARY
    assert "key=" not in sent.path
    assert CANARY not in sent.path
    assert CANARY.encode() not in sent.body
    assert "authorization" not in sent.headers
    assert sent.json() == {
        "contents": [
            {"role": "user", "parts": [{"text": "Weather in Oslo?"}]},
            {"role": "model", "parts": [{"text": "Which unit?"}]},
            {"role": "user", "parts": [{"text": "Celsius."}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {"temperature": 1.4, "maxOutputTokens": 256, "stopSequences": ["END"]},
    }


async def test_the_model_falls_back_to_the_requested_one_and_raw_is_the_body(upstream: Upstream, key: str) -> None:
    body = json.dumps(wire.response([wire.text("hi")], model_version=None)).encode()
    upstream.handler = lambda req: Reply(body=body, content_type="application/json")
    async with backend(upstream) as provider:
        result = await provider.complete(request(include_raw=True))
    assert result.model == MODEL
    assert result.raw == body
    assert result.usage.total_tokens == 0


async def test_tool_calls_round_trip_with_their_thought_signatures(upstream: Upstream, key: str) -> None:
    first = wire.response(
        [
            wire.function_call("get_weather", {"city": "Oslo"}, signature=wire.SIGNATURE),
            wire.function_call("get_weather", {"city": "Bergen"}),
        ],
        usage_=wire.usage(),
    )
    second = wire.response([wire.text("Oslo 12 °C, Bergen 9 °C.")], usage_=wire.usage())
    replies = iter([Reply.json(first), Reply.json(second)])
    upstream.handler = lambda req: next(replies)
    question = Message(role="user", content="Weather in Oslo and Bergen?")
    async with backend(upstream) as provider:
        result = await provider.complete(
            ProviderRequest(model=MODEL, messages=[question], tools=[WEATHER_TOOL], tool_choice="auto")
        )
        assert (result.finish_reason, result.native_finish_reason) == ("tool_calls", "STOP")
        assert result.content is None
        assert result.tool_calls is not None
        calls = result.tool_calls
        assert [(c.name, json.loads(c.arguments)) for c in calls] == [
            ("get_weather", {"city": "Oslo"}),
            ("get_weather", {"city": "Bergen"}),
        ]
        # Gemini gave no ids: they are made up, distinct, and never sent back as ids.
        assert all(c.id.startswith(SYNTHETIC_ID_PREFIX) for c in calls)
        assert calls[0].id != calls[1].id

        history = [
            question,
            Message(
                role="assistant",
                tool_calls=[
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ],
            ),
            Message(role="tool", tool_call_id=calls[0].id, content='{"temp_c": 12}'),
            Message(role="tool", tool_call_id=calls[1].id, content="9 °C"),
        ]
        await provider.complete(ProviderRequest(model=MODEL, messages=history, tools=[WEATHER_TOOL]))

    first_sent, second_sent = (r.json() for r in upstream.requests)
    assert first_sent["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],  # type: ignore[index]
                }
            ]
        }
    ]
    assert first_sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}
    assert second_sent["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}, "thoughtSignature": wire.SIGNATURE},
                {"functionCall": {"name": "get_weather", "args": {"city": "Bergen"}}},
            ],
        },
        {
            # Parallel responses in one user turn, matched to their calls by name.
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp_c": 12}}},
                {"functionResponse": {"name": "get_weather", "response": {"output": "9 °C"}}},
            ],
        },
    ]
    assert "toolConfig" not in second_sent


async def test_gemini_call_ids_are_kept_and_sent_back(upstream: Upstream, key: str) -> None:
    body = wire.response([wire.function_call("get_weather", {"city": "Oslo"}, id_="fc-1")])
    upstream.handler = lambda req: Reply.json(body)
    async with backend(upstream) as provider:
        result = await provider.complete(request(tools=[WEATHER_TOOL]))
    assert result.tool_calls is not None
    assert result.tool_calls[0].id == "fc-1"
    history = [
        Message(role="user", content="Weather?"),
        Message(role="assistant", tool_calls=[{"id": "fc-1", "function": {"name": "get_weather", "arguments": "{}"}}]),
        Message(role="tool", tool_call_id="fc-1", content="sunny"),
    ]
    contents = to_wire(ProviderRequest(model=MODEL, messages=history))["contents"]
    assert contents[1]["parts"][0]["functionCall"]["id"] == "fc-1"
    assert contents[2]["parts"][0]["functionResponse"]["id"] == "fc-1"


def test_an_unknown_call_gets_the_placeholder_signature_on_its_first_part_only() -> None:
    calls = [
        {"id": "a", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "function": {"name": "g", "arguments": "{}"}},
    ]
    history = [Message(role="user", content="go"), Message(role="assistant", tool_calls=calls)]
    parts = to_wire(ProviderRequest(model=MODEL, messages=history))["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in parts] == [SKIP_SIGNATURE, None]
    old = to_wire(ProviderRequest(model="gemini-2.5-flash", messages=history))["contents"][1]["parts"]
    assert [p.get("thoughtSignature") for p in old] == [None, None]


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"functionCallingConfig": {"mode": "AUTO"}}),
        ("required", {"functionCallingConfig": {"mode": "ANY"}}),
        ("none", {"functionCallingConfig": {"mode": "NONE"}}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}},
        ),
        (None, None),
    ],
)
def test_tool_choice_is_translated(choice: Any, expected: Any) -> None:
    assert to_wire(request(tools=[WEATHER_TOOL], tool_choice=choice)).get("toolConfig") == expected


def test_images_become_inline_data_or_file_data() -> None:
    message = Message(
        role="user",
        content=[
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            {"type": "image_url", "image_url": {"url": "https://example.org/cat.jpg"}},
        ],
    )
    parts = to_wire(ProviderRequest(model=MODEL, messages=[message]))["contents"][0]["parts"]
    assert parts == [
        {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
        {"fileData": {"fileUri": "https://example.org/cat.jpg", "mimeType": "image/jpeg"}},
    ]


async def test_structured_output_asks_for_json_with_the_schema(upstream: Upstream, key: str) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    upstream.handler = lambda req: Reply.json(wire.response([wire.text('{"answer": "yes"}')]))
    response_format = {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    async with backend(upstream) as provider:
        result = await provider.complete(request(response_format=response_format))
    assert json.loads(result.content or "") == {"answer": "yes"}
    assert upstream.requests[0].json()["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


@pytest.mark.parametrize(
    ("finish_reason", "expected"),
    [
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "error"),
        ("OTHER", "error"),
        ("SOMETHING_NEW", "error"),
    ],
)
async def test_finish_reasons_map_and_keep_the_native_value(
    upstream: Upstream, key: str, finish_reason: str, expected: str
) -> None:
    upstream.handler = lambda req: Reply.json(wire.response(None, finish_reason=finish_reason))
    async with backend(upstream) as provider:
        result = await provider.complete(request())
    assert (result.finish_reason, result.native_finish_reason, result.content) == (expected, finish_reason, None)


async def test_a_blocked_prompt_is_a_content_filter_finish(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.json(wire.blocked("PROHIBITED_CONTENT"))
    async with backend(upstream) as provider:
        result = await provider.complete(request())
    assert (result.finish_reason, result.native_finish_reason) == ("content_filter", "PROHIBITED_CONTENT")
    assert result.content is None
    assert result.usage.prompt_tokens == 9


# -- streaming -------------------------------------------------------------------------------------------


async def test_streamed_text_assembles_the_same_result_with_usage_from_the_last_chunk(
    upstream: Upstream, key: str
) -> None:
    upstream.handler = lambda req: Reply.sse(wire.text_stream(["Sun", "ny, 12", " °C."]))
    async with backend(upstream) as provider:
        deltas, final = await collect(provider.stream(request(include_raw=True)))

    assert deltas == [TextDelta("Sun"), TextDelta("ny, 12"), TextDelta(" °C.")]
    assert final.content == "Sunny, 12 °C."
    assert (final.finish_reason, final.native_finish_reason) == ("stop", "STOP")
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (40, 42, 82)
    assert (final.usage.cached_tokens, final.usage.reasoning_tokens) == (16, 30)
    assert final.model == wire.MODEL_VERSION
    assert final.raw is not None
    assert len(json.loads(final.raw)) == 3
    (sent,) = upstream.requests
    assert sent.path == f"/v1beta/models/{MODEL}:streamGenerateContent?alt=sse"
    assert sent.headers["x-goog-api-key"] == CANARY


async def test_streamed_tool_calls_arrive_whole_and_their_signatures_are_kept(upstream: Upstream, key: str) -> None:
    chunks = [
        wire.response([wire.text("Let me check.", thought=True)], finish_reason=None),
        wire.response([wire.text("Checking.")], finish_reason=None),
        wire.response(
            [wire.function_call("get_weather", {"city": "Oslo"}, id_="fc-7", signature=wire.SIGNATURE)],
            finish_reason="STOP",
            usage_=wire.usage(40, 8, thoughts=10),
        ),
    ]
    upstream.handler = lambda req: Reply.sse(wire.sse(chunks))
    async with backend(upstream) as provider:
        deltas, final = await collect(provider.stream(request(tools=[WEATHER_TOOL])))
        history = [
            Message(role="user", content="Weather?"),
            Message(
                role="assistant", tool_calls=[{"id": "fc-7", "function": {"name": "get_weather", "arguments": "{}"}}]
            ),
        ]
        replay = to_wire(ProviderRequest(model=MODEL, messages=history), provider._signatures)
    assert deltas == [
        TextDelta("Checking."),
        ToolCallDelta(index=0, id="fc-7", name="get_weather", arguments='{"city": "Oslo"}'),
    ]
    assert (final.finish_reason, final.content) == ("tool_calls", "Checking.")
    assert final.tool_calls is not None
    assert [(c.id, c.arguments) for c in final.tool_calls] == [("fc-7", '{"city": "Oslo"}')]
    assert replay["contents"][1]["parts"][0]["thoughtSignature"] == wire.SIGNATURE


async def test_a_stream_without_a_finish_reason_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    chunks = [wire.response([wire.text("a")], finish_reason=None), wire.response([wire.text("b")], finish_reason=None)]
    upstream.handler = lambda req: Reply.sse(wire.sse(chunks))
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError) as caught:
            await collect(provider.stream(request()))
    assert "finishReason" in str(caught.value)


async def test_a_stream_cut_off_in_the_middle_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.sse(wire.text_stream(["a", "b", "c"]), cut_after=1)
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError):
            await collect(provider.stream(request()))


async def test_a_blocked_prompt_ends_a_stream_with_content_filter(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply.sse(wire.sse([wire.blocked("SAFETY")]))
    async with backend(upstream) as provider:
        deltas, final = await collect(provider.stream(request()))
    assert deltas == []
    assert (final.finish_reason, final.native_finish_reason) == ("content_filter", "SAFETY")


async def test_an_error_chunk_mid_stream_raises_its_typed_error(upstream: Upstream, key: str) -> None:
    chunks = [
        *wire.sse([wire.response([wire.text("Hel")], finish_reason=None)]),
        *wire.sse([wire.error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")]),
    ]
    upstream.handler = lambda req: Reply.sse(chunks)
    seen: list[StreamItem] = []
    async with backend(upstream) as provider:
        with pytest.raises(errors.OverloadedError) as caught:
            await consume(provider.stream(request()), seen)
    assert seen == [TextDelta("Hel")]
    assert caught.value.data["provider_code"] == "UNAVAILABLE"
    assert caught.value.data["provider_message"] == "The model is overloaded. Please try again later."


async def test_an_error_status_on_a_stream_request_is_typed(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: wire.error_reply(
        429, "RESOURCE_EXHAUSTED", "Resource has been exhausted", [wire.retry_info("1.2s")]
    )
    async with backend(upstream) as provider:
        with pytest.raises(errors.RateLimitedError) as caught:
            await collect(provider.stream(request()))
    assert caught.value.retry_after == 1.2


# -- errors ----------------------------------------------------------------------------------------------

QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, head to: https://ai.google.dev/gemini-api/docs/rate-limits."
)


@pytest.mark.parametrize(
    ("status", "google_status", "message", "details", "expected", "retry_after", "code"),
    [
        (400, "INVALID_ARGUMENT", "Invalid JSON payload received.", None, "bad_request", None, "INVALID_ARGUMENT"),
        (
            400,
            "INVALID_ARGUMENT",
            "API key not valid. Please pass a valid API key.",
            [wire.error_info("API_KEY_INVALID"), wire.localized("API key not valid. Please pass a valid API key.")],
            "auth",
            None,
            "API_KEY_INVALID",
        ),
        (
            400,
            "FAILED_PRECONDITION",
            "User location is not supported for the API use.",
            None,
            "bad_request",
            None,
            "FAILED_PRECONDITION",
        ),
        (
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials.",
            None,
            "auth",
            None,
            "UNAUTHENTICATED",
        ),
        (
            403,
            "PERMISSION_DENIED",
            "Your API key was reported as leaked. Please use another API key.",
            None,
            "auth",
            None,
            "PERMISSION_DENIED",
        ),
        (
            404,
            "NOT_FOUND",
            "models/gemini-nope is not found for API version v1beta.",
            None,
            "bad_request",
            None,
            "NOT_FOUND",
        ),
        (409, "ABORTED", "The operation was aborted.", None, "server_error", None, "ABORTED"),
        (
            429,
            "RESOURCE_EXHAUSTED",
            QUOTA_MESSAGE,
            [
                wire.help_link(),
                wire.quota_failure("GenerateRequestsPerMinutePerProjectPerModel-FreeTier"),
                wire.retry_info("37s"),
            ],
            "rate_limited",
            37.0,
            "RESOURCE_EXHAUSTED",
        ),
        (
            429,
            "RESOURCE_EXHAUSTED",
            QUOTA_MESSAGE,
            [
                wire.quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier"),
                wire.retry_info("14s"),
            ],
            "quota_exceeded",
            14.0,
            "RESOURCE_EXHAUSTED",
        ),
        (500, "INTERNAL", "An internal error has occurred.", None, "server_error", None, "INTERNAL"),
        (
            503,
            "UNAVAILABLE",
            "The model is overloaded. Please try again later.",
            None,
            "overloaded",
            None,
            "UNAVAILABLE",
        ),
        (
            504,
            "DEADLINE_EXCEEDED",
            "Deadline expired before operation could complete.",
            None,
            "timeout",
            None,
            "DEADLINE_EXCEEDED",
        ),
    ],
)
async def test_error_statuses_map_to_typed_errors(
    upstream: Upstream,
    key: str,
    status: int,
    google_status: str,
    message: str,
    details: list[dict[str, Any]] | None,
    expected: str,
    retry_after: float | None,
    code: str,
) -> None:
    upstream.handler = lambda req: wire.error_reply(status, google_status, message, details)
    async with backend(upstream) as provider:
        with pytest.raises(errors.ProviderError) as caught:
            await provider.complete(request())
    error = caught.value
    assert error.type == expected
    assert error.status == status
    assert error.retry_after == retry_after
    assert error.data["backend"] == "gemini-test"
    assert error.data["provider_message"] == message
    assert error.data["provider_code"] == code
    assert error.is_retryable == (expected in ("rate_limited", "server_error", "timeout", "overloaded"))


async def test_a_retry_after_header_is_used_when_the_body_has_no_retry_info(upstream: Upstream, key: str) -> None:
    reply = wire.error_reply(429, "RESOURCE_EXHAUSTED", "slow down")
    reply.headers["retry-after"] = "3"
    upstream.handler = lambda req: reply
    async with backend(upstream) as provider:
        with pytest.raises(errors.RateLimitedError) as caught:
            await provider.complete(request())
    assert caught.value.retry_after == 3.0


async def test_an_error_body_wrapped_in_an_array_is_read(upstream: Upstream, key: str) -> None:
    body = [wire.error_body(400, "INVALID_ARGUMENT", "bad", [wire.error_info("API_KEY_INVALID")])]
    upstream.handler = lambda req: Reply.json(body, status=400)
    async with backend(upstream) as provider:
        with pytest.raises(errors.AuthError):
            await provider.complete(request())


async def test_a_body_that_is_not_json_is_a_protocol_error(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(body=b"not json", content_type="application/json")
    async with backend(upstream) as provider:
        with pytest.raises(errors.UpstreamProtocolError) as caught:
            await provider.complete(request())
    assert caught.value.status == 200


async def test_an_error_page_that_is_not_json_is_classified_by_status(upstream: Upstream, key: str) -> None:
    upstream.handler = lambda req: Reply(status=503, body=b"Service Unavailable", content_type="text/plain")
    async with backend(upstream) as provider:
        with pytest.raises(errors.OverloadedError) as caught:
            await provider.complete(request())
    assert caught.value.data["provider_message"] == "Service Unavailable"


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


async def test_several_keys_are_used_in_turn(upstream: Upstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_GEMINI_KEY_A", "gemini-key-aaaaaaaaaaaa")
    monkeypatch.setenv("LLM_RPC_TEST_GEMINI_KEY_B", "gemini-key-bbbbbbbbbbbb")
    upstream.handler = lambda req: Reply.json(wire.response([wire.text("ok")]))
    provider = GeminiProvider(
        "g", base_url=upstream.url, key_envs=["LLM_RPC_TEST_GEMINI_KEY_A", "LLM_RPC_TEST_GEMINI_KEY_B"]
    )
    try:
        for _ in range(3):
            await provider.complete(request())
    finally:
        await provider.aclose()
    assert [r.headers["x-goog-api-key"][-1] for r in upstream.requests] == ["a", "b", "a"]


# -- the key never leaks ---------------------------------------------------------------------------------


async def test_the_key_never_appears_in_errors_results_or_logs(
    upstream: Upstream, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"API key not valid: {CANARY}"
    replies = iter(
        [
            wire.error_reply(400, "INVALID_ARGUMENT", echo, [wire.error_info("API_KEY_INVALID")]),
            Reply.sse(wire.sse([wire.error_body(500, "INTERNAL", echo)])),
            Reply.json(wire.response([wire.text("fine")])),
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
    assert all(CANARY not in r.path for r in upstream.requests)


# -- registration and the in-process API -----------------------------------------------------------------


def test_the_kind_is_registered() -> None:
    assert "gemini" in PROVIDER_KINDS
    assert provider_class("gemini") is GeminiProvider


async def test_router_from_config_reaches_the_backend(upstream: Upstream, key: str, tmp_path: Path) -> None:
    upstream.handler = lambda req: Reply.json(wire.response([wire.text("Hello from Gemini.")], usage_=wire.usage()))
    config = tmp_path / "llm-rpc.toml"
    config.write_text(
        f'[[backends]]\nname = "gem"\nprovider = "gemini"\nbase_url = "{upstream.url}/v1beta"\n'
        f'api_key_env = "{KEY_ENV}"\n'
    )
    router = Router.from_config(config)
    async with router:
        result = await router.execute(prompt="Say hello", model=MODEL)
    assert (result.content, result.provider, result.backend) == ("Hello from Gemini.", "gemini", "gem")
    assert result.usage.total_tokens == 48
    assert upstream.requests[0].path == f"/v1beta/models/{MODEL}:generateContent"
