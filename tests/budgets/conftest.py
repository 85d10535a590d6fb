"""Budget stores for the suite: memory, SQLite in a temporary file, and a real ``redis-server``.

The Redis server is started once per session on a free loopback port, with no persistence, in a
temporary directory; each test gets its own key prefix, so tests never see each other's chains.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_rpc import Router
from llm_rpc.config import BackendConfig, BudgetSettings, Config, ModelPrice, RouterSettings
from llm_rpc.core.budgets import BudgetStore, MemoryBudgetStore
from tests.core._scripted import Scripted

STORES = ["memory", "sqlite", "redis"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``redis://127.0.0.1:PORT/0`` of a ``redis-server`` this session started (skipped when absent)."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (CI installs Debian's package in .ci/run)")
    try:
        import redis  # noqa: F401
    except ImportError:
        pytest.skip("the redis package is not installed (pip install 'llm-rpc[redis]')")
    workdir = tmp_path_factory.mktemp("redis")
    for _ in range(3):
        port = _free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline and not _ping(port):
            time.sleep(0.02)
        if proc.poll() is None and _ping(port):
            break
        proc.kill()
        proc.wait()
    else:
        pytest.fail("redis-server did not start")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_store(kind: str, tmp_path: Path, redis_url: str | None, **kw: float | None) -> BudgetStore:
    """A fresh, empty store of ``kind``."""
    if kind == "memory":
        return MemoryBudgetStore(**kw)  # type: ignore[arg-type]
    if kind == "sqlite":
        from llm_rpc.core.budgets._sqlite import SqliteBudgetStore

        return SqliteBudgetStore(f"sqlite:///{tmp_path / 'budgets.db'}", **kw)  # type: ignore[arg-type]
    from llm_rpc.core.budgets._redis import RedisBudgetStore

    assert redis_url is not None
    return RedisBudgetStore(redis_url, prefix=f"llm_rpc:budget:test-{uuid.uuid4().hex[:12]}:", **kw)  # type: ignore[arg-type]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    kind = str(request.param)
    if kind == "redis":
        request.getfixturevalue("redis_url")
    return kind


@pytest.fixture
async def store(store_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[BudgetStore]:
    """Each store in turn, empty, with a day's retention and no default ttl."""
    url = request.getfixturevalue("redis_url") if store_kind == "redis" else None
    s = make_store(store_kind, tmp_path, url)
    try:
        yield s
    finally:
        await s.aclose()


def router_for(
    *providers: Scripted,
    use_store: BudgetStore | None = None,
    prices: list[ModelPrice] | None = None,
    mock: bool = False,
    **budgets: Any,
) -> Router:
    """A router over scripted backends serving model ``m`` (or the built-in mock), on ``store``."""
    backends = [
        BackendConfig(provider="ollama", name=p.name, models=["m"], priority=i + 1) for i, p in enumerate(providers)
    ]
    if mock:
        backends.append(BackendConfig(provider="mock"))
    config = Config(
        router=RouterSettings(retry_base_delay=0.0, retry_max_delay=0.0),
        backends=backends,
        models=prices or [],
        budgets=BudgetSettings(**budgets),
    )
    router = Router(config, providers={p.name: p for p in providers})
    if use_store is not None:
        router.budgets.store = use_store
    return router
