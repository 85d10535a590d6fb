"""The router over real HTTP: loopback upstreams (tests/upstreams) that inject faults on command.

``openai-compatible`` backends point at the loopback servers, so every fault is what the real provider
code makes of a real response: a 429 with ``Retry-After``, 500, 503, a hang, a reset. These run on
real time (the upstream is a thread), so waits are kept short.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import pytest

from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.errors import AuthError
from llm_rpc.types import ExecuteResult
from tests.upstreams import openai_wire as wire
from tests.upstreams._server import Reply, Upstream, UpstreamRequest

pytestmark = pytest.mark.anyio

KEY_ENV = "LLM_RPC_TEST_CANARY_KEY"
OK = Reply.json(wire.completion("fine"))


class Script:
    """A handler answering each request with the next reply (then ``default``), noting arrival times."""

    def __init__(self, *replies: Reply, default: Reply = OK) -> None:
        self.replies = list(replies)
        self.default = default
        self.arrivals: list[float] = []
        self._lock = threading.Lock()

    def __call__(self, request: UpstreamRequest) -> Reply:
        with self._lock:
            self.arrivals.append(time.monotonic())
            return self.replies.pop(0) if self.replies else self.default


@pytest.fixture
def upstreams(canary_key: str) -> Iterator[Callable[[Script], Upstream]]:
    """Start loopback upstreams on demand; all stop at the end of the test."""
    started: list[Upstream] = []

    def start(script: Script) -> Upstream:
        up = Upstream(script).__enter__()
        started.append(up)
        return up

    yield start
    for up in started:
        up.__exit__(None, None, None)


def http_router(ups: dict[str, Upstream], backends: dict[str, dict[str, Any]] | None = None, **settings: Any) -> Router:
    settings.setdefault("retry_base_delay", 0.01)
    settings.setdefault("retry_max_delay", 0.02)
    extra = backends or {}
    return Router(
        Config(
            router=RouterSettings(**settings),
            backends=[
                BackendConfig(
                    provider="openai-compatible",
                    name=name,
                    base_url=up.url + "/v1",
                    api_key_env=KEY_ENV,
                    priority=i + 1,
                    **extra.get(name, {}),
                )
                for i, (name, up) in enumerate(ups.items())
            ],
        )
    )


async def test_failover_over_http_through_500_503_reset_and_hang(upstreams: Callable[[Script], Upstream]) -> None:
    s500 = Script(default=Reply.json(wire.error("boom", "server_error"), status=500))
    s503 = Script(default=Reply.json(wire.error("overloaded", "server_error"), status=503))
    reset = Script(default=Reply(reset=True))
    hang = Script(default=Reply(hang=5))
    ok = Script()
    ups = {name: upstreams(s) for name, s in (("a", s500), ("b", s503), ("c", reset), ("d", hang), ("e", ok))}
    async with http_router(ups, backends={"d": {"timeout_seconds": 0.3}}, retries=4) as router:
        with anyio.fail_after(10):
            result = await router.execute(prompt="hi", model="gpt-4o-mini")
    assert (result.backend, result.attempts, result.content) == ("e", 5, "fine")
    assert [len(s.arrivals) for s in (s500, s503, reset, hang, ok)] == [1, 1, 1, 1, 1]
    order = [s.arrivals[0] for s in (s500, s503, reset, hang, ok)]
    assert order == sorted(order)


async def test_retry_after_from_a_real_429_is_honoured(upstreams: Callable[[Script], Upstream]) -> None:
    limited = Script(
        Reply.json(wire.error(wire.RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"), 429, {"retry-after": "1"})
    )
    up = upstreams(limited)
    async with http_router({"a": up}, retries=2) as router:
        with anyio.fail_after(10):
            result = await router.execute(prompt="hi", model="gpt-4o-mini")
    assert result.attempts == 2
    first, second = limited.arrivals
    assert second - first >= 1.0


async def test_max_concurrent_is_never_exceeded_at_the_upstream(upstreams: Callable[[Script], Upstream]) -> None:
    slow = Script(default=Reply(status=200, body=wire.completion("slow"), delay=0.05))
    up = upstreams(slow)
    results: list[ExecuteResult] = []
    async with http_router({"a": up}, backends={"a": {"max_concurrent": 2}}) as router:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for i in range(10):

                    async def one(i: int = i) -> None:
                        results.append(await router.execute(prompt=f"p{i}", model="gpt-4o-mini"))

                    tg.start_soon(one)
    assert len(results) == 10
    assert up.max_in_flight == 2
    assert len(up.requests) == 10


async def test_a_401_is_not_retried_over_http(upstreams: Callable[[Script], Upstream]) -> None:
    bad = Script(default=Reply.json(wire.error(wire.bad_key_message("sk-...abcd"), "invalid_request_error"), 401))
    good = Script()
    ups = {"a": upstreams(bad), "b": upstreams(good)}
    async with http_router(ups, retries=3) as router:
        with anyio.fail_after(10), pytest.raises(AuthError) as raised:
            await router.execute(prompt="hi", model="gpt-4o-mini")
    assert raised.value.data["status"] == 401
    assert (len(bad.arrivals), len(good.arrivals)) == (1, 0)


async def test_a_slow_trickle_is_cut_by_the_backends_timeout_and_the_call_moves_on(
    upstreams: Callable[[Script], Upstream],
) -> None:
    # Each chunk arrives well within a read timeout, but the whole answer would take 2 s.
    body = json.dumps(wire.completion("slow")).encode()
    pieces: list[bytes | str] = [body[i : i + 16] for i in range(0, len(body), 16)]
    trickle = Script(default=Reply(chunks=pieces, chunk_delay=2.0 / len(pieces), content_type="application/json"))
    ok = Script()
    ups = {"slow": upstreams(trickle), "fast": upstreams(ok)}
    async with http_router(ups, backends={"slow": {"timeout_seconds": 0.4}}, retries=1) as router:
        started = time.monotonic()
        with anyio.fail_after(10):
            result = await router.execute(prompt="hi", model="gpt-4o-mini")
    assert (result.backend, result.attempts) == ("fast", 2)
    assert time.monotonic() - started < 1.5
