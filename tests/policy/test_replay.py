"""Reproducible decisions: a real server logs each decision (``--decision-log``), and ``llm-rpc route --replay``
recomputes every one: exit 0 when none differs, 1 when the config was changed under the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.transports._proc import ServerProcess, server_env

CONFIG = """
[[backends]]
name = "fast"
provider = "mock"
models = ["small-*"]
priority = 1

[[backends]]
name = "strong"
provider = "mock"
models = ["big-*"]
priority = 2

[[backends]]
name = "home"
provider = "mock"
models = ["local-*"]
local = true
priority = 3

[[models]]
name = "small-1"
input = 1.0
output = 2.0

[[models]]
name = "big-1"
input = 5.0
output = 20.0

[routing]
local_model = "local-1"
cloud_model = "big-1"

[[routing.rules]]
name = "triage"
task_type = "triage"
prefer = [{ provider = "strong", model = "big-1" }]
fallback = { provider = "fast", model = "small-1" }
"""

REQUESTS = [
    ("execute", {"prompt": "is this urgent?", "task_type": "triage"}),
    ("execute", {"prompt": "summarize this", "chain_id": "c"}),
    ("execute", {"prompt": "analyze the design", "chain_id": "c"}),
    ("execute", {"prompt": "ok", "chain_id": "c"}),  # sticky: still complex
    ("resolve_route", {"task_type": "triage", "estimated_tokens": 500}),
    ("resolve_route", {"model": "nobody-serves-this"}),  # refused: logged as no_route
    ("execute", {"prompt": "named", "model": "small-1"}),  # not routed: not logged
]


def replay(log: Path, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_rpc", "route", "--replay", str(log), "--config", str(config)],
        capture_output=True,
        text=True,
        env=server_env(),
        timeout=60,
        check=False,
    )


def record(tmp_path: Path) -> tuple[Path, Path, list[dict[str, Any]]]:
    config, log = tmp_path / "llm-rpc.toml", tmp_path / "decisions.jsonl"
    config.write_text(CONFIG)
    server = ServerProcess("--stdio", "--config", str(config), "--decision-log", str(log))
    replies = []
    try:
        for i, (method, params) in enumerate(REQUESTS):
            server.request({"jsonrpc": "2.0", "id": i, "method": method, "params": params})
            replies.append(server.read_line())
        server.close_stdin()
        assert server.wait() == 0
    finally:
        server.kill()
    return config, log, replies


def test_replaying_a_recorded_log_reproduces_every_decision_and_a_changed_config_exits_1(tmp_path: Path) -> None:
    config, log, replies = record(tmp_path)
    routes = [r["result"].get("route") or r["result"] for r in replies if "result" in r]
    assert [r.get("backend") for r in routes] == ["strong", "home", "strong", "strong", "strong", "fast"]
    assert replies[3]["result"]["route"]["complexity"] == "complex"
    assert replies[5]["error"]["data"]["type"] == "no_route"
    lines = log.read_text().splitlines()
    assert len(lines) == 6

    same = replay(log, config)
    assert same.returncode == 0, same.stderr
    assert same.stdout == ""
    assert "replayed 6 decision(s), 0 differ" in same.stderr

    config.write_text(CONFIG.replace('prefer = [{ provider = "strong", model = "big-1" }]', "prefer = []"))
    changed = replay(log, config)
    assert changed.returncode == 1
    differences = [json.loads(line) for line in changed.stdout.splitlines()]
    assert [d["line"] for d in differences] == [1, 5]
    assert differences[0]["recorded"]["decision"]["backend"] == "strong"
    assert differences[0]["recomputed"]["decision"]["backend"] == "fast"
    assert "2 differ" in changed.stderr


def test_a_file_that_is_not_a_decision_log_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"not": "a decision"}\n')
    done = replay(bad, config)
    assert done.returncode == 2
    assert "line 1" in done.stderr
    assert replay(tmp_path / "missing.jsonl", config).returncode == 2
