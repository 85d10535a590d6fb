"""The SQLite budget store: the same ledger (``_ledger.Ledger``) over tables, in committed transactions.

Every open, reservation, settlement and spend is committed (WAL) before the caller goes on, so a
``kill -9`` of the server loses nothing it acknowledged. ``synchronous = NORMAL``: a commit survives
the process dying at any point; only an operating-system crash or power cut may lose the last few.
On start, reservations still in flight (their server died) are settled at what they reserved, the
safe side, and ``health`` reports them.

One server owns a database file at a time (an ``flock`` on ``PATH.lock``): several processes sharing
chains is what the Redis store is for. The blocking ``sqlite3`` calls run on a worker thread, one batch
at a time, never on the event loop; operations that arrive together share one transaction and one commit
(``_batch``), each in its own savepoint, and none is answered before that commit.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from llm_rpc.core.budgets._batch import Batcher, Pending
from llm_rpc.core.budgets._ledger import (
    BudgetSpendResult,
    BudgetStatus,
    Chain,
    Hold,
    Ledger,
    OpenSpec,
    Recovered,
    Reservation,
    Settlement,
    State,
    from_nusd,
)
from llm_rpc.errors import ConfigError, LLMError

__all__ = ["SqliteBudgetStore", "sqlite_path"]

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chains (
    id TEXT PRIMARY KEY,
    parent_id TEXT,
    path TEXT NOT NULL,
    total_tokens INTEGER,
    total_nusd INTEGER,
    allow_unpriced INTEGER NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    ttl_s REAL,
    metadata TEXT,
    spec TEXT NOT NULL,
    spent_tokens INTEGER NOT NULL DEFAULT 0,
    spent_nusd INTEGER NOT NULL DEFAULT 0,
    reserved_tokens INTEGER NOT NULL DEFAULT 0,
    reserved_nusd INTEGER NOT NULL DEFAULT 0,
    overrun_tokens INTEGER NOT NULL DEFAULT 0,
    overrun_nusd INTEGER NOT NULL DEFAULT 0,
    closed_at REAL,
    purge_at REAL
);
CREATE INDEX IF NOT EXISTS chains_parent ON chains (parent_id);
CREATE INDEX IF NOT EXISTS chains_purge ON chains (purge_at) WHERE purge_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS holds (
    id TEXT PRIMARY KEY,
    chain_id TEXT NOT NULL,
    path TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    nusd INTEGER NOT NULL,
    lease_until REAL NOT NULL,
    state TEXT NOT NULL,
    done_at REAL,
    settled_tokens INTEGER NOT NULL DEFAULT 0,
    settled_nusd INTEGER NOT NULL DEFAULT 0,
    over_tokens INTEGER NOT NULL DEFAULT 0,
    over_nusd INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS holds_due ON holds (lease_until) WHERE state = 'active';
CREATE INDEX IF NOT EXISTS holds_done ON holds (done_at) WHERE state != 'active';
CREATE TABLE IF NOT EXISTS hold_levels (
    level TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    lease_until REAL NOT NULL,
    PRIMARY KEY (level, hold_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hold_levels_hold ON hold_levels (hold_id);
"""
_SCHEMA_VERSION = "1"

_CHAIN_COLUMNS = (
    "id, parent_id, path, total_tokens, total_nusd, allow_unpriced, created_at, expires_at, ttl_s, metadata, spec,"
    " spent_tokens, spent_nusd, reserved_tokens, reserved_nusd, overrun_tokens, overrun_nusd, closed_at"
)
_HOLD_COLUMNS = (
    "id, chain_id, path, tokens, nusd, lease_until, state, done_at, settled_tokens, settled_nusd, over_tokens,"
    " over_nusd"
)


def sqlite_path(url: str) -> Path:
    """``sqlite:///relative/path`` or ``sqlite:////absolute/path`` (decisions.md #10) → the file."""
    rest = url.removeprefix("sqlite://")
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"budget store {url!r}: expected sqlite:///relative/path or sqlite:////absolute/path",
            path="budgets.store",
        )
    return Path(rest[1:])


