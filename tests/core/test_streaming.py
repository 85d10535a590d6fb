"""Streaming through the router: deltas in order before the result, failover only before the first
delta, typed errors after it, a cut stream is an error, and the first-token timeout fails over."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.errors import BackendError, UpstreamProtocolError
from tests.protocol._harness import harness
from tests.upstreams import Reply, Upstream
from tests.upstreams import openai_wire as wire

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"
PIECES = ("Oslo is ", "4 °C", " and cloudy.")


@pytest.fixture
def two_upstreams(canary_key: str) -> Iterator[tuple[Upstream, Upstream]]:
    with Upstream() as first, Upstream() as second:
        second.handler = lambda req: Reply.sse(wire.text_stream(PIECES))
        yield first, second


def _router(first: Upstream, second: Upstream, **settings: Any) -> Router:
    backends = [
        BackendConfig(
            name="first", provider="openai-compatible", base_url=first.url + "/v1", api_key_env=KEY_ENV, priority=1
        ),
        BackendConfig(
            name="second", provider="openai-compatible", base_url=second.url + "/v1", api_key_env=KEY_ENV, priority=2
        ),
    ]
    return Router(Config(router=RouterSettings(retries=2, retry_base_delay=0.01, **settings), backends=backends))


async def _stream(router: Router, **params: Any) -> tuple[list[tuple[int, dict[str, Any]]], Any]:
    deltas: list[tuple[int, dict[str, Any]]] = []
    with anyio.fail_after(10):
        result = await router.execute(
            prompt="weather?", model="m", stream=True, on_delta=lambda i, d: deltas.append((i, d)), **params
        )
    return deltas, result


async def test_deltas_arrive_in_order_and_concatenate_to_the_result(two_upstreams: tuple[Upstream, Upstream]) -> None:
    first, second = two_upstreams
    first.handler = lambda req: Reply.sse(wire.text_stream(PIECES), chunk_delay=0.01)
    async with _router(first, second) as router:
        deltas, result = await _stream(router)
    assert [i for i, _ in deltas] == list(range(len(deltas)))
    assert "".join(d["content"] for _, d in deltas) == result.content == "".join(PIECES)
    assert result.usage.prompt_tokens == 52
    assert result.usage.total_tokens == 61
    assert result.backend == "first"
    assert first.requests[0].json()["stream"] is True


async def test_a_failure_before_the_first_delta_fails_over(two_upstreams: tuple[Upstream, Upstream]) -> None:
    first, second = two_upstreams
    first.handler = lambda req: Reply.json({"error": {"message": "down", "type": "server_error"}}, status=503)
    async with _router(first, second) as router:
        deltas, result = await _stream(router)
    assert result.backend == "second"
    assert result.attempts == 2
    assert "".join(d["content"] for _, d in deltas) == result.content


async def test_a_stream_cut_after_deltas_is_an_error_and_is_not_retried(
    two_upstreams: tuple[Upstream, Upstream],
) -> None:
    first, second = two_upstreams
    first.handler = lambda req: Reply.sse(wire.text_stream(PIECES), cut_after=2)
    async with _router(first, second) as router:
        deltas: list[tuple[int, dict[str, Any]]] = []
        with anyio.fail_after(10), pytest.raises(UpstreamProtocolError) as raised:
            await router.execute(prompt="weather?", model="m", stream=True, on_delta=lambda i, d: deltas.append((i, d)))
    assert deltas  # something went out before the cut
    assert raised.value.data["backend"] == "first"
    assert second.requests == []  # never a second answer after a first one started


async def test_the_first_token_timeout_fails_over_a_silent_provider(two_upstreams: tuple[Upstream, Upstream]) -> None:
    first, second = two_upstreams
    first.handler = lambda req: Reply(hang=5)
    async with _router(first, second) as router:
        _, result = await _stream(router, config={"first_token_timeout_seconds": 0.3})
    assert result.backend == "second"
    assert result.attempts == 2


async def test_every_backend_failing_before_any_delta_is_a_backend_error(
    two_upstreams: tuple[Upstream, Upstream],
) -> None:
    first, second = two_upstreams
    first.handler = second.handler = lambda req: Reply.json({"error": {"message": "x"}}, status=500)
    async with _router(first, second) as router:
        with anyio.fail_after(10), pytest.raises(BackendError):
            await router.execute(prompt="weather?", model="m", stream=True)


async def test_the_mock_streams_word_by_word_as_notifications_before_the_reply() -> None:
    from llm_rpc._inprocess import _LocalServer
    from llm_rpc.methods import build_table

    async with Router() as router, harness(build_table(router, _LocalServer())) as h:
        h.feed('{"jsonrpc":"2.0","id":"s","method":"execute","params":{"prompt":"a b c","stream":true}}')
        messages = await h.settle()
    *notes, reply = messages
    assert [n["method"] for n in notes] == ["execute.delta"] * 6
    assert [n["params"]["index"] for n in notes] == list(range(6))
    assert all(n["params"]["request_id"] == "s" for n in notes)
    assert (
        "".join(n["params"]["delta"]["content"] for n in notes) == reply["result"]["content"] == "Mock answer to: a b c"
    )


async def test_the_request_deadline_bounds_a_stream_too(two_upstreams: tuple[Upstream, Upstream]) -> None:
    from llm_rpc.errors import RequestTimeoutError

    first, second = two_upstreams
    first.handler = lambda req: Reply.sse(wire.text_stream(PIECES), chunk_delay=0.5)
    async with _router(first, second) as router:
        deltas: list[tuple[int, dict[str, Any]]] = []
        with anyio.fail_after(10), pytest.raises(RequestTimeoutError) as raised:
            await router.execute(
                prompt="weather?",
                model="m",
                stream=True,
                config={"timeout_seconds": 1.3},
                on_delta=lambda i, d: deltas.append((i, d)),
            )
        with anyio.fail_after(5):
            while first.client_disconnects < 1:
                await anyio.sleep(0.01)
    assert raised.value.data["timeout_seconds"] == 1.3
    assert deltas
