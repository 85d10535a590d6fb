"""contracts/routing.md stays true: its config loads and its transcript is what resolve_route answers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import msgspec
import pytest

from llm_rpc.config import load_config
from llm_rpc.core.router import Router

DOC = Path(__file__).resolve().parents[2] / "contracts" / "routing.md"

pytestmark = pytest.mark.anyio


async def test_the_routing_contracts_example_config_and_transcript(tmp_path: Path) -> None:
    text = DOC.read_text()
    (block,) = re.findall(r"```toml\n(.*?)```", text, re.S)
    config = tmp_path / "routing.toml"
    config.write_text(block)
    request, reply = (json.loads(line[2:]) for line in re.findall(r"^[→←] .*$", text, re.M)[:2])
    async with Router(load_config(config)) as router:
        decision = await router.resolve_route(**request["params"])
    assert msgspec.to_builtins(decision) == reply["result"]
    python = re.findall(r"```python\n(.*?)```", text, re.S)[0]
    scope: dict[str, object] = {}
    exec(python, scope)
    assert msgspec.to_builtins(scope["decision"])["model"] == "gemini-3.8-flash"  # haiku-4-5 ships unpriced
