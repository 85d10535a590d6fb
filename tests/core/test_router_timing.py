"""Time in the router: Retry-After, backoff, the deadline, cooldowns and probes, minute windows, queues.

Every test runs on trio's ``MockClock`` with ``autojump_threshold=0``: whenever every task is waiting,
the clock jumps to the next deadline. So a 60-second rate window or a 10-second cooldown costs no real
time, and call times are exact, which lets the tests assert them.
"""

from __future__ import annotations

import itertools
from typing import Any

import anyio
import pytest
import trio.testing

from llm_rpc.errors import (
    BackendError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    UpstreamTimeoutError,
)
from llm_rpc.types import ExecuteResult, Usage
from tests.core._scripted import Scripted, fail, make_router

pytestmark = pytest.mark.anyio

E500 = fail(ServerError, 500)


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, Any]]:
    return "trio", {"clock": trio.testing.MockClock(autojump_threshold=0)}


def since(start: float, times: list[float]) -> list[float]:
    return [round(t - start, 6) for t in times]


async def staggered(router: Any, n: int, **params: Any) -> list[ExecuteResult | Exception]:
    """``n`` calls started 1 ms apart (so their order of arrival is known), results in that order."""
    results: list[ExecuteResult | Exception] = [RuntimeError("not run")] * n

    async def one(i: int) -> None:
        await anyio.sleep(0.001 * i)
        try:
            results[i] = await router.execute(prompt=f"p{i}", model="m", **params)
        except Exception as exc:
            results[i] = exc

    async with anyio.create_task_group() as tg:
        for i in range(n):
            tg.start_soon(one, i)
    return results


# -- Retry-After and backoff --------------------------------------------------------------------------


