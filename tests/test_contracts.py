"""contracts/ stays true: the OpenRPC document is fresh, the error table matches the code table."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_rpc import _codes
from llm_rpc._inprocess import call_in_process, openrpc

CONTRACTS = Path(__file__).resolve().parent.parent / "contracts"


def test_openrpc_json_is_the_document_the_code_generates() -> None:
    committed = json.loads((CONTRACTS / "openrpc.json").read_text())
    assert committed == json.loads(json.dumps(openrpc())), (
        "contracts/openrpc.json is stale: regenerate it with `bin/llm-rpc openrpc > contracts/openrpc.json`"
    )


@pytest.mark.anyio
async def test_rpc_discover_serves_the_same_document(anyio_backend: str) -> None:
    reply = await call_in_process("rpc.discover", None)
    assert reply["result"] == json.loads((CONTRACTS / "openrpc.json").read_text())


def test_openrpc_documents_every_execute_param_with_its_type() -> None:
    document = openrpc()
    (execute,) = [m for m in document["methods"] if m["name"] == "execute"]
    names = {p["name"] for p in execute["params"]}
    assert {"prompt", "messages", "model", "config", "agent_id", "chain_id", "task_type", "metadata"} <= names
    run_config = document["components"]["schemas"]["RunConfig"]["properties"]
    assert {"model_name", "temperature", "max_tokens", "timeout_seconds"} <= set(run_config)


def _table_codes(markdown: str) -> dict[str, int]:
    rows = re.findall(r"^\|\s*(-32\d{3})\s*\|\s*`([a-z_]+)`", markdown, flags=re.M)
    return {type_: int(code) for code, type_ in rows}


def test_protocol_md_lists_every_error_code_the_server_can_send() -> None:
    documented = _table_codes((CONTRACTS / "protocol.md").read_text())
    assert documented == {t: c for c, t in _codes.TYPES_BY_CODE.items()}


def test_the_cli_prints_the_committed_document() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "llm_rpc", "openrpc"], capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(done.stdout) == json.loads((CONTRACTS / "openrpc.json").read_text())
