"""``serve --loop``: uvloop is opt-in on asyncio (contracts/decisions.md, "Event loop")."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import pytest

from tests.conftest import ROOT, server_argv

EXECUTE = b'{"jsonrpc":"2.0","id":1,"method":"execute","params":{"prompt":"Hello"}}\n'


def _serve(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        server_argv("serve", "--stdio", *args), input=EXECUTE, capture_output=True, timeout=30, cwd=ROOT, check=False
    )


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop is not installed")
def test_serve_on_uvloop_answers() -> None:
    done = _serve("--loop", "uvloop")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"]["content"] == "Mock answer to: Hello"


def test_uvloop_under_trio_is_a_usage_error() -> None:
    done = _serve("--loop", "uvloop", "--backend", "trio")
    assert done.returncode == 2
    assert b"--loop uvloop runs only with --backend asyncio" in done.stderr
