"""The README's first two commands work from a fresh clone in a temporary folder.

This clones the committed HEAD (so it checks what CI and a new user get, not the work tree), lets
``bin/llm-rpc`` create its own ``.venv`` from nothing, runs the one-shot pipe, then runs
``bin/test`` on a small part of the suite (the whole suite would run itself again).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:sh|bash)?\n(.*?)```", text, flags=re.S)
    assert block is not None, "the README must open with a code block"
    return [line for line in block.group(1).splitlines() if line.strip()][:2]


def test_the_readme_opens_with_the_two_commands() -> None:
    first, second = _readme_commands()
    assert first.endswith("| bin/llm-rpc serve --stdio")
    assert '"method":"execute"' in first
    assert second == "bin/test"


@pytest.mark.skipif(os.environ.get("LLM_RPC_INSIDE_README_TEST") == "1", reason="already inside the fresh clone")
def test_the_readme_commands_work_from_a_fresh_clone(tmp_path: Path) -> None:
    if subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, check=False).returncode:
        pytest.fail("the checkout has no commit to clone")
    clone = tmp_path / "llm-rpc"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "LLM_RPC_"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    env["LLM_RPC_INSIDE_README_TEST"] = "1"
    first, second = _readme_commands()

    done = subprocess.run(
        first, shell=True, cwd=clone, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = done.stdout.splitlines()
    reply = json.loads(line)
    assert reply["result"]["content"] == "Mock answer to: Hello"
    assert (clone / ".venv" / "bin" / "python").exists()

    done = subprocess.run(
        f"{second} tests/test_readme.py tests/protocol/test_spec_examples.py -q",
        shell=True,
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert re.search(r"\d+ passed", done.stdout)
    shutil.rmtree(clone, ignore_errors=True)
