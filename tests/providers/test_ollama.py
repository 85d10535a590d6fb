"""The Ollama backend (native ``/api/chat``) against a loopback server speaking its real wire format.

Real sockets through the real HTTP client, on both anyio backends: plain and NDJSON-streamed answers,
tool calls (object arguments, no ids), every error status with Ollama's body, cut streams, resets.
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
from llm_rpc.providers import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.providers import provider_class as kind_class
from llm_rpc.providers.ollama import OllamaProvider
from llm_rpc.types import Message, ToolCall
from tests.conftest import CANARY_KEY
from tests.upstreams import Reply, Upstream
from tests.upstreams import ollama_wire as wire

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


def backend(up: Upstream, **kwargs: Any) -> OllamaProvider:
    return OllamaProvider("local", base_url=up.url, **kwargs)


def ask(**kwargs: Any) -> ProviderRequest:
    messages = [Message(role="system", content="Be brief."), Message(role="user", content="Weather in Oslo?")]
    return ProviderRequest(model=wire.MODEL, messages=messages, **kwargs)


@contextlib.asynccontextmanager
async def opened(provider: OllamaProvider) -> AsyncIterator[OllamaProvider]:
    try:
        yield provider
    finally:
        await provider.aclose()


async def complete(provider: OllamaProvider, request: ProviderRequest | None = None) -> ProviderResponse:
    async with opened(provider):
        with anyio.fail_after(5):
            return await provider.complete(request or ask())


async def drain(provider: OllamaProvider, seen: list[StreamItem], request: ProviderRequest | None = None) -> None:
    """Read the whole stream into ``seen`` (what arrived before an error stays there)."""
    async with opened(provider):
        with anyio.fail_after(5):
            async for item in provider.stream(request or ask()):
                seen.append(item)


async def stream(provider: OllamaProvider, request: ProviderRequest | None = None) -> list[StreamItem]:
    items: list[StreamItem] = []
    await drain(provider, items, request)
    return items


def sent(up: Upstream) -> dict[str, Any]:
    assert len(up.requests) == 1
    body: dict[str, Any] = up.requests[0].json()
    return body


# -- plain calls ----------------------------------------------------------------------------------------------


async def test_a_plain_answer_asks_for_no_stream_and_maps_options_and_counts(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat())
    result = await complete(backend(up), ask(max_tokens=256, temperature=0.2, stop=["END"]))

    assert result.content == "Oslo is 4 °C and cloudy."
    assert result.model == wire.REPORTED
    assert (result.finish_reason, result.native_finish_reason) == ("stop", "stop")
    assert (result.usage.prompt_tokens, result.usage.completion_tokens, result.usage.total_tokens) == (26, 282, 308)
    assert result.usage.cached_tokens is None
    assert result.tool_calls is None
    request = up.requests[0]
    assert (request.method, request.path) == ("POST", "/api/chat")
    assert "authorization" not in request.headers
    assert sent(up) == {
        "model": wire.MODEL,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Weather in Oslo?"}],
        "stream": False,
        "options": {"num_predict": 256, "temperature": 0.2, "stop": ["END"]},
    }


async def test_length_is_normalized(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat("Oslo is", done_reason="length"))
    result = await complete(backend(up), ask(max_tokens=2))
    assert (result.finish_reason, result.native_finish_reason) == ("length", "length")


async def test_tool_calls_get_json_string_arguments_ids_and_finish_tool_calls(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.tool_chat())
    result = await complete(backend(up), ask(tools=[wire.WEATHER_TOOL]))

    assert result.content is None
    assert (result.finish_reason, result.native_finish_reason) == ("tool_calls", "stop")
    assert result.tool_calls is not None
    assert [(c.name, json.loads(c.arguments)) for c in result.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Bergen"}),
    ]
    assert result.tool_calls[0].arguments == '{"city":"Oslo"}'
    ids = [c.id for c in result.tool_calls]
    assert all(i.startswith("call_") for i in ids)
    assert len(set(ids)) == 2
    assert sent(up)["tools"] == [wire.WEATHER_TOOL]


async def test_tool_call_ids_given_by_ollama_are_kept(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.tool_chat(with_ids=True))
    result = await complete(backend(up), ask(tools=[wire.WEATHER_TOOL]))
    assert result.tool_calls is not None
    assert [c.id for c in result.tool_calls] == ["call_ollama0", "call_ollama1"]


async def test_a_tool_loop_goes_out_in_ollamas_shape(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat("It is 4 °C."))
    history = [
        Message(role="developer", content="Use tools."),
        Message(role="user", content="Weather in Oslo?"),
        Message(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        ),
        Message(role="tool", tool_call_id="call_1", content='{"temp_c": 4}'),
    ]
    await complete(backend(up), ProviderRequest(model=wire.MODEL, messages=history, tools=[wire.WEATHER_TOOL]))
    assert sent(up)["messages"] == [
        {"role": "system", "content": "Use tools."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}, "id": "call_1"}],
        },
        {"role": "tool", "content": '{"temp_c": 4}', "tool_call_id": "call_1", "tool_name": "get_weather"},
    ]


async def test_images_in_content_parts_go_to_images(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat("A cat."))
    parts: list[dict[str, Any]] = [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    await complete(backend(up), ProviderRequest(model="llava", messages=[Message(role="user", content=parts)]))
    assert sent(up)["messages"] == [{"role": "user", "content": "What is this?", "images": ["iVBORw0KGgo="]}]


async def test_a_json_schema_response_format_becomes_format(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat('{"city":"Oslo","temp_c":4}'))
    fmt = {"type": "json_schema", "json_schema": {"name": "weather", "schema": wire.SCHEMA, "strict": True}}
    result = await complete(backend(up), ask(response_format=fmt))
    assert sent(up)["format"] == wire.SCHEMA
    assert json.loads(result.content or "") == {"city": "Oslo", "temp_c": 4}

    up.requests.clear()
    await complete(backend(up), ask(response_format={"type": "json_object"}))
    assert sent(up)["format"] == "json"


async def test_tool_choice_is_dropped_with_a_warning_and_none_drops_the_tools(
    up: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    up.handler = lambda req: Reply.json(wire.chat())
    await complete(backend(up), ask(tools=[wire.WEATHER_TOOL], tool_choice="required"))
    body = sent(up)
    assert "tool_choice" not in body
    assert body["tools"] == [wire.WEATHER_TOOL]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "llm_rpc.providers.ollama"]
    assert len(warnings) == 1
    assert "tool_choice" in warnings[0].getMessage()

    up.requests.clear()
    caplog.clear()
    await complete(backend(up), ask(tools=[wire.WEATHER_TOOL], tool_choice="none"))
    assert "tools" not in sent(up)
    await complete(backend(up), ask(tools=[wire.WEATHER_TOOL], tool_choice="auto"))
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


async def test_extra_fields_and_options_pass_through_without_replacing_ours(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat())
    extra = {"keep_alive": "10m", "think": False, "stream": True, "options": {"num_ctx": 8192, "num_predict": 1}}
    await complete(backend(up), ask(max_tokens=64, extra=extra))
    body = sent(up)
    assert (body["keep_alive"], body["think"], body["stream"]) == ("10m", False, False)
    assert body["options"] == {"num_ctx": 8192, "num_predict": 64}


async def test_include_raw_returns_the_body(up: Upstream) -> None:
    up.handler = lambda req: Reply.json(wire.chat())
    result = await complete(backend(up), ask(include_raw=True))
    assert result.raw is not None
    assert json.loads(result.raw) == wire.chat()


# -- streams --------------------------------------------------------------------------------------------------


async def test_a_streamed_answer_reads_ndjson_and_ends_with_the_counts(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.text_stream())
    items = await stream(backend(up), ask(max_tokens=50))

    *deltas, final = items
    assert deltas == [TextDelta("Oslo"), TextDelta(" is 4 °C"), TextDelta(" and cloudy.")]
    assert isinstance(final, ProviderResponse)
    assert final.content == "Oslo is 4 °C and cloudy."
    assert final.finish_reason == "stop"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (26, 9, 35)
    body = sent(up)
    assert body["stream"] is True
    assert body["options"] == {"num_predict": 50}


async def test_streamed_tool_calls_arrive_whole_and_are_numbered(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.tool_stream())
    items = await stream(backend(up), ask(tools=[wire.WEATHER_TOOL]))

    *deltas, final = items
    assert [(d.index, d.name, d.arguments) for d in deltas if isinstance(d, ToolCallDelta)] == [
        (0, "get_weather", '{"city":"Oslo"}'),
        (1, "get_weather", '{"city":"Bergen"}'),
    ]
    assert not [d for d in deltas if isinstance(d, TextDelta)]  # thinking is not content
    assert isinstance(final, ProviderResponse)
    assert final.content is None
    assert (final.finish_reason, final.native_finish_reason) == ("tool_calls", "stop")
    assert final.tool_calls == [
        ToolCall(id=d.id or "", name="get_weather", arguments=d.arguments)
        for d in deltas
        if isinstance(d, ToolCallDelta)
    ]
    assert final.usage.total_tokens == 218


async def test_include_raw_on_a_stream_gives_every_line_as_a_json_array(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.text_stream())
    final = (await stream(backend(up), ask(include_raw=True)))[-1]
    assert isinstance(final, ProviderResponse)
    assert final.raw is not None
    assert json.loads(final.raw) == wire.text_stream()


async def test_an_error_line_after_the_200_is_a_typed_error(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.midstream_error())
    seen: list[StreamItem] = []
    with pytest.raises(errors.ServerError) as raised:
        await drain(backend(up), seen)
    assert seen == [TextDelta("Oslo"), TextDelta(" is")]
    err = raised.value
    assert err.data["status"] == 200
    assert err.data["finish_reason"] == "error"
    assert "unexpected EOF" in err.data["provider_message"]


async def test_a_stream_cut_in_the_middle_is_a_protocol_error(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.text_stream(), cut_after=2)
    seen: list[StreamItem] = []
    with pytest.raises(errors.UpstreamProtocolError):
        await drain(backend(up), seen)
    assert not any(isinstance(i, ProviderResponse) for i in seen)


async def test_a_stream_that_ends_without_done_is_a_protocol_error(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.text_stream()[:-1])
    with pytest.raises(errors.UpstreamProtocolError) as raised:
        await stream(backend(up))
    assert "truncated" in raised.value.message


async def test_a_stream_line_that_is_not_json_is_a_protocol_error(up: Upstream) -> None:
    up.handler = lambda req: Reply(chunks=['{"model": "llama3.2", "mess', "age\n"], content_type="application/x-ndjson")
    with pytest.raises(errors.UpstreamProtocolError):
        await stream(backend(up))


async def test_a_line_longer_than_any_ollama_sends_is_a_protocol_error(
    up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llm_rpc.providers.ollama._MAX_LINE", 64)
    up.handler = lambda req: Reply(chunks=["x" * 50, "y" * 50, "\n"], content_type="application/x-ndjson")
    with pytest.raises(errors.UpstreamProtocolError) as raised:
        await stream(backend(up))
    assert "too long" in raised.value.message


async def test_lines_split_across_chunks_are_joined(up: Upstream) -> None:
    body = "".join(json.dumps(line) + "\n" for line in wire.text_stream())
    up.handler = lambda req: Reply(chunks=[body[i : i + 7] for i in range(0, len(body), 7)])
    final = (await stream(backend(up)))[-1]
    assert isinstance(final, ProviderResponse)
    assert final.content == "Oslo is 4 °C and cloudy."


async def test_a_caller_that_stops_reading_early_leaves_nothing_behind(up: Upstream) -> None:
    up.handler = lambda req: Reply.ndjson(wire.text_stream(), chunk_delay=0.01)
    provider = backend(up)
    async with opened(provider):
        with anyio.fail_after(5):
            async with contextlib.aclosing(provider.stream(ask())) as items:  # type: ignore[type-var]
                async for item in items:
                    assert item == TextDelta("Oslo")
                    break
            gc.collect()  # an abandoned async generator would warn now (filterwarnings = error)
            up.handler = lambda req: Reply.json(wire.chat())
            assert (await provider.complete(ask())).content


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "type_", "retryable"),
    [case[1:] for case in wire.ERROR_CASES],
    ids=[case[0] for case in wire.ERROR_CASES],
)
async def test_each_error_status_with_ollamas_body_is_typed(
    up: Upstream, status: int, body: dict[str, Any] | str, type_: str, retryable: bool
) -> None:
    up.handler = lambda req: Reply(status=status, body=body)
    with pytest.raises(errors.ProviderError) as raised:
        await complete(backend(up))
    err = raised.value
    assert err.type == type_
    assert err.is_retryable is retryable
    assert err.data["status"] == status
    assert err.data["backend"] == "local"
    expected = body["error"] if isinstance(body, dict) else body.strip()
    assert err.data["provider_message"] == expected


async def test_an_error_status_on_a_stream_request_is_typed(up: Upstream) -> None:
    up.handler = lambda req: Reply.json({"error": 'model "llama9" not found, try pulling it first'}, status=404)
    with pytest.raises(errors.BadRequestError) as raised:
        await stream(backend(up))
    assert "not found" in raised.value.data["provider_message"]


@pytest.mark.parametrize(
    "body", [b"<html>proxy error</html>", b'{"model": "llama3.2", "message": '], ids=["html", "truncated-json"]
)
async def test_a_200_that_is_not_json_is_a_protocol_error(up: Upstream, body: bytes) -> None:
    up.handler = lambda req: Reply(body=body, content_type="application/json")
    with pytest.raises(errors.UpstreamProtocolError) as raised:
        await complete(backend(up))
    assert raised.value.data["status"] == 200


async def test_a_connection_reset_is_a_connection_error(up: Upstream) -> None:
    up.handler = lambda req: Reply(reset=True)
    with pytest.raises(errors.UpstreamConnectionError):
        await complete(backend(up))


async def test_a_hung_server_times_out(up: Upstream) -> None:
    up.handler = lambda req: Reply(hang=5)
    with pytest.raises(errors.UpstreamTimeoutError):
        await complete(backend(up, timeout=0.2))


# -- keys, config and the Python API --------------------------------------------------------------------------


async def test_a_cloud_key_goes_in_a_bearer_header_and_never_into_errors(up: Upstream) -> None:
    def echo(req: Any) -> Reply:
        return Reply.json({"error": f"unauthorized: {req.headers['authorization']}"}, status=401)

    up.handler = echo
    provider = backend(up, key_envs=[KEY_ENV])
    with pytest.raises(errors.AuthError) as raised:
        await complete(provider)
    assert up.requests[0].headers["authorization"] == f"Bearer {CANARY_KEY}"
    err = raised.value
    for text in (str(err), repr(err), err.message, json.dumps(err.to_data()), repr(provider), repr(vars(provider))):
        assert CANARY_KEY not in text
    assert "***" in err.data["provider_message"]


async def test_a_configured_key_that_is_missing_fails_at_call_time(
    up: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(errors.AuthError) as raised:
        await complete(backend(up, key_envs=[KEY_ENV]))
    assert KEY_ENV in raised.value.message
    assert up.requests == []


def test_ollama_is_registered_with_its_default_url() -> None:
    assert kind_class("ollama") is OllamaProvider
    provider = OllamaProvider.from_config(BackendConfig(provider="ollama", name="gpu-box"))
    assert (provider.name, provider.base_url, provider.key_envs) == ("gpu-box", "http://localhost:11434", [])


async def test_router_from_config_executes_against_ollama(up: Upstream, tmp_path: Path) -> None:
    up.handler = lambda req: Reply.json(wire.chat())
    path = tmp_path / "llm-rpc.toml"
    path.write_text(f'[[backends]]\nprovider = "ollama"\nbase_url = "{up.url}"\nlocal = true\n')
    router = Router.from_config(path)
    try:
        with anyio.fail_after(5):
            result = await router.execute(prompt="Weather in Oslo?", model=wire.MODEL, config={"max_tokens": 32})
    finally:
        await router.aclose()
    assert result.content == "Oslo is 4 °C and cloudy."
    assert (result.provider, result.backend, result.model) == ("ollama", "ollama", wire.REPORTED)
    assert result.usage.total_tokens == 308
    assert sent(up)["options"] == {"num_predict": 32}
    assert CANARY_KEY not in msgspec.json.encode(result).decode()
