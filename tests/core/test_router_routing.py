"""Which backend answers: candidates, the four strategies, failover, retry rules, several keys.

These need no clock (no backoff: the retry delays are 0), so each runs on asyncio and trio.
"""

from __future__ import annotations

from collections import Counter

import anyio
import pytest

from llm_rpc.config import BackendConfig, Config
from llm_rpc.core.router import Router
from llm_rpc.errors import (
    AuthError,
    BackendError,
    BadRequestError,
    NoRouteError,
    OverloadedError,
    RateLimitedError,
    ServerError,
    UpstreamConnectionError,
)
from llm_rpc.types import ExecuteParams
from tests.core._scripted import Scripted, fail, make_router, wait_until

pytestmark = pytest.mark.anyio

E500 = fail(ServerError, 500)


async def test_failover_tries_backends_in_priority_order_and_answers_from_the_first_that_works() -> None:
    a, b, c = Scripted("a", E500), Scripted("b", fail(UpstreamConnectionError)), Scripted("c")
    router = make_router(a, b, c, retries=3)
    result = await router.execute(prompt="x", model="m")
    assert (result.backend, result.attempts, result.content) == ("c", 3, "c says hi")
    assert [len(p.calls) for p in (a, b, c)] == [1, 1, 1]
    again = await router.execute(prompt="y", model="m")
    assert (again.backend, again.attempts) == ("a", 1)


async def test_equal_priorities_keep_file_order_and_lower_priority_numbers_come_first() -> None:
    config = Config(
        backends=[
            BackendConfig(provider="ollama", name="late", priority=5),
            BackendConfig(provider="ollama", name="first", priority=1),
            BackendConfig(provider="ollama", name="second", priority=5),
        ]
    )
    providers = {n: Scripted(n) for n in ("late", "first", "second")}
    router = Router(config, providers=dict(providers))
    assert [b.name for b in router.candidates("anything")] == ["first", "late", "second"]


async def test_candidates_follow_globs_naming_rules_and_an_explicit_provider_prefix() -> None:
    config = Config(
        backends=[
            BackendConfig(provider="openai", name="oa", api_key_env="LLM_RPC_TEST_UNSET_KEY"),
            BackendConfig(provider="anthropic", name="an", api_key_env="LLM_RPC_TEST_UNSET_KEY"),
            BackendConfig(provider="openrouter", name="or", models=["*/*"], api_key_env="LLM_RPC_TEST_UNSET_KEY"),
            BackendConfig(provider="ollama", name="ol", models=["llama3*"]),
        ]
    )
    router = Router(config, providers={n: Scripted(n) for n in ("oa", "an", "or", "ol")})

    def names(model: str) -> list[str]:
        return [b.name for b in router.candidates(model)]

    assert names("gpt-4o") == ["oa"]
    assert names("o3-mini") == ["oa"]
    assert names("claude-sonnet-4") == ["an"]
    assert names("llama3.2") == ["ol"]
    assert names("openai/gpt-4o") == ["oa", "or"]
    assert names("openrouter/meta-llama/llama-3.3-70b-instruct") == ["or"]
    assert names("qwen2.5") == []
    sent = {b.name: b.wire_model("openai/gpt-4o") for b in router.candidates("openai/gpt-4o")}
    assert sent == {"oa": "gpt-4o", "or": "openai/gpt-4o"}
    assert router.backends[2].wire_model("openrouter/meta-llama/llama-3.3-70b-instruct") == (
        "meta-llama/llama-3.3-70b-instruct"
    )
    with pytest.raises(NoRouteError) as raised:
        await router.execute(prompt="x", model="qwen2.5")
    assert raised.value.data == {"model": "qwen2.5", "backends": ["oa", "an", "or", "ol"]}


async def test_round_robin_spreads_evenly_over_the_healthy_candidates() -> None:
    a, b, c = Scripted("a"), Scripted("b"), Scripted("c")
    router = make_router(a, b, c, strategy="round-robin", retries=1)
    for i in range(30):
        await router.execute(prompt=f"p{i}", model="m")
    assert [len(p.calls) for p in (a, b, c)] == [10, 10, 10]
    # b refuses one call with a long Retry-After: that call moves on to c, and b is left out after it.
    b.outcomes.append(fail(OverloadedError, 503, retry_after=1000.0))
    await router.execute(prompt="to a", model="m")
    moved = await router.execute(prompt="to b", model="m")
    assert (moved.backend, moved.attempts) == ("c", 2)
    before = Counter({"a": len(a.calls), "c": len(c.calls)})
    for i in range(20):
        await router.execute(prompt=f"q{i}", model="m")
    assert Counter({"a": len(a.calls), "c": len(c.calls)}) - before == {"a": 10, "c": 10}
    assert len(b.calls) == 11
    assert [h.state for h in router.health()] == ["healthy", "cooling_down", "healthy"]


async def test_least_loaded_fills_backends_in_proportion_to_max_concurrent() -> None:
    a, b = Scripted("a"), Scripted("b")
    gate = anyio.Event()
    a.gate = b.gate = gate
    router = make_router(
        a, b, strategy="least-loaded", backends={"a": {"max_concurrent": 4}, "b": {"max_concurrent": 2}}
    )
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(router.execute, ExecuteParams(prompt=f"p{i}", model="m"))
                await wait_until(lambda n=i + 1: a.in_flight + b.in_flight == n)  # type: ignore[misc]
            assert (a.in_flight, b.in_flight) == (4, 2)
            gate.set()
    assert (a.max_in_flight, b.max_in_flight) == (4, 2)


