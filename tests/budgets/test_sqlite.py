"""What only the SQLite store does: one server per file, and recovery of reservations left in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_rpc.core.budgets import OpenSpec
from llm_rpc.core.budgets._sqlite import SqliteBudgetStore, sqlite_path
from llm_rpc.errors import ConfigError

pytestmark = pytest.mark.anyio


async def test_reservations_in_flight_when_the_server_died_are_settled_at_what_they_held(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    first = SqliteBudgetStore(url)
    await first.open(OpenSpec(chain_id="A", total_tokens=1000, total_usd=1.0))
    await first.open(OpenSpec(chain_id="B", parent_id="A"))
    await first.reserve("B", 120, 300_000_000, 60)
    done = await first.reserve("B", 50, 0, 60)
    await first.settle(done.id, 20, 0)
    await first.aclose()  # as good as dead: the first reservation was never settled

    second = SqliteBudgetStore(url)
    await second.start()
    try:
        assert second.health() == {"recovered_reservations": 1, "recovered_tokens": 120, "recovered_usd": 0.3}
        for chain in ("A", "B"):
            s = await second.status(chain)
            assert (s.spent_tokens, s.spent_usd, s.reserved_tokens, s.in_flight) == (140, 0.3, 0, 0)
    finally:
        await second.aclose()


async def test_one_server_owns_a_file_at_a_time(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    owner = SqliteBudgetStore(url)
    await owner.start()
    try:
        with pytest.raises(ConfigError) as raised:
            await SqliteBudgetStore(url).start()
        assert raised.value.data["path"] == "budgets.store"
    finally:
        await owner.aclose()
    again = SqliteBudgetStore(url)
    await again.start()  # the lock went with its owner
    await again.aclose()


def test_sqlite_urls_follow_the_sqlalchemy_convention() -> None:
    assert sqlite_path("sqlite:///relative/b.db") == Path("relative/b.db")
    assert sqlite_path("sqlite:////abs/b.db") == Path("/abs/b.db")
    with pytest.raises(ConfigError):
        sqlite_path("sqlite://b.db")
