"""Several keys per backend over real HTTP (issue 4 item 7): a 429 moves the retry to another key.

A backend with ``api_key_envs = [A, B]`` points at a loopback upstream that judges each request by its
``Authorization`` header, so what is checked is what the real OpenAI provider sent: a 429 (with
Retry-After) on key A moves the retry to key B of the same backend at once, A stays unused while its
Retry-After runs, and a 5xx is the backend's fault, not the key's: it moves on to the next backend.
No key value may show in a result, an error or the logs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import msgspec
import pytest

from llm_rpc import Router
from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.errors import LLMError, RateLimitedError
from tests.upstreams import openai_wire as wire
from tests.upstreams._server import Reply, Upstream, UpstreamRequest

pytestmark = pytest.mark.anyio

ENV_A = "LLM_RPC_TEST_ROTATION_KEY_A"
ENV_B = "LLM_RPC_TEST_ROTATION_KEY_B"
KEY_A = "sk-rotation-canary-a-5e8c1f3a7b9d2e4f6a8c0b1d3e5f7a9c"
KEY_B = "sk-rotation-canary-b-0f2d4b6a8c1e3f5a7b9d2c4e6a8f0b1d"
OWN_ENV = "LLM_RPC_TEST_CANARY_KEY"  # the second backend's single key (the ``canary_key`` fixture)


class ByKey:
    """An upstream handler answering by the key in ``Authorization``, noting each request's key and time."""

    def __init__(self, on_a: Reply | None = None, on_b: Reply | None = None) -> None:
        self.on = {KEY_A: on_a, KEY_B: on_b}
        self.seen: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def __call__(self, request: UpstreamRequest) -> Reply:
        key = request.headers.get("authorization", "").removeprefix("Bearer ")
        with self._lock:
            self.seen.append((key, time.monotonic()))
        return self.on.get(key) or Reply.json(wire.completion("fine"))

    @property
    def keys(self) -> list[str]:
        return [key for key, _ in self.seen]


def rate_limited(key: str) -> Reply:
    """OpenAI's 429, quoting the key (as a careless proxy might) to check that it is scrubbed."""
    message = f"{wire.RATE_LIMIT_MESSAGE} (key {key})"
    return Reply.json(wire.error(message, "requests", "rate_limit_exceeded"), 429, {"retry-after": "30"})