async def test_a_retry_after_keeps_every_request_off_that_backend_until_it_ends() -> None:
    a = Scripted("a", fail(RateLimitedError, 429, retry_after=2.0), latency=0.5)
    router = make_router(a, retries=3, retry_base_delay=0.1, retry_max_delay=0.2)
    start = anyio.current_time()
    results = []

    async def call(after: float) -> None:
        await anyio.sleep(after)
        results.append(await router.execute(prompt=f"at {after}", model="m"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0.0)
        tg.start_soon(call, 1.0)  # arrives while a is blocked
    # 0: the 429 (answered at 0.5). Nothing until 2.5; then exactly one probe, then the waiting call.
    assert since(start, a.times) == [0.0, 2.5, 3.0]
    assert a.max_in_flight == 1
    assert sorted(r.attempts for r in results) == [1, 2]


async def test_a_retry_after_is_a_floor_under_the_backoff() -> None:
    a = Scripted("a", fail(RateLimitedError, 429, retry_after=5.0))
    router = make_router(a, retries=1, retry_base_delay=1.0, retry_max_delay=2.0)
    start = anyio.current_time()
    result = await router.execute(prompt="x", model="m")
    assert since(start, a.times) == [0.0, 5.0]
    assert result.attempts == 2


@pytest.mark.parametrize("seed", range(8))
async def test_backoff_delays_stay_between_base_and_max_and_grow(seed: int) -> None:
    a = Scripted("a", E500, E500, E500, E500)
    router = make_router(a, retries=4, retry_base_delay=1.0, retry_max_delay=3.0, cooldown_after_failures=99, seed=seed)
    result = await router.execute(prompt="x", model="m")
    assert result.attempts == 5
    times = a.times
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert 1.0 <= gaps[0] <= 2.0
    for gap in gaps[1:]:
        assert 1.0 <= gap <= 3.0


async def test_backoff_is_jittered() -> None:
    firsts = set()
    for seed in range(6):
        a = Scripted("a", E500)
        router = make_router(a, retries=1, retry_base_delay=1.0, retry_max_delay=10.0, seed=seed)
        await router.execute(prompt="x", model="m")
        firsts.add(round(a.times[1] - a.times[0], 6))
    assert len(firsts) > 1


async def test_failover_moves_to_the_next_candidate_at_once() -> None:
    a, b = Scripted("a", E500), Scripted("b")
    router = make_router(a, b, retries=1, retry_base_delay=5.0, retry_max_delay=5.0)
    start = anyio.current_time()
    await router.execute(prompt="x", model="m")
    assert since(start, a.times + b.times) == [0.0, 0.0]


# -- the deadline ---------------------------------------------------------------------------------------


async def test_no_retry_starts_whose_wait_cannot_end_before_the_deadline() -> None:
    a = Scripted("a", default=E500)
    router = make_router(a, retries=10, retry_base_delay=1.0, retry_max_delay=1.0, cooldown_after_failures=99)
    start = anyio.current_time()
    with pytest.raises(BackendError) as raised:
        await router.execute(prompt="x", model="m", config={"timeout_seconds": 2.5})
    assert since(start, a.times) == [0.0, 1.0, 2.0]
    assert anyio.current_time() - start == pytest.approx(2.0)  # gave up without waiting for nothing
    assert [x["type"] for x in raised.value.data["attempts"]] == ["server_error"] * 3


async def test_a_retry_after_past_the_deadline_answers_at_once_with_the_error() -> None:
    a = Scripted("a", fail(RateLimitedError, 429, retry_after=30.0))
    router = make_router(a, retries=3)
    start = anyio.current_time()
    with pytest.raises(RateLimitedError) as raised:
        await router.execute(prompt="x", model="m", config={"timeout_seconds": 5})
    assert anyio.current_time() == start
    assert raised.value.data["retry_after"] == 30.0
    assert "scope" not in raised.value.data  # the upstream's own 429


async def test_the_deadline_expiring_during_an_attempt_answers_timeout() -> None:
    a = Scripted("a", latency=100.0)
    router = make_router(a, retries=3)
    start = anyio.current_time()
    with pytest.raises(RequestTimeoutError) as raised:
        await router.execute(prompt="x", model="m", config={"timeout_seconds": 3})
    assert anyio.current_time() - start == pytest.approx(3.0)
    data = raised.value.to_data()
    assert (data["type"], data["timeout_seconds"], data["backend"]) == ("timeout", 3, "a")
    assert [x["type"] for x in data["attempts"]] == ["timeout"]


async def test_timeout_wins_over_the_attempts_made_before_it() -> None:
    a, b = Scripted("a", E500), Scripted("b", latency=100.0)
    router = make_router(a, b, retries=3)
    with pytest.raises(RequestTimeoutError) as raised:
        await router.execute(prompt="x", model="m", config={"timeout_seconds": 3})
    assert [x["backend"] for x in raised.value.data["attempts"]] == ["a", "b"]


async def test_a_backend_timeout_ends_the_attempt_and_the_call_moves_on() -> None:
    a, b = Scripted("a", latency=100.0), Scripted("b")
    router = make_router(a, b, retries=1, backends={"a": {"timeout_seconds": 2.0}})
    start = anyio.current_time()
    result = await router.execute(prompt="x", model="m", config={"timeout_seconds": 30})
    assert (result.backend, result.attempts) == ("b", 2)
    assert since(start, b.times) == [2.0]
    assert a.calls[0].timeout == 2.0
    assert b.calls[0].timeout == pytest.approx(28.0)


async def test_one_attempt_that_times_out_on_its_backend_is_its_own_error() -> None:
    a = Scripted("a", latency=100.0)
    router = make_router(a, retries=0, backends={"a": {"timeout_seconds": 2.0}})
    with pytest.raises(UpstreamTimeoutError):
        await router.execute(prompt="x", model="m", config={"timeout_seconds": 30})


# -- cooldowns and probes -------------------------------------------------------------------------------


async def test_a_failing_backend_is_skipped_for_its_cooldown_then_one_probe_brings_it_back() -> None:
    a, b = Scripted("a", E500, E500), Scripted("b")
    router = make_router(a, b, retries=0, cooldown_after_failures=2, cooldown_seconds=10.0)
    for _ in range(2):
        with pytest.raises(ServerError):
            await router.execute(prompt="x", model="m")
    assert (await router.execute(prompt="x", model="m")).backend == "b"
    health = {h.name: h for h in router.health()}
    assert (health["a"].state, health["a"].cooldown_s) == ("cooling_down", 10.0)
    assert health["a"].error_rate > 0
    await anyio.sleep(10)
    assert router.health()[0].state == "probing"
    assert (await router.execute(prompt="x", model="m")).backend == "a"
    assert router.health()[0].state == "healthy"
    assert len(a.calls) == 3


async def test_a_probe_that_fails_starts_another_cooldown() -> None:
    a, b = Scripted("a", default=E500), Scripted("b")
    router = make_router(a, b, retries=0, cooldown_after_failures=1, cooldown_seconds=10.0)
    with pytest.raises(ServerError):
        await router.execute(prompt="x", model="m")
    await anyio.sleep(10)
    with pytest.raises(ServerError):  # the probe
        await router.execute(prompt="x", model="m")
    assert router.health()[0].state == "cooling_down"
    assert (await router.execute(prompt="x", model="m")).backend == "b"
    assert len(a.calls) == 2


async def test_while_the_probe_is_in_flight_other_calls_go_elsewhere() -> None:
    a, b = Scripted("a", E500, latency=1.0), Scripted("b", latency=1.0)
    router = make_router(a, b, retries=0, cooldown_after_failures=1, cooldown_seconds=5.0)
    with pytest.raises(ServerError):
        await router.execute(prompt="x", model="m")
    await anyio.sleep(10)
    results = await staggered(router, 3)
    assert [r.backend for r in results if isinstance(r, ExecuteResult)] == ["a", "b", "b"]
    assert a.max_in_flight == 1


# -- limits ---------------------------------------------------------------------------------------------


async def test_max_concurrent_is_never_exceeded_and_the_queue_is_fifo() -> None:
    a = Scripted("a", latency=1.0)
    router = make_router(a, backends={"a": {"max_concurrent": 3}})
    start = anyio.current_time()
    results = await staggered(router, 10)
    assert all(isinstance(r, ExecuteResult) for r in results)
    assert a.max_in_flight == 3
    assert [c.prompt for c in a.calls] == [f"p{i}" for i in range(10)]
    assert [int(t) for t in since(start, a.times)] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3]