async def test_a_per_request_strategy_overrides_the_configured_one() -> None:
    a, b = Scripted("a"), Scripted("b")
    router = make_router(a, b, strategy="failover")
    for i in range(4):
        await router.execute(prompt=f"p{i}", model="m", strategy="round-robin")
    assert (len(a.calls), len(b.calls)) == (2, 2)
    await router.execute(prompt="x", model="m")
    assert (len(a.calls), len(b.calls)) == (3, 2)


@pytest.mark.parametrize(
    "outcome",
    [
        fail(AuthError, 401),
        fail(BadRequestError, 400),
        fail(ServerError, 500, should_retry=False),
    ],
    ids=["auth", "bad_request", "500 with x-should-retry false"],
)
async def test_an_error_that_is_not_retryable_is_answered_after_one_attempt(outcome: object) -> None:
    a, b = Scripted("a", outcome), Scripted("b")  # type: ignore[arg-type]
    router = make_router(a, b, retries=3)
    with pytest.raises((AuthError, BadRequestError, ServerError)) as raised:
        await router.execute(prompt="x", model="m")
    assert not isinstance(raised.value, BackendError)
    assert (len(a.calls), len(b.calls)) == (1, 0)


async def test_x_should_retry_true_makes_a_bad_request_retryable() -> None:
    a, b = Scripted("a", fail(BadRequestError, 400, should_retry=True)), Scripted("b")
    router = make_router(a, b, retries=1)
    assert (await router.execute(prompt="x", model="m")).backend == "b"


async def test_when_every_attempt_fails_the_error_lists_each_attempt() -> None:
    a, b = Scripted("a", default=E500), Scripted("b", default=fail(RateLimitedError, 429))
    router = make_router(a, b, retries=2)
    with pytest.raises(BackendError) as raised:
        await router.execute(prompt="x", model="m")
    data = raised.value.to_data()
    assert data["type"] == "backend_error"
    assert [(x["backend"], x["type"], x["status"]) for x in data["attempts"]] == [
        ("a", "server_error", 500),
        ("b", "rate_limited", 429),
        ("a", "server_error", 500),
    ]
    assert data["last_type"] == "server_error"
    assert all(x["elapsed_ms"] >= 0 for x in data["attempts"])


async def test_retries_zero_answers_the_first_error_itself() -> None:
    a, b = Scripted("a", E500), Scripted("b")
    router = make_router(a, b, retries=0)
    with pytest.raises(ServerError) as raised:
        await router.execute(prompt="x", model="m")
    assert raised.value.data["status"] == 500
    assert len(b.calls) == 0


async def test_a_429_moves_the_retry_to_another_key_of_the_same_backend_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_KEY_A", "test-key-aaaaaaaa")
    monkeypatch.setenv("LLM_RPC_TEST_KEY_B", "test-key-bbbbbbbb")
    keys = {"api_key_envs": ["LLM_RPC_TEST_KEY_A", "LLM_RPC_TEST_KEY_B"]}
    a, b = Scripted("a", fail(RateLimitedError, 429)), Scripted("b")
    router = make_router(a, b, retries=3, backends={"a": keys})
    result = await router.execute(prompt="x", model="m")
    assert (result.backend, result.attempts) == ("a", 2)
    assert [c.api_key for c in a.calls] == ["test-key-aaaaaaaa", "test-key-bbbbbbbb"]
    assert b.calls == []


async def test_a_5xx_moves_on_to_the_next_backend_not_to_another_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_KEY_A", "test-key-aaaaaaaa")
    monkeypatch.setenv("LLM_RPC_TEST_KEY_B", "test-key-bbbbbbbb")
    keys = {"api_key_envs": ["LLM_RPC_TEST_KEY_A", "LLM_RPC_TEST_KEY_B"]}
    a, b = Scripted("a", E500), Scripted("b")
    router = make_router(a, b, retries=3, backends={"a": keys})
    assert (await router.execute(prompt="x", model="m")).backend == "b"
    assert len(a.calls) == 1


async def test_keys_take_turns_and_a_retry_after_on_one_key_leaves_the_others_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LLM_RPC_TEST_KEY_A", "test-key-aaaaaaaa")
    monkeypatch.setenv("LLM_RPC_TEST_KEY_B", "test-key-bbbbbbbb")
    keys = {"api_key_envs": ["LLM_RPC_TEST_KEY_A", "LLM_RPC_TEST_KEY_B"]}
    a = Scripted("a", None, fail(RateLimitedError, 429, retry_after=1000.0))
    router = make_router(a, retries=3, backends={"a": keys})
    for i in range(5):
        await router.execute(prompt=f"p{i}", model="m")
    used = [c.api_key for c in a.calls]
    # A, then B (429, blocked for 1000 s) → A again at once; from then on only A.
    assert used == ["test-key-aaaaaaaa", "test-key-bbbbbbbb"] + ["test-key-aaaaaaaa"] * 4
    (health,) = router.health()
    assert health.state == "healthy"


async def test_a_single_key_is_left_to_the_provider() -> None:
    a = Scripted("a")
    router = make_router(a)
    await router.execute(prompt="x", model="m")
    assert a.calls[0].api_key is None
