"""stdio: JSON-RPC on the process's stdin and stdout.

Pipes and sockets are read and written non-blocking through the event loop (``wait_readable``),
which is both fast and cancellable on asyncio and trio alike; files, ttys and /dev/null, which
cannot be polled, fall back to a worker thread for reads and plain writes. The protocol writes go
to a private duplicate of fd 1, and fd 1 itself is pointed at stderr, so that nothing but
JSON-RPC frames can ever reach stdout, whatever a library prints.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys

import anyio
import anyio.lowlevel
import anyio.to_thread

from llm_rpc.protocol.dispatch import Dispatcher
from llm_rpc.transports._connection import READ_CHUNK, Lifecycle, serve_connection

__all__ = ["StdioChannel", "serve_stdio"]


def _pollable(fd: int) -> bool:
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


class StdioChannel:
    """A byte channel over two file descriptors."""

    def __init__(self, in_fd: int, out_fd: int) -> None:
        self._in = in_fd
        self._out = out_fd
        self._restore: list[tuple[int, bool]] = []
        self._in_polled = _pollable(in_fd)
        self._out_polled = _pollable(out_fd)
        for fd, polled in ((in_fd, self._in_polled), (out_fd, self._out_polled)):
            if polled:
                self._restore.append((fd, os.get_blocking(fd)))
                os.set_blocking(fd, False)

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes:
        if not self._in_polled:
            data = await anyio.to_thread.run_sync(os.read, self._in, max_bytes, abandon_on_cancel=True)
        else:
            try:
                data = os.read(self._in, max_bytes)
            except BlockingIOError:
                await anyio.wait_readable(self._in)
                data = os.read(self._in, max_bytes)
            else:
                # Data was already there: still let other tasks run before the next chunk.
                await anyio.lowlevel.checkpoint()
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            try:
                written = os.write(self._out, view)
            except BlockingIOError:
                await anyio.wait_writable(self._out)
                continue
            except BrokenPipeError as exc:
                raise anyio.BrokenResourceError from exc
            view = view[written:]

    async def aclose(self) -> None:
        for fd, blocking in self._restore:
            with contextlib.suppress(OSError):
                os.set_blocking(fd, blocking)
        self._restore.clear()


def _private_stdout() -> int:
    """A duplicate of fd 1 for protocol frames; fd 1 and sys.stdout then point at stderr."""
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.set_inheritable(out_fd, False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return out_fd


async def serve_stdio(
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    *,
    max_message_bytes: int,
    outbox_limit: int | None = None,
) -> None:
    """Serve stdin/stdout until stdin's EOF or shutdown; EOF asks the whole server to stop."""
    out_fd = _private_stdout()
    channel = StdioChannel(0, out_fd)
    try:
        await serve_connection(
            channel,
            dispatcher,
            lifecycle,
            peer="stdio",
            max_message_bytes=max_message_bytes,
            require_auth=False,
            outbox_limit=outbox_limit,
        )
    finally:
        lifecycle.request_stop("stdin closed")
        with anyio.CancelScope(shield=True):
            await channel.aclose()
        os.close(out_fd)