async def test_a_call_queued_for_a_backend_that_starts_cooling_meanwhile_is_not_sent_to_it() -> None:
    a = Scripted("a", E500, latency=1.0)
    router = make_router(
        a, retries=0, cooldown_after_failures=1, cooldown_seconds=10.0, backends={"a": {"max_concurrent": 1}}
    )
    start = anyio.current_time()
    first, second = await staggered(router, 2, config={"timeout_seconds": 30})
    assert isinstance(first, ServerError)
    assert isinstance(second, ExecuteResult)
    # The second call queued for a's slot; when it got it at 1.0, a was cooling down: it waited for the probe.
    assert since(start, a.times) == [0.0, 11.0]


def _max_in_window(times: list[float], amounts: list[int], window: float = 60.0) -> int:
    """The most admitted in any half-open window (t - 60, t] (1 ns of slack for float rounding)."""
    return max(sum(n for s, n in zip(times, amounts, strict=True) if t - window + 1e-9 < s <= t) for t in times)


async def test_the_rpm_window_admits_at_most_the_limit_in_any_minute_in_arrival_order() -> None:
    a = Scripted("a")
    router = make_router(a, backends={"a": {"rate_limit_rpm": 5}})
    start = anyio.current_time()
    results = await staggered(router, 12, config={"timeout_seconds": 300})
    assert all(isinstance(r, ExecuteResult) for r in results)
    times = since(start, a.times)
    assert _max_in_window(times, [1] * 12) == 5
    assert [c.prompt for c in a.calls] == [f"p{i}" for i in range(12)]
    assert [round(t) for t in times] == [0] * 5 + [60] * 5 + [120] * 2


async def test_the_tpm_window_counts_estimates_then_corrects_them_from_real_usage() -> None:
    # Each call is estimated at 4 (one message) + 0 (one char) + 30 (max_tokens) = 34 tokens.
    a = Scripted("a", usage=Usage(prompt_tokens=5, completion_tokens=5, total_tokens=10))
    router = make_router(a, backends={"a": {"rate_limit_tpm": 100}})
    start = anyio.current_time()
    for _ in range(9):
        await router.execute(prompt="x", model="m", config={"max_tokens": 30, "timeout_seconds": 300})
    times = since(start, a.times)
    # 10 real tokens each: 66 + 34 > 100 first happens at the 8th call (7 * 10 + 34 = 104).
    assert times == [0.0] * 7 + [60.0] * 2
    assert _max_in_window(times, [10] * 9) <= 100


