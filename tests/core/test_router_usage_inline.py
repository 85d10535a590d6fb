"""Usage per agent (in process and over JSON-RPC), and the inline path keeping to the router's rules."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest

from llm_rpc._inprocess import _LocalServer
from llm_rpc.config import BackendConfig, Config, ModelPrice, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.errors import AuthError, BackendError, NoRouteError, RateLimitedError, ServerError
from llm_rpc.methods import build_table, error_mapper
from llm_rpc.protocol import Dispatcher
from llm_rpc.types import ExecuteParams, MockOptions
from tests.core._scripted import Scripted, fail, make_router

pytestmark = pytest.mark.anyio


# -- usage ------------------------------------------------------------------------------------------------


async def test_every_call_is_accounted_to_its_agent_backend_and_model() -> None:
    a, b = Scripted("a", fail(ServerError, 500)), Scripted("b")
    config = Config(
        router=RouterSettings(retry_base_delay=0, retry_max_delay=0),
        backends=[
            BackendConfig(provider="ollama", name="a", priority=1),
            BackendConfig(provider="ollama", name="b", priority=2),
        ],
        models=[ModelPrice(name="m", input=1.0, output=2.0)],
    )
    router = Router(config, providers={"a": a, "b": b})
    await router.execute(prompt="x", model="m", agent_id="planner")  # a fails, b answers
    await router.execute(prompt="y", model="m", agent_id="planner")
    await router.execute(prompt="z", model="other")  # anonymous
    a.outcomes.append(fail(AuthError, 401))
    with pytest.raises(AuthError):
        await router.execute(prompt="w", model="m", agent_id="planner")

    planner = router.get_agent_usage("planner")
    assert (planner.requests, planner.errors) == (3, 1)
    assert (planner.prompt_tokens, planner.completion_tokens, planner.total_tokens) == (10, 10, 20)
    assert planner.cost_usd == pytest.approx(2 * (5 * 1.0 + 5 * 2.0) / 1e6)
    assert msgspec.to_builtins(planner.by_backend) == {
        "a": {"requests": 3, "errors": 2, "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
              "cost_usd": pytest.approx(1.5e-5)},
        "b": {"requests": 1, "errors": 0, "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10,
              "cost_usd": pytest.approx(1.5e-5)},
    }  # fmt: skip
    assert planner.by_model["m"].requests == 3
    assert planner.by_model["m"].errors == 1

    anonymous = router.get_agent_usage(None)
    assert (anonymous.agent_id, anonymous.requests, anonymous.cost_usd) == ("anonymous", 1, 0.0)
    assert set(anonymous.by_model) == {"other"}
    assert set(router.get_all_usage()) == {"planner", "anonymous"}

    assert router.reset_agent_usage("planner") == ["planner"]
    assert router.get_agent_usage("planner").requests == 0
    assert router.reset_agent_usage() == ["anonymous"]
    assert router.get_all_usage() == {}


async def test_calls_that_never_reach_a_backend_count_as_errors_of_the_agent() -> None:
    router = make_router(Scripted("a"))
    with pytest.raises(NoRouteError):
        await router.execute(prompt="x", model="nobody-serves-this", agent_id="x")
    usage = router.get_agent_usage("x")
    assert (usage.requests, usage.errors, usage.by_backend) == (1, 1, {})
    assert usage.by_model["nobody-serves-this"].errors == 1


async def _rpc(router: Router, *calls: tuple[str, Any]) -> list[dict[str, Any]]:
    """Each call answered in turn through the real dispatcher and method table."""
    replies: list[bytes] = []
    dispatcher = Dispatcher(build_table(router, _LocalServer()), error_mapper=error_mapper)
    async with anyio.create_task_group() as tg:
        session = dispatcher.session(tg, replies.append, peer="test")
        for i, (method, params) in enumerate(calls):
            session.handle_frame(msgspec.json.encode({"jsonrpc": "2.0", "id": i, "method": method, "params": params}))
            with anyio.fail_after(5):
                await session.wait_idle()
    return [msgspec.json.decode(r) for r in replies]


async def test_usage_get_and_usage_reset_over_json_rpc() -> None:
    async with Router(Config(backends=[BackendConfig(provider="mock")])) as router:
        replies = await _rpc(
            router,
            ("execute", {"prompt": "hello there", "agent_id": "coder"}),
            ("execute", {"prompt": "x", "agent_id": "coder", "mock": {"fail_rate": 1}}),
            ("usage.get", {"agent_id": "coder"}),
            ("usage.get", {}),
            ("usage.reset", {"agent_id": "coder"}),
            ("usage.get", {"agent_id": "coder"}),
        )
    assert replies[1]["error"]["data"]["type"] == "server_error"
    coder = replies[2]["result"]["agents"]["coder"]
    assert (coder["requests"], coder["errors"], coder["total_tokens"]) == (2, 1, 10)
    assert coder["by_backend"]["mock"] == {
        "requests": 2, "errors": 1, "prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10, "cost_usd": 0.0
    }  # fmt: skip
    assert set(replies[3]["result"]["agents"]) == {"coder"}
    assert replies[4]["result"] == {"reset": ["coder"]}
    assert replies[5]["result"]["agents"]["coder"]["requests"] == 0


async def test_health_reports_state_load_error_rate_and_latency() -> None:
    async with Router(Config(backends=[BackendConfig(provider="mock")])) as router:
        (reply,) = await _rpc(router, ("health", {}))
    (mock,) = reply["result"]["backends"]
    assert mock == {
        "name": "mock",
        "provider": "mock",
        "state": "healthy",
        "in_flight": 0,
        "key": "not_needed",
        "error_rate": 0.0,
        "latency_ms": None,
        "cooldown_s": None,
    }


# -- the mock and the inline path -------------------------------------------------------------------------


def _mocks(*backends: dict[str, Any], **settings: Any) -> Router:
    return Router(
        Config(
            router=RouterSettings(**settings),
            backends=[BackendConfig(provider="mock", priority=i + 1, **b) for i, b in enumerate(backends)],
        )
    )


async def test_the_mock_is_never_sent_the_same_request_twice_nor_cooled_down() -> None:
    router = _mocks({"name": "m1", "fail_rate": 1.0}, retries=3, cooldown_after_failures=1)
    for i in range(5):
        with pytest.raises(ServerError):
            await router.execute(prompt=f"p{i}", mock={"latency_ms": 1})
    (health,) = router.health()
    assert health.state == "healthy"
    assert health.error_rate > 0
    assert router.get_agent_usage(None).by_backend["m1"].requests == 5


async def test_a_failing_mock_fails_over_to_the_next_mock() -> None:
    router = _mocks({"name": "m1", "fail_rate": 1.0, "fail_type": "overloaded"}, {"name": "m2"}, retries=1)
    result = await router.execute(prompt="x")
    assert (result.backend, result.attempts) == ("m2", 2)
    both = _mocks({"name": "m1"}, {"name": "m2"}, retries=3)
    with pytest.raises(BackendError) as raised:
        await both.execute(prompt="x", mock={"fail_rate": 1.0})
    assert [x["backend"] for x in raised.value.data["attempts"]] == ["m1", "m2"]


async def test_the_inline_path_gives_way_untouched_when_a_retry_would_follow() -> None:
    router = _mocks({"name": "m1", "fail_rate": 1.0}, {"name": "m2"}, retries=1)
    params = ExecuteParams(prompt="x", agent_id="a")
    assert router.execute_nowait(params) is None
    assert router.get_all_usage() == {}
    assert router.health()[0].error_rate == 0
    result = await router.execute(params)
    assert (result.backend, result.attempts) == ("m2", 2)


async def test_the_inline_path_answers_a_final_error_itself_and_accounts_it() -> None:
    router = _mocks({"name": "m1"}, retries=3)
    params = ExecuteParams(prompt="x", agent_id="a", mock=MockOptions(fail_rate=1.0, fail_type="rate_limited"))
    with pytest.raises(RateLimitedError):
        router.execute_nowait(params)
    assert router.get_agent_usage("a").errors == 1


async def test_the_inline_path_follows_the_same_rotation_as_the_task_path() -> None:
    inline = _mocks({"name": "m1"}, {"name": "m2"}, strategy="round-robin")
    tasked = _mocks({"name": "m1"}, {"name": "m2"}, strategy="round-robin")
    got_inline = []
    for i in range(4):
        result = inline.execute_nowait(ExecuteParams(prompt=f"p{i}"))
        assert result is not None
        got_inline.append(result.backend)
    got_tasked = [(await tasked.execute(prompt=f"p{i}")).backend for i in range(4)]
    assert got_inline == got_tasked == ["m1", "m2", "m1", "m2"]


async def test_the_inline_path_keeps_the_limits_and_never_waits() -> None:
    router = _mocks({"name": "m1", "rate_limit_rpm": 2}, {"name": "m2", "max_concurrent": 1})
    backends = [router.execute_nowait(ExecuteParams(prompt=f"p{i}")) for i in range(4)]
    assert [r.backend if r else None for r in backends] == ["m1", "m1", "m2", "m2"]
    only = _mocks({"name": "m1", "rate_limit_rpm": 1})
    assert only.execute_nowait(ExecuteParams(prompt="a")) is not None
    assert only.execute_nowait(ExecuteParams(prompt="b")) is None  # it would wait a minute
    with pytest.raises(RateLimitedError) as raised:
        await only.execute(prompt="b", config={"timeout_seconds": 5})
    assert raised.value.data["scope"] == "local"
