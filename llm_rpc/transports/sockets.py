"""TCP and Unix-socket listeners: one connection task per accepted socket, in the server's task group.

Accept loops stop at shutdown while accepted connections drain, which is why this does not use
``Listener.serve`` (its task group would cancel them).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import stat
import sys
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec

from llm_rpc.protocol.dispatch import Dispatcher
from llm_rpc.transports._connection import Lifecycle, serve_connection

__all__ = ["announce", "serve_tcp", "serve_unix"]

log = logging.getLogger("llm_rpc.transport")


def announce(event: dict[str, Any]) -> None:
    """One JSON line on stderr (e.g. the port chosen for port 0), whatever the log level."""
    sys.stderr.write(msgspec.json.encode(event).decode() + "\n")
    sys.stderr.flush()


async def serve_tcp(
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    task_group: anyio.abc.TaskGroup,
    *,
    host: str,
    port: int,
    max_message_bytes: int,
    on_bound: Callable[[str, int], None] | None = None,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
    bound_host, bound_port = str(sockname[0]), int(sockname[1])
    announce({"event": "listening", "transport": "tcp", "host": bound_host, "port": bound_port})
    task_status.started((bound_host, bound_port))
    async with listener:
        await _accept_loop(listener.listeners, dispatcher, lifecycle, task_group, max_message_bytes, "tcp")


async def serve_unix(
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    task_group: anyio.abc.TaskGroup,
    *,
    path: str,
    max_message_bytes: int,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.stat(path).st_mode) and not _socket_in_use(path):
            os.unlink(path)
    listener = await anyio.create_unix_listener(path, mode=0o600)
    announce({"event": "listening", "transport": "unix", "path": path})
    task_status.started(path)
    try:
        async with listener:
            await _accept_loop([listener], dispatcher, lifecycle, task_group, max_message_bytes, "unix")
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _socket_in_use(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    else:
        return True
    finally:
        probe.close()


async def _accept_loop(
    listeners: Any,
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    task_group: anyio.abc.TaskGroup,
    max_message_bytes: int,
    kind: str,
) -> None:
    async def handle(stream: anyio.abc.SocketStream) -> None:
        try:
            addr = stream.extra(anyio.abc.SocketAttribute.remote_address)
            peer = f"{kind}:{addr[0]}:{addr[1]}" if isinstance(addr, tuple) else f"{kind}:{addr or 'peer'}"
        except (OSError, anyio.TypedAttributeLookupError):
            peer = kind
        await serve_connection(
            stream, dispatcher, lifecycle, peer=peer, max_message_bytes=max_message_bytes, eof_is_disconnect=True
        )

    async def accept_from(listener: Any) -> None:
        while True:
            try:
                stream = await listener.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                log.warning("accept failed", extra={"transport": kind, "error": type(exc).__name__})
                await anyio.sleep(0.05)
                continue
            task_group.start_soon(handle, stream)

    with anyio.CancelScope() as scope:
        lifecycle.register(scope)
        try:
            async with anyio.create_task_group() as tg:
                for listener in listeners:
                    tg.start_soon(accept_from, listener)
        finally:
            lifecycle.unregister(scope)
