"""The budget.* methods over JSON-RPC (the server's own dispatch path), on the memory store inline and on
SQLite as tasks: params, results, error codes and ``data``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from llm_rpc import Router
from llm_rpc._inprocess import _LocalServer
from llm_rpc.config import BudgetSettings, Config, default_config
from llm_rpc.methods import build_table, error_mapper
from llm_rpc.protocol import Dispatcher

pytestmark = pytest.mark.anyio


class Rpc:
    """Calls on one router through a dispatcher, as a connection would make them."""

    def __init__(self, router: Router) -> None:
        self.dispatcher = Dispatcher(build_table(router, _LocalServer()), error_mapper=error_mapper)
        self.ids = 0

    async def __call__(self, method: str, params: Any = None) -> dict[str, Any]:
        self.ids += 1
        replies: list[bytes] = []
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": self.ids, "method": method}
        if params is not None:
            request["params"] = params
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                session = self.dispatcher.session(tg, replies.append, peer="test")
                session.handle_frame(msgspec.json.encode(request))
                await session.wait_idle()
        reply: dict[str, Any] = msgspec.json.decode(replies[0])
        return reply


@pytest.fixture(params=["memory", "sqlite"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> Config:
    store = "memory" if request.param == "memory" else f"sqlite:///{tmp_path / 'budgets.db'}"
    return msgspec.structs.replace(default_config(environ={}), budgets=BudgetSettings(store=store))


async def test_open_spend_status_list_and_close_over_json_rpc(config: Config) -> None:
    async with Router(config) as router:
        rpc = Rpc(router)
        opened = await rpc("budget.open", {"chain_id": "A", "total_tokens": 4000, "metadata": {"who": "A"}})
        assert opened["result"]["remaining_tokens"] == 4000
        await rpc("budget.open", {"chain_id": "B", "parent_id": "A", "total_tokens": 1000})
        spent = await rpc("budget.spend", {"chain_id": "B", "tokens": 300})
        assert spent["result"] == {
            "chain_id": "B",
            "tokens": 300,
            "usd": 0.0,
            "forced": False,
            "exhausted": False,
            "remaining_tokens": 700,
            "remaining_usd": None,
            "overrun_tokens": 0,
            "overrun_usd": 0.0,
        }
        done = await rpc("execute", {"prompt": "hello chain", "chain_id": "B", "config": {"max_tokens": 10}})
        assert done["result"]["budget"]["remaining_tokens"] == 700 - done["result"]["usage"]["total_tokens"]
        status = (await rpc("budget.status", {"chain_id": "A"}))["result"]
        assert (status["state"], status["children"], status["metadata"]) == ("open", ["B"], {"who": "A"})
        listed = (await rpc("budget.list", {"parent_id": "A"}))["result"]["chains"]
        assert [c["chain_id"] for c in listed] == ["B"]
        closed = (await rpc("budget.close", {"chain_id": "B"}))["result"]
        assert (closed["state"], closed["spent_tokens"]) == ("closed", 300 + done["result"]["usage"]["total_tokens"])
        health = (await rpc("health"))["result"]
        assert health["budgets"]["store"] == config.budgets.store.split(":")[0]


async def test_refusals_answer_32001_with_the_reason_and_what_remains(config: Config) -> None:
    async with Router(config) as router:
        rpc = Rpc(router)
        await rpc("budget.open", {"chain_id": "A", "total_tokens": 100})
        error = (await rpc("budget.spend", {"chain_id": "A", "tokens": 101}))["error"]
        assert error["code"] == -32001
        assert error["data"] == {
            "type": "budget_exceeded",
            "chain_id": "A",
            "reason": "exceeds_budget",
            "limit": "total_tokens",
            "remaining": 100,
            "requested": 101,
            "reserved": 0,
        }
        refused = (await rpc("execute", {"prompt": "x", "chain_id": "A", "config": {"max_tokens": 500}}))["error"]
        assert (refused["code"], refused["data"]["reason"]) == (-32001, "exceeds_budget")
        forced = (await rpc("budget.spend", {"chain_id": "A", "tokens": 101, "force": True}))["result"]
        assert (forced["exhausted"], forced["overrun_tokens"]) == (True, 1)


async def test_requests_the_store_cannot_do_answer_32602_with_a_reason(config: Config) -> None:
    async with Router(config) as router:
        rpc = Rpc(router)
        await rpc("budget.open", {"chain_id": "A", "total_tokens": 100})
        conflict = (await rpc("budget.open", {"chain_id": "A", "total_tokens": 50}))["error"]
        assert conflict["code"] == -32602
        assert (conflict["data"]["reason"], conflict["data"]["path"]) == ("conflict", "params.total_tokens")
        unknown = (await rpc("budget.status", {"chain_id": "nope"}))["error"]
        assert (unknown["code"], unknown["data"]["reason"]) == (-32602, "unknown_chain")
        no_total = (await rpc("budget.open", {"chain_id": "Z"}))["error"]
        assert (no_total["code"], no_total["data"]["type"]) == (-32602, "invalid_params")
        typo = (await rpc("budget.spend", {"chain_id": "A", "token": 1}))["error"]
        assert (typo["code"], typo["data"]["unknown_field"]) == (-32602, "token")