async def test_the_tpm_window_holds_with_exact_estimates() -> None:
    a = Scripted("a", usage=Usage(prompt_tokens=4, completion_tokens=30, total_tokens=34))
    router = make_router(a, backends={"a": {"rate_limit_tpm": 100}})
    start = anyio.current_time()
    results = await staggered(router, 7, config={"max_tokens": 30, "timeout_seconds": 600})
    assert all(isinstance(r, ExecuteResult) for r in results)
    times = since(start, a.times)
    assert _max_in_window(times, [34] * 7) <= 100
    assert [round(t) for t in times] == [0, 0, 60, 60, 120, 120, 180]


async def test_a_wait_for_a_limit_that_would_pass_the_deadline_fails_at_once_without_a_call() -> None:
    a = Scripted("a")
    router = make_router(a, backends={"a": {"rate_limit_rpm": 1}})
    await router.execute(prompt="x", model="m")
    start = anyio.current_time()
    with pytest.raises(RateLimitedError) as raised:
        await router.execute(prompt="y", model="m", config={"timeout_seconds": 5})
    assert anyio.current_time() == start
    data = raised.value.to_data()
    assert (data["scope"], data["backend"], data["limit"], data["retry_after"]) == ("local", "a", "rate_limit_rpm", 60)
    assert len(a.calls) == 1


async def test_a_backend_that_can_start_now_is_preferred_over_waiting_for_limits() -> None:
    a, b = Scripted("a"), Scripted("b")
    router = make_router(a, b, backends={"a": {"rate_limit_rpm": 1}})
    start = anyio.current_time()
    assert [(await router.execute(prompt=f"p{i}", model="m")).backend for i in range(3)] == ["a", "b", "b"]
    assert anyio.current_time() == start


async def test_a_call_whose_every_backend_is_cooling_past_its_deadline_is_refused_locally() -> None:
    a = Scripted("a", fail(RateLimitedError, 429, retry_after=100.0))
    router = make_router(a, retries=0)
    with pytest.raises(RateLimitedError):
        await router.execute(prompt="x", model="m")
    with pytest.raises(RateLimitedError) as raised:
        await router.execute(prompt="y", model="m", config={"timeout_seconds": 10})
    assert raised.value.data["scope"] == "local"
    assert raised.value.data["retry_after"] == 100.0
    assert len(a.calls) == 1


async def test_a_call_waits_for_a_cooldown_that_ends_before_its_deadline() -> None:
    a = Scripted("a", fail(RateLimitedError, 429, retry_after=3.0))
    router = make_router(a, retries=0)
    with pytest.raises(RateLimitedError):
        await router.execute(prompt="x", model="m")
    start = anyio.current_time()
    result = await router.execute(prompt="y", model="m", config={"timeout_seconds": 10})
    assert result.attempts == 1
    assert since(start, a.times[1:]) == [3.0]


# -- latency ----------------------------------------------------------------------------------------------


async def _latency_run() -> list[str]:
    a, b, c = Scripted("a", latency=0.3), Scripted("b", latency=0.1), Scripted("c", latency=0.2)
    router = make_router(a, b, c, strategy="latency", latency_exploration=4)
    return [(await router.execute(prompt=f"p{i}", model="m")).backend for i in range(16)]


async def test_latency_prefers_the_fastest_and_keeps_exploring_deterministically() -> None:
    first = await _latency_run()
    assert first == await _latency_run()
    assert first[:3] == ["a", "b", "c"]  # each measured once
    assert first.count("b") >= 10
    assert {"a", "c"} <= set(first[3:])  # exploration revisits the slower ones


async def test_latency_notices_a_backend_that_got_faster() -> None:
    a, b = Scripted("a", latency=0.5), Scripted("b", latency=0.2)
    router = make_router(a, b, strategy="latency", latency_exploration=3)
    for i in range(6):
        await router.execute(prompt=f"p{i}", model="m")
    a.latency = 0.05
    chosen = [(await router.execute(prompt=f"q{i}", model="m")).backend for i in range(24)]
    # Exploration every 3rd choice measures a again until its average drops below b's; then a
    # takes every choice but the explorations, which now go to b.
    assert chosen[:6].count("b") == 4
    assert chosen[-6:].count("a") == 4
