"""A server subprocess driven over real pipes, with a reader thread so waits can be bounded."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


PROVIDER_KEY_VARS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GEMINI_API_KEY", "XAI_API_KEY", "OPENROUTER_API_KEY")


def server_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """A hermetic environment: this checkout importable, no user config, no real provider keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_RPC_") and k not in PROVIDER_KEY_VARS}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


def _readline(stream: Any) -> bytes:
    try:
        data: bytes = stream.readline()
    except (OSError, ValueError):
        return b""
    return data


def _read1(stream: Any) -> bytes:
    try:
        data: bytes = stream.read1(65536)
    except (OSError, ValueError):
        return b""
    return data


class ServerProcess:
    """``llm-rpc serve ...`` as a child; stdout read line by line (or raw) on a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_rpc", "serve", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=server_env(env),
        )
        self._out: queue.Queue[bytes] = queue.Queue()
        self.raw_stdout = bytearray()
        self.stderr_lines: list[str] = []
        self._stderr_seen = threading.Condition()
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self.proc.stdout is not None
        while chunk := _read1(self.proc.stdout):
            self.raw_stdout += chunk
            self._out.put(chunk)
        self._out.put(b"")

    def _pump_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(lambda: _readline(self.proc.stderr), b""):
            with self._stderr_seen:
                self.stderr_lines.append(line.decode(errors="replace"))
                self._stderr_seen.notify_all()

    def wait_stderr(self, predicate: Any, timeout: float = 10) -> str:
        with self._stderr_seen:
            ok = self._stderr_seen.wait_for(lambda: any(predicate(line) for line in self.stderr_lines), timeout=timeout)
        assert ok, f"stderr never matched; got {self.stderr_lines!r}"
        return next(line for line in self.stderr_lines if predicate(line))

    def send(self, data: bytes | str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data.encode() if isinstance(data, str) else data)
        self.proc.stdin.flush()

    def request(self, message: dict[str, Any]) -> None:
        self.send(json.dumps(message) + "\n")

    def close_stdin(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()

    _pending = b""

    def read_line(self, timeout: float = 10) -> Any:
        """The next NDJSON reply, decoded."""
        while b"\n" not in self._pending:
            chunk = self._out.get(timeout=timeout)
            if not chunk:
                raise EOFError("server closed stdout")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return json.loads(line)

    def read_all(self, timeout: float = 20) -> list[Any]:
        """Every remaining reply until stdout closes (after stdin EOF)."""
        out = []
        while True:
            try:
                out.append(self.read_line(timeout))
            except EOFError:
                return out

    def wait(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """Stop the child if still running and close every pipe."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=5)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
