"""Real servers: SQLite keeps every acknowledged spend across a ``kill -9``, and three servers sharing one
Redis never spend a chain past its total."""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.transports._proc import ServerProcess

WORDS = ["budget", "chain", "delegate", "proposal", "review", "summary", "tokens", "agent", "plan", "draft"]


def call(server: ServerProcess, rid: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """One request, waiting for its reply (other replies read meanwhile are dropped)."""
    server.request({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
    while True:
        reply: dict[str, Any] = server.read_line(timeout=15)
        if reply.get("id") == rid:
            return reply


def test_sqlite_keeps_every_acknowledged_spend_across_a_kill_9(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'budgets.db'}"  # an absolute path: sqlite:////...
    server = ServerProcess("--stdio", "--budget-store", store)
    try:
        assert "result" in call(server, 1, "budget.open", {"chain_id": "A", "total_tokens": 10**9})
        for i in range(3):  # calls that hang upstream: their reservations are in flight at the kill
            params = {"prompt": "a hanging call", "chain_id": "A", "config": {"max_tokens": 100}}
            server.request(
                {
                    "jsonrpc": "2.0",
                    "id": f"hang{i}",
                    "method": "execute",
                    "params": {**params, "mock": {"latency_ms": 60_000}},
                }
            )
        for attempt in range(200):
            status = call(server, 10_000 + attempt, "budget.status", {"chain_id": "A"})["result"]
            if status["in_flight"] == 3:
                break
        else:
            pytest.fail("the hanging calls never held the chain")
        held = status["reserved_tokens"]
        sent = 0
        for i in range(1, 401):
            server.request(
                {"jsonrpc": "2.0", "id": i, "method": "budget.spend", "params": {"chain_id": "A", "tokens": i}}
            )
            sent += i
        acknowledged = 0
        acks = 0
        while acks < 150:
            reply = server.read_line(timeout=15)
            if isinstance(reply.get("id"), int) and 1 <= reply["id"] <= 400:
                assert "result" in reply, reply
                acknowledged += reply["result"]["tokens"]
                acks += 1
        server.proc.kill()  # SIGKILL mid-load: replies (and commits) still on their way
        server.wait(timeout=10)
    finally:
        server.kill()

    restarted = ServerProcess("--stdio", "--budget-store", store)
    try:
        health = call(restarted, 1, "health", {})["result"]["budgets"]
        assert health["store"] == "sqlite"
        assert (health["recovered_reservations"], health["recovered_tokens"]) == (3, held)
        ledger = call(restarted, 2, "budget.status", {"chain_id": "A"})["result"]
    finally:
        restarted.close_stdin()
        restarted.wait()
        restarted.kill()
    spends = ledger["spent_tokens"] - held  # the reservations in flight were settled as spent
    assert acknowledged <= spends <= sent
    assert (ledger["reserved_tokens"], ledger["in_flight"]) == (0, 0)


def test_three_servers_sharing_redis_never_spend_a_chain_past_its_total(redis_url: str) -> None:
    chain = f"shared-{uuid.uuid4().hex[:8]}"
    servers = [ServerProcess("--stdio", "--budget-store", redis_url) for _ in range(3)]
    try:
        opened = call(servers[0], 0, "budget.open", {"chain_id": chain, "total_tokens": 3000})
        assert "result" in opened, opened
        # The same chain, opened again by another process with the same params: the same chain.
        assert (
            call(servers[1], 0, "budget.open", {"chain_id": chain, "total_tokens": 3000})["result"]["chain_id"] == chain
        )
        rng = random.Random(3)
        expected: list[dict[int, tuple[str, int]]] = []
        for server in servers:
            mine: dict[int, tuple[str, int]] = {}
            for rid in range(1, 201):
                if rid % 4 == 0:
                    tokens = rng.randint(1, 30)
                    params: dict[str, Any] = {"chain_id": chain, "tokens": tokens}
                    mine[rid] = ("budget.spend", tokens)
                else:
                    params = {
                        "prompt": " ".join(rng.choices(WORDS, k=rng.randint(1, 10))),
                        "chain_id": chain,
                        "config": {"max_tokens": rng.randint(1, 40)},
                        "mock": {"latency_ms": rng.choice([0, 1, 3])},
                    }
                    mine[rid] = ("execute", 0)
                server.request({"jsonrpc": "2.0", "id": rid, "method": mine[rid][0], "params": params})
            expected.append(mine)
        spent = 0
        reasons: dict[str, int] = {}
        for server, mine in zip(servers, expected, strict=True):
            pending = set(mine)
            while pending:
                reply = server.read_line(timeout=30)
                rid = reply.get("id")
                if rid not in pending:
                    continue
                pending.discard(rid)
                if "error" in reply:
                    assert reply["error"]["code"] == -32001, reply
                    reason = reply["error"]["data"]["reason"]
                    reasons[reason] = reasons.get(reason, 0) + 1
                elif mine[rid][0] == "execute":
                    spent += reply["result"]["usage"]["total_tokens"]
                else:
                    spent += reply["result"]["tokens"]
        ledger = call(servers[2], 9999, "budget.status", {"chain_id": chain})["result"]
    finally:
        for server in servers:
            server.kill()
    assert ledger["spent_tokens"] == spent <= 3000  # every acknowledged spend, nothing else
    assert (ledger["reserved_tokens"], ledger["in_flight"]) == (0, 0)
    assert sum(reasons.values()) > 0, "the chain never filled: the test proves nothing"
    assert set(reasons) <= {"in_flight", "exceeds_budget"}
    json.dumps(ledger)
