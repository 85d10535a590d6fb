"""Group commit for the stores that do I/O: operations that arrive while one batch is being written go
together in the next, one worker-thread hop (and one SQLite commit or one Redis script call) for all.

Each operation keeps its own outcome, and no caller goes on before its operation is done (committed,
or applied by the Redis script). There is no background task: the first caller to find nothing in
flight leads, sending batches until its own operation is done, then hands the lead to the oldest
operation still waiting. Waiting is shielded from cancellation: an operation that has been queued
will happen, so its caller must learn the outcome (a ``reserve`` it no longer wants is released by
whoever asked, or by its lease).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread

__all__ = ["Batcher", "Pending"]


class Pending:
    """One queued operation: what to do, then its result or error."""

    __slots__ = ("error", "finished", "lead", "op", "result", "wake")

    def __init__(self, op: Any) -> None:
        self.op = op
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished = False
        self.lead = False
        self.wake = anyio.Event()


class Batcher:
    """Runs ``run(batch)`` on a worker thread, one batch at a time; ``run`` sets each item's outcome."""

    __slots__ = ("_busy", "_max", "_queue", "_run")

    def __init__(self, run: Callable[[list[Pending]], None], max_batch: int = 64) -> None:
        self._run = run
        self._max = max_batch
        self._queue: list[Pending] = []
        self._busy = False

    async def submit(self, op: Any) -> Any:
        """``op``'s result once its batch is done (raises its error)."""
        item = Pending(op)
        self._queue.append(item)
        with anyio.CancelScope(shield=True):
            if self._busy:
                await item.wake.wait()  # done, or handed the lead
            else:
                self._busy = item.lead = True
            if item.lead:
                await self._lead(item)
        if item.error is not None:
            raise item.error
        return item.result

    async def _lead(self, mine: Pending) -> None:
        try:
            while not mine.finished:
                batch = self._queue[: self._max]
                del self._queue[: len(batch)]
                try:
                    await anyio.to_thread.run_sync(self._run, batch)
                except Exception as exc:  # run() sets outcomes itself; this is its own failure
                    for item in batch:
                        item.error = item.error or exc
                for item in batch:
                    item.finished = True
                    if item is not mine:
                        item.wake.set()
        finally:
            if self._queue:
                nxt = self._queue[0]
                nxt.lead = True
                nxt.wake.set()
            else:
                self._busy = False