def _chain(row: tuple[Any, ...]) -> Chain:
    return Chain(
        id=row[0],
        parent_id=row[1],
        path=tuple(json.loads(row[2])),
        total_tokens=row[3],
        total_nusd=row[4],
        allow_unpriced=bool(row[5]),
        created_at=row[6],
        expires_at=row[7],
        ttl_s=row[8],
        metadata=json.loads(row[9]) if row[9] is not None else None,
        spec=row[10],
        spent_tokens=row[11],
        spent_nusd=row[12],
        reserved_tokens=row[13],
        reserved_nusd=row[14],
        overrun_tokens=row[15],
        overrun_nusd=row[16],
        closed_at=row[17],
    )


def _hold(row: tuple[Any, ...]) -> Hold:
    return Hold(
        id=row[0],
        chain_id=row[1],
        path=tuple(json.loads(row[2])),
        tokens=row[3],
        nusd=row[4],
        lease_until=row[5],
        state=row[6],
        done_at=row[7],
        settled_tokens=row[8],
        settled_nusd=row[9],
        over_tokens=row[10],
        over_nusd=row[11],
    )


class SqliteRepo:
    """The ledger's rows in SQLite; rows read in a transaction are cached and written back at commit."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self._chains: dict[str, Chain] = {}
        self._dirty: dict[str, Chain] = {}
        self._holds: dict[str, Hold] = {}

    def reset(self) -> None:
        self._chains.clear()
        self._dirty.clear()
        self._holds.clear()

    def flush(self) -> None:
        for c in self._dirty.values():
            self.db.execute(
                "UPDATE chains SET spent_tokens = ?, spent_nusd = ?, reserved_tokens = ?, reserved_nusd = ?,"
                " overrun_tokens = ?, overrun_nusd = ?, closed_at = ? WHERE id = ?",
                (
                    c.spent_tokens,
                    c.spent_nusd,
                    c.reserved_tokens,
                    c.reserved_nusd,
                    c.overrun_tokens,
                    c.overrun_nusd,
                    c.closed_at,
                    c.id,
                ),
            )
        self._dirty.clear()

    def chain(self, chain_id: str) -> Chain | None:
        c = self._chains.get(chain_id)
        if c is None:
            row = self.db.execute(f"SELECT {_CHAIN_COLUMNS} FROM chains WHERE id = ?", (chain_id,)).fetchone()
            if row is None:
                return None
            c = self._chains[chain_id] = _chain(row)
        return c

    def add_chain(self, chain: Chain, purge_at: float | None) -> None:
        self.db.execute(
            f"INSERT INTO chains ({_CHAIN_COLUMNS}, purge_at) VALUES ({', '.join('?' * 19)})",
            (
                chain.id,
                chain.parent_id,
                json.dumps(chain.path),
                chain.total_tokens,
                chain.total_nusd,
                int(chain.allow_unpriced),
                chain.created_at,
                chain.expires_at,
                chain.ttl_s,
                json.dumps(chain.metadata) if chain.metadata is not None else None,
                chain.spec,
                chain.spent_tokens,
                chain.spent_nusd,
                chain.reserved_tokens,
                chain.reserved_nusd,
                chain.overrun_tokens,
                chain.overrun_nusd,
                chain.closed_at,
                purge_at,
            ),
        )
        self._chains[chain.id] = chain

    def save(self, chain: Chain) -> None:
        self._dirty[chain.id] = chain

    def set_purge(self, chain: Chain, purge_at: float | None) -> None:
        self.db.execute("UPDATE chains SET purge_at = ? WHERE id = ?", (purge_at, chain.id))

    def children(self, chain_id: str) -> list[str]:
        rows = self.db.execute("SELECT id FROM chains WHERE parent_id = ? ORDER BY rowid", (chain_id,))
        return [r[0] for r in rows]

    def ids(self, parent_id: str | None, limit: int) -> list[str]:
        if parent_id is None:
            rows = self.db.execute("SELECT id FROM chains ORDER BY rowid LIMIT ?", (limit,))
        else:
            rows = self.db.execute(
                "SELECT id FROM chains WHERE parent_id = ? ORDER BY rowid LIMIT ?", (parent_id, limit)
            )
        return [r[0] for r in rows]

    def hold(self, hold_id: str) -> Hold | None:
        h = self._holds.get(hold_id)
        if h is None:
            row = self.db.execute(f"SELECT {_HOLD_COLUMNS} FROM holds WHERE id = ?", (hold_id,)).fetchone()
            if row is None:
                return None
            h = self._holds[hold_id] = _hold(row)
        return h

    def add_hold(self, hold: Hold) -> None:
        self.db.execute(
            f"INSERT INTO holds ({_HOLD_COLUMNS}) VALUES ({', '.join('?' * 12)})",
            (
                hold.id,
                hold.chain_id,
                json.dumps(hold.path),
                hold.tokens,
                hold.nusd,
                hold.lease_until,
                hold.state,
                hold.done_at,
                0,
                0,
                0,
                0,
            ),
        )
        self.db.executemany(
            "INSERT INTO hold_levels (level, hold_id, lease_until) VALUES (?, ?, ?)",
            [(level, hold.id, hold.lease_until) for level in hold.path],
        )
        self._holds[hold.id] = hold

    def end_hold(self, hold: Hold) -> None:
        self.save_hold(hold)
        self.db.execute("DELETE FROM hold_levels WHERE hold_id = ?", (hold.id,))

    def save_hold(self, hold: Hold) -> None:
        self.db.execute(
            "UPDATE holds SET state = ?, done_at = ?, settled_tokens = ?, settled_nusd = ?, over_tokens = ?,"
            " over_nusd = ? WHERE id = ?",
            (
                hold.state,
                hold.done_at,
                hold.settled_tokens,
                hold.settled_nusd,
                hold.over_tokens,
                hold.over_nusd,
                hold.id,
            ),
        )

    def due(self, now: float) -> list[Hold]:
        rows = self.db.execute(
            f"SELECT {_HOLD_COLUMNS} FROM holds WHERE state = 'active' AND lease_until <= ? ORDER BY lease_until",
            (now,),
        ).fetchall()
        return [self._cached_hold(row) for row in rows]

    def _cached_hold(self, row: tuple[Any, ...]) -> Hold:
        h = self._holds.get(row[0])
        if h is None:
            h = self._holds[row[0]] = _hold(row)
        return h

    def earliest(self, chain_id: str) -> float | None:
        row = self.db.execute("SELECT MIN(lease_until) FROM hold_levels WHERE level = ?", (chain_id,)).fetchone()
        return float(row[0]) if row and row[0] is not None else None

    def in_flight(self, chain_id: str) -> int:
        row = self.db.execute("SELECT COUNT(*) FROM hold_levels WHERE level = ?", (chain_id,)).fetchone()
        return int(row[0])

    def active(self) -> list[Hold]:
        rows = self.db.execute(f"SELECT {_HOLD_COLUMNS} FROM holds WHERE state = 'active'").fetchall()
        return [self._cached_hold(row) for row in rows]

    def purge(self, now: float, tombstone_before: float) -> None:
        self.db.execute("DELETE FROM holds WHERE state != 'active' AND done_at <= ?", (tombstone_before,))
        self.db.execute("DELETE FROM chains WHERE purge_at IS NOT NULL AND purge_at <= ?", (now,))


class SqliteBudgetStore:
    """Budgets in one SQLite file, durable across crashes (``sqlite:///path``).

    The file is opened (locked, migrated, its reservations in flight recovered) on a worker thread:
    by ``start()``, which the server awaits before it serves, else by the first operation.
    """

    kind = "sqlite"
    inline = False

    def __init__(
        self,
        url: str,
        *,
        retention: float = 86400.0,
        default_ttl: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = sqlite_path(url)
        self._retention = retention
        self._default_ttl = default_ttl
        self._lock_file: int | None = None
        self._skew = 0.0
        self._clock = clock
        self._mutex = threading.RLock()
        self._batcher = Batcher(self.run)
        self._db: sqlite3.Connection | None = None
        self._repo: SqliteRepo | None = None
        self._ledger: Ledger | None = None
        self.recovered = Recovered()

    def _open(self) -> tuple[sqlite3.Connection, SqliteRepo, Ledger]:
        """The open file (blocking: on a worker thread). Raises ConfigError if another server holds it."""
        with self._mutex:
            if self._db is None or self._repo is None or self._ledger is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._lock_file = _lock(self.path)
                db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                db.execute("PRAGMA journal_mode = WAL")
                db.execute("PRAGMA synchronous = NORMAL")
                db.execute("PRAGMA busy_timeout = 5000")
                db.executescript(_SCHEMA)
                db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (_SCHEMA_VERSION,))
                repo = SqliteRepo(db)
                ledger = Ledger(repo, self._now, retention=self._retention, default_ttl=self._default_ttl)
                self._db, self._repo, self._ledger = db, repo, ledger
                self.recovered = self._tx(ledger.recover)
            return self._db, self._repo, self._ledger

    async def start(self) -> None:
        """Open the file now, so a locked file fails the start and ``health`` shows what was recovered."""
        await anyio.to_thread.run_sync(self._open)

    def _now(self) -> float:
        return self._clock() + self._skew

    def advance(self, seconds: float) -> None:
        """Move this store's clock forward (tests of leases and expiry)."""
        self._skew += seconds

    @property
    def location(self) -> str:
        return str(self.path)

    def health(self) -> dict[str, int | float]:
        r = self.recovered
        return {
            "recovered_reservations": r.reservations,
            "recovered_tokens": r.tokens,
            "recovered_usd": from_nusd(r.nusd),
        }

    def _tx(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn`` in one committed transaction. A refusal commits too: the leases it let run out stay out."""
        with self._mutex:
            db, repo, _ = self._open()
            repo.reset()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(*args, **kwargs)
            except LLMError:
                repo.flush()
                db.execute("COMMIT")
                raise
            except BaseException:
                db.execute("ROLLBACK")
                repo.reset()
                raise
            repo.flush()
            db.execute("COMMIT")
            return result

    def run(self, batch: list[Pending]) -> None:
        """Every operation of ``batch`` in one transaction, each in its own savepoint, then one commit
        (a worker thread calls this). Nothing is answered before the commit."""
        with self._mutex:
            db, repo, ledger = self._open()
            repo.reset()
            db.execute("BEGIN IMMEDIATE")
            try:
                for item in batch:
                    name, args, kwargs = item.op
                    db.execute("SAVEPOINT op")
                    try:
                        item.result = getattr(ledger, name)(*args, **kwargs)
                    except LLMError as exc:  # a refusal: keep what it swept (leases that ran out)
                        item.error = exc
                    except Exception as exc:
                        db.execute("ROLLBACK TO op")
                        repo.reset()
                        item.error = exc
                    repo.flush()
                    db.execute("RELEASE op")
                db.execute("COMMIT")
            except BaseException as exc:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                repo.reset()
                for item in batch:
                    item.result, item.error = None, exc
                if not isinstance(exc, Exception):
                    raise

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return await self._batcher.submit((name, args, kwargs))

    async def open(self, spec: OpenSpec) -> BudgetStatus:
        result: BudgetStatus = await self._call("open", spec)
        return result

    async def reserve(
        self, chain_id: str, tokens: int, nusd: int | None, lease_s: float, *, model: str | None = None
    ) -> Reservation:
        result: Reservation = await self._call("reserve", chain_id, tokens, nusd, lease_s, model=model)
        return result

    async def settle(self, reservation_id: str, tokens: int, nusd: int) -> Settlement:
        result: Settlement = await self._call("settle", reservation_id, tokens, nusd)
        return result

    async def release(self, reservation_id: str) -> Settlement:
        result: Settlement = await self._call("release", reservation_id)
        return result

    async def spend(self, chain_id: str, tokens: int, nusd: int, *, force: bool = False) -> BudgetSpendResult:
        result: BudgetSpendResult = await self._call("spend", chain_id, tokens, nusd, force=force)
        return result

    async def status(self, chain_id: str) -> BudgetStatus:
        result: BudgetStatus = await self._call("status", chain_id)
        return result

    async def close(self, chain_id: str) -> BudgetStatus:
        result: BudgetStatus = await self._call("close", chain_id)
        return result

    async def list_chains(
        self, parent_id: str | None = None, state: State | None = None, limit: int = 1000
    ) -> list[BudgetStatus]:
        result: list[BudgetStatus] = await self._call("list_chains", parent_id, state, limit)
        return result

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.close_sync)

    def close_sync(self) -> None:
        """Close the file and drop the lock (idempotent)."""
        with self._mutex:
            db, self._db, self._repo, self._ledger = self._db, None, None, None
            if db is not None:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    db.close()
            lock, self._lock_file = self._lock_file, None
            if lock is not None:
                os.close(lock)


def _lock(path: Path) -> int | None:
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError(
            f"budget store {path}: another llm-rpc process has it open (one server per SQLite file; "
            "share budgets between processes with redis://)",
            path="budgets.store",
        ) from None
    return fd
