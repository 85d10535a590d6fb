"""The pieces under the router: FIFO slots, minute windows, the token estimate, backoff, the final error."""

from __future__ import annotations

import random

import anyio
import pytest

from llm_rpc import errors
from llm_rpc.core._retry import Attempt, backoff_delay, final_error
from llm_rpc.core.ratelimit import DEFAULT_COMPLETION_TOKENS, MinuteWindow, Slots, estimate_tokens
from llm_rpc.types import Message
from tests.core._scripted import wait_until

# -- Slots ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_slots_hand_a_released_slot_to_the_oldest_waiter() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    order: list[str] = []

    async def waiter(name: str) -> None:
        await slots.acquire()
        order.append(name)
        slots.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i, name in enumerate(("first", "second", "third")):
                tg.start_soon(waiter, name)
                await wait_until(lambda n=i + 1: slots.waiting == n)  # type: ignore[misc]
            assert not slots.try_acquire()  # a newcomer never jumps the queue
            slots.release()
    assert order == ["first", "second", "third"]
    assert slots.used == 0


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_its_slot_arrives_passes_the_slot_on() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    scopes: dict[str, anyio.CancelScope] = {}
    got: list[str] = []

    async def waiter(name: str) -> None:
        with anyio.CancelScope() as scope:
            scopes[name] = scope
            await slots.acquire()
            try:
                got.append(name)
                if name == "b":
                    await anyio.sleep_forever()
            finally:
                slots.release()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter, "b")
            await wait_until(lambda: slots.waiting == 1)
            tg.start_soon(waiter, "c")
            await wait_until(lambda: slots.waiting == 2)
            slots.release()  # handed to b...
            scopes["b"].cancel()  # ...which is cancelled before (or just after) it resumes
    assert got[-1] == "c"
    assert slots.used == 0
    assert slots.waiting == 0


@pytest.mark.anyio
async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    slots = Slots(1)
    assert slots.try_acquire()
    with anyio.move_on_after(0.01):
        await slots.acquire()
    assert slots.waiting == 0
    slots.release()
    assert slots.free()


# -- minute windows ------------------------------------------------------------------------------------


def test_a_window_admits_up_to_its_limit_then_names_the_time_the_oldest_leaves() -> None:
    w = MinuteWindow(3)
    for t in (0.0, 10.0, 20.0):
        assert w.fit_time(1, t) == t
        w.reserve(1, t)
    assert not w.fits_now(1, 30.0)
    assert w.fit_time(1, 30.0) == 60.0
    assert w.fit_time(2, 30.0) == 70.0
    assert w.fit_time(1, 65.0) == 65.0  # the first entry has left


def test_reservations_queue_in_arrival_order() -> None:
    w = MinuteWindow(2)
    w.reserve(1, 0.0)
    w.reserve(1, 0.0)
    first = w.fit_time(1, 1.0)
    w.reserve(1, first)
    assert first == 60.0
    # Another request waits behind the reserved one: it is not admitted now, and not before it.
    assert not w.fits_now(1, 1.0)
    assert w.fit_time(1, 1.0) == 60.0


def test_a_correction_frees_or_charges_the_difference_and_cancelling_frees_all() -> None:
    w = MinuteWindow(100)
    entry = w.reserve(80, 0.0)
    assert w.fit_time(30, 1.0) == 60.0
    w.correct(entry, 20, 1.0)
    assert w.fit_time(30, 1.0) == 1.0
    w.correct(entry, 0, 1.0)
    assert w.used == 0
    late = w.reserve(50, 2.0)
    w.correct(late, 10, 70.0)  # already left the window: nothing to change
    assert w.used == 0


def test_a_request_larger_than_the_limit_waits_for_an_empty_window() -> None:
    w = MinuteWindow(10)
    w.reserve(4, 0.0)
    assert w.fit_time(50, 1.0) == 60.0
    w.reserve(50, 60.0)  # counted as the whole limit
    assert w.fit_time(1, 61.0) == 120.0
    assert w.used == 10


def test_the_token_estimate_is_chars_over_four_plus_four_per_message_plus_max_tokens() -> None:
    messages = [
        Message(role="system", content="x" * 40),
        Message(role="user", content=[{"type": "text", "text": "abcd"}]),
    ]
    assert estimate_tokens(messages, 100) == 10 + 1 + 2 * 4 + 100
    assert estimate_tokens(messages, None) == 19 + DEFAULT_COMPLETION_TOKENS


# -- backoff and the final error ---------------------------------------------------------------------


def test_backoff_stays_within_base_and_the_doubling_cap() -> None:
    rng = random.Random(1)
    for n in range(1, 12):
        for _ in range(50):
            delay = backoff_delay(n, 0.5, 10.0, rng)
            assert 0.5 <= delay <= min(10.0, 0.5 * 2**n)
    assert backoff_delay(5000, 1.0, 60.0, rng) <= 60.0
    assert backoff_delay(3, 0.0, 0.0, rng) == 0.0


def test_one_attempt_answers_its_own_error_and_several_answer_backend_error() -> None:
    limited = errors.RateLimitedError("429", backend="a", status=429, retry_after=2.0)
    broken = errors.ServerError("500", backend="b", status=500)
    assert final_error([Attempt("a", limited, 12.3456)]) is limited
    both = final_error([Attempt("a", limited, 12.3456), Attempt("b", broken, 1.0)])
    assert both.to_data() == {
        "type": "backend_error",
        "attempts": [
            {"backend": "a", "type": "rate_limited", "status": 429, "elapsed_ms": 12.346, "retry_after": 2.0},
            {"backend": "b", "type": "server_error", "status": 500, "elapsed_ms": 1.0, "retry_after": None},
        ],
        "last_type": "server_error",
    }
