"""The public surface is a decision: ``llm_rpc.__all__`` is exactly what resolves, and layers import one way."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llm_rpc

PACKAGE = Path(llm_rpc.__file__).resolve().parent


def test_all_names_resolve_and_are_sorted() -> None:
    assert llm_rpc.__all__ == sorted(llm_rpc.__all__)
    for name in llm_rpc.__all__:
        assert getattr(llm_rpc, name) is not None


def test_importing_the_package_does_not_import_httpx_or_the_providers() -> None:
    code = (
        "import sys, llm_rpc.cli, llm_rpc.server; "
        "print(sorted(m for m in sys.modules if 'httpx' in m or m.startswith('llm_rpc.providers.')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    loaded = eval(done.stdout)
    assert not [m for m in loaded if "httpx" in m]
    assert "llm_rpc.providers.openai" not in loaded


# Which llm_rpc packages each layer may import (leaf modules are allowed everywhere).
LEAVES = {
    "llm_rpc.types",
    "llm_rpc.errors",
    "llm_rpc.config",
    "llm_rpc._secret",
    "llm_rpc._codes",
    "llm_rpc._version",
    "llm_rpc._log",
}
ALLOWED = {
    "protocol": {"protocol"},
    "transports": {"transports", "protocol"},
    "methods": {"methods", "protocol", "core"},
    "core": {"core", "providers"},
    "providers": {"providers"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {m for m in found if m.startswith("llm_rpc")}


def test_layers_import_in_one_direction_only() -> None:
    violations = []
    for layer, allowed in ALLOWED.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            for module in _imports(path):
                if module in LEAVES or module == "llm_rpc":
                    continue
                parts = module.split(".")
                target = parts[1] if len(parts) > 1 else ""
                if target not in allowed:
                    violations.append(f"{path.relative_to(PACKAGE)} imports {module}")
    protocol_errors = [
        f"{p.relative_to(PACKAGE)}" for p in (PACKAGE / "protocol").rglob("*.py") if "llm_rpc.errors" in _imports(p)
    ]
    assert not violations
    assert not protocol_errors, "protocol/ must not import the domain errors"
