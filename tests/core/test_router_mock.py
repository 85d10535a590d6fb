"""The router on the built-in mock: in-process API, determinism, limits, failures, the inline path."""

from __future__ import annotations

import pytest

from llm_rpc import Router
from llm_rpc.config import BackendConfig, Config
from llm_rpc.errors import NoRouteError, RateLimitedError, RequestTimeoutError, ServerError
from llm_rpc.types import ExecuteParams, Message

pytestmark = pytest.mark.anyio


async def test_execute_in_process_is_deterministic_and_counts_tokens() -> None:
    async with Router() as router:
        first = await router.execute(prompt="Tell me a story", metadata={"k": 1})
        second = await router.execute(prompt="Tell me a story", metadata={"k": 1})
    assert first.content == second.content == "Mock answer to: Tell me a story"
    assert first.id == second.id
    assert first.usage.prompt_tokens == 4 + 3
    assert first.usage.completion_tokens == 7
    assert first.usage.total_tokens == 14
    assert first.metadata == {"k": 1}
    assert (first.provider, first.backend, first.model, first.cost_usd) == ("mock", "mock", "mock", 0.0)


async def test_max_tokens_truncates_with_finish_reason_length() -> None:
    async with Router() as router:
        result = await router.execute(prompt="one two three four", config={"max_tokens": 2})
    assert result.content == "Mock answer"
    assert result.finish_reason == "length"
    assert result.usage.completion_tokens == 2


async def test_messages_and_model_name_alias() -> None:
    async with Router() as router:
        result = await router.execute(
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            config={"model_name": "gpt-4o-mini"},
        )
    assert result.content == "Mock answer to: hi"
    assert result.model == "gpt-4o-mini"


async def test_the_inline_path_gives_the_same_result_as_the_task_path() -> None:
    params = ExecuteParams(messages=[Message(role="user", content="same either way")], metadata={"a": "b"})
    async with Router() as router:
        inline = router.execute_nowait(params)
        awaited = await router.execute(params)
    assert inline is not None
    assert inline.content == awaited.content
    assert inline.usage == awaited.usage
    assert inline.id == awaited.id


async def test_a_mock_with_latency_is_not_answered_inline() -> None:
    config = Config(backends=[BackendConfig(provider="mock", latency_ms=20)])
    async with Router(config) as router:
        params = ExecuteParams(prompt="x")
        assert router.execute_nowait(params) is None
        assert (await router.execute(params)).content == "Mock answer to: x"


async def test_mock_failures_are_deterministic_by_request_and_typed() -> None:
    async with Router() as router:
        with pytest.raises(RateLimitedError) as raised:
            await router.execute(prompt="x", mock={"fail_rate": 1.0, "fail_type": "rate_limited"})
        assert raised.value.data["backend"] == "mock"
        runs: list[list[str]] = []
        for _ in range(2):
            run = []
            for i in range(40):
                try:
                    await router.execute(prompt=f"p{i}", mock={"fail_rate": 0.5})
                    run.append("ok")
                except ServerError:
                    run.append("failed")
            runs.append(run)
    assert runs[0] == runs[1]
    assert set(runs[0]) == {"ok", "failed"}


async def test_the_request_deadline_bounds_the_call() -> None:
    async with Router() as router:
        with pytest.raises(RequestTimeoutError) as raised:
            await router.execute(prompt="x", mock={"latency_ms": 5000}, config={"timeout_seconds": 0.05})
    assert raised.value.data["timeout_seconds"] == 0.05


async def test_a_model_no_backend_serves_is_no_route() -> None:
    config = Config(backends=[BackendConfig(provider="mock", models=["mock-*"])])
    async with Router(config) as router:
        with pytest.raises(NoRouteError) as raised:
            await router.execute(prompt="x", model="gpt-4o")
    assert raised.value.data == {"model": "gpt-4o", "backends": ["mock"]}


async def test_bad_keyword_arguments_are_a_type_error() -> None:
    async with Router() as router:
        with pytest.raises(TypeError, match="prompt"):
            await router.execute(prompt=5)
