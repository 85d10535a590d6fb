"""Shared fixtures: both anyio backends, a canary key, and servers on real pipes and sockets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CANARY_KEY = "sk-canary-3f9a7c1e5b2d4a6c8e0f1a3b5c7d9e1f"


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every async test runs on both anyio backends."""
    return str(request.param)


@pytest.fixture
def canary_key(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fake API key whose value must never show up in any output."""
    monkeypatch.setenv("LLM_RPC_TEST_CANARY_KEY", CANARY_KEY)
    return CANARY_KEY


def server_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "llm_rpc", *args]