def server_error(key: str) -> Reply:
    return Reply.json(wire.error(f"The server had an error processing your request (key {key}).", "server_error"), 500)


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch, canary_key: str, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Both keys set; at the end, no key (nor the second backend's) reached the logs."""
    monkeypatch.setenv(ENV_A, KEY_A)
    monkeypatch.setenv(ENV_B, KEY_B)
    caplog.set_level(logging.DEBUG)
    yield
    for key in (KEY_A, KEY_B, canary_key):
        assert key not in caplog.text


@pytest.fixture
def upstreams() -> Iterator[Callable[[ByKey], Upstream]]:
    started: list[Upstream] = []

    def start(handler: ByKey) -> Upstream:
        up = Upstream(handler).__enter__()
        started.append(up)
        return up

    yield start
    for up in started:
        up.__exit__(None, None, None)


def router(keyed: Upstream, other: Upstream | None = None, **settings: Any) -> Router:
    """Backend ``keyed`` (two keys) first; ``other`` (one key), when given, second."""
    settings.setdefault("retry_base_delay", 0.01)
    settings.setdefault("retry_max_delay", 0.02)
    backends = [
        BackendConfig(
            provider="openai-compatible",
            name="keyed",
            base_url=keyed.url + "/v1",
            api_key_envs=[ENV_A, ENV_B],
            priority=1,
        )
    ]
    if other is not None:
        backends.append(
            BackendConfig(
                provider="openai-compatible", name="other", base_url=other.url + "/v1", api_key_env=OWN_ENV, priority=2
            )
        )
    return Router(Config(router=RouterSettings(**settings), backends=backends))


def assert_no_key(*things: object) -> None:
    for thing in things:
        text = thing if isinstance(thing, str) else f"{thing!s} {thing!r}"
        for key in (KEY_A, KEY_B):
            assert key not in text


def result_text(result: Any) -> str:
    return msgspec.json.encode(result).decode()


def error_text(err: LLMError) -> str:
    return " ".join((str(err), repr(err), err.message, json.dumps(err.to_data())))


@pytest.mark.usefixtures("keys")
async def test_a_429_on_one_key_moves_the_retry_to_the_other_key_at_once_and_spares_it_after(
    upstreams: Callable[[ByKey], Upstream],
) -> None:
    handler = ByKey(on_a=rate_limited(KEY_A))
    up = upstreams(handler)
    # A backoff of 1 s at least: the move to key B is not a backoff, it is at once.
    async with router(up, retries=3, retry_base_delay=1.0, retry_max_delay=1.0) as r:
        with anyio.fail_after(10):
            result = await r.execute(prompt="hi", model="gpt-4o-mini")
            assert (result.backend, result.attempts, result.content) == ("keyed", 2, "fine")
            assert handler.keys == [KEY_A, KEY_B]
            (_, first), (_, second) = handler.seen
            assert second - first < 1.0
            # Key A's Retry-After (30 s) runs: the following calls all go to key B, with no retry.
            later = [await r.execute(prompt=f"again {i}", model="gpt-4o-mini") for i in range(4)]
        (health,) = r.health()
    assert [x.attempts for x in later] == [1, 1, 1, 1]
    assert handler.keys == [KEY_A, KEY_B] + [KEY_B] * 4
    assert health.state == "healthy"
    assert_no_key(*(result_text(x) for x in (result, *later)), result_text(health))


@pytest.mark.usefixtures("keys")
async def test_a_5xx_on_one_key_moves_on_to_the_next_backend_not_to_the_other_key(
    upstreams: Callable[[ByKey], Upstream], canary_key: str
) -> None:
    keyed = ByKey(on_a=server_error(KEY_A), on_b=server_error(KEY_B))
    other = ByKey()
    async with router(upstreams(keyed), upstreams(other), retries=3) as r:
        with anyio.fail_after(10):
            result = await r.execute(prompt="hi", model="gpt-4o-mini")
    assert (result.backend, result.attempts, result.content) == ("other", 2, "fine")
    assert keyed.keys == [KEY_A]  # key B of the same backend was not tried
    assert other.keys == [canary_key]
    assert_no_key(result_text(result))


@pytest.mark.usefixtures("keys")
async def test_a_5xx_on_a_lone_backend_is_retried_after_a_backoff_not_moved_to_another_key_at_once(
    upstreams: Callable[[ByKey], Upstream],
) -> None:
    handler = ByKey(on_a=server_error(KEY_A))
    up = upstreams(handler)
    async with router(up, retries=1, retry_base_delay=0.3, retry_max_delay=0.3) as r:
        with anyio.fail_after(10):
            result = await r.execute(prompt="hi", model="gpt-4o-mini")
    assert (result.backend, result.attempts) == ("keyed", 2)
    (_, first), (_, second) = handler.seen
    # No next backend: the retry is a new round after the backoff (the keys then take their turn).
    assert second - first >= 0.3
    assert_no_key(result_text(result))


@pytest.mark.usefixtures("keys")
async def test_when_every_key_is_rate_limited_the_call_moves_to_the_next_backend(
    upstreams: Callable[[ByKey], Upstream], canary_key: str
) -> None:
    keyed = ByKey(on_a=rate_limited(KEY_A), on_b=rate_limited(KEY_B))
    other = ByKey()
    async with router(upstreams(keyed), upstreams(other), retries=3) as r:
        with anyio.fail_after(10):
            result = await r.execute(prompt="hi", model="gpt-4o-mini")
            assert (result.backend, result.attempts) == ("other", 3)
            assert keyed.keys == [KEY_A, KEY_B]
            # Both keys wait out their Retry-After, so the backend cools down: the next call skips it.
            again = await r.execute(prompt="again", model="gpt-4o-mini")
        health = {h.name: h for h in r.health()}
    assert (again.backend, again.attempts) == ("other", 1)
    assert len(keyed.seen) == 2
    assert other.keys == [canary_key, canary_key]
    assert health["keyed"].state == "cooling_down"
    assert_no_key(result_text(result), result_text(again), *(result_text(h) for h in health.values()))


@pytest.mark.usefixtures("keys")
async def test_an_error_after_both_keys_quotes_neither(upstreams: Callable[[ByKey], Upstream]) -> None:
    handler = ByKey(on_a=rate_limited(KEY_A), on_b=rate_limited(KEY_B))
    up = upstreams(handler)
    # The next retry would wait 30 s, past the 2 s deadline: the call ends with what it has.
    async with router(up, retries=3, timeout_seconds=2.0) as r:
        with anyio.fail_after(10), pytest.raises(LLMError) as raised:
            await r.execute(prompt="hi", model="gpt-4o-mini")
    err = raised.value
    logging.getLogger("llm_rpc.test").error("failed: %s %r %s", err, err, err.to_data())
    assert handler.keys == [KEY_A, KEY_B]
    attempts = err.data.get("attempts")
    assert attempts is not None
    assert [a["type"] for a in attempts] == ["rate_limited", "rate_limited"]
    assert_no_key(error_text(err))


@pytest.mark.usefixtures("keys")
async def test_a_lone_attempts_error_has_the_upstreams_text_with_the_key_scrubbed(
    upstreams: Callable[[ByKey], Upstream],
) -> None:
    handler = ByKey(on_a=rate_limited(KEY_A))
    async with router(upstreams(handler), retries=0) as r:
        with anyio.fail_after(10), pytest.raises(RateLimitedError) as raised:
            await r.execute(prompt="hi", model="gpt-4o-mini")
    err = raised.value
    logging.getLogger("llm_rpc.test").error("failed: %s %r %s", err, err, err.to_data())
    assert handler.keys == [KEY_A]
    assert (err.data["status"], err.data["retry_after"]) == (429, 30)
    assert "(key ***)" in err.data["provider_message"]
    assert_no_key(error_text(err))
