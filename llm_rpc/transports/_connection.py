"""One connection, whatever carries it: a read loop, one writer task and a bounded outbox.

The read loop frames bytes and hands each message to the Session, which never blocks it. Replies
go into the outbox whole and the single writer drains it, so replies are never interleaved and a
burst of replies leaves in one write. On EOF (or server shutdown) reading stops, in-flight
requests get ``drain_timeout`` to finish, the outbox is flushed and the connection closes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc

from llm_rpc.protocol.dispatch import Dispatcher, Session
from llm_rpc.protocol.framing import Framer, detect_framer

__all__ = ["ByteChannel", "Lifecycle", "Outbox", "serve_connection"]

log = logging.getLogger("llm_rpc.transport")

READ_CHUNK = 65536
DEFAULT_OUTBOX_LIMIT = 64 * 1024 * 1024


class ByteChannel(Protocol):
    """The byte stream a transport provides (anyio's ByteStream fits)."""

    async def receive(self, max_bytes: int = READ_CHUNK) -> bytes: ...

    async def send(self, item: bytes) -> None: ...

    async def aclose(self) -> None: ...


class Lifecycle:
    """Server-wide stop signal: every connection's read loop and every accept loop registers here."""

    def __init__(self, drain_timeout: float = 30.0, outbox_limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        self.drain_timeout = drain_timeout
        #: Bytes of replies buffered for a connection that does not read before it is closed.
        self.outbox_limit = outbox_limit
        self.stopping = anyio.Event()
        self._scopes: set[anyio.CancelScope] = set()

    def register(self, scope: anyio.CancelScope) -> None:
        if self.stopping.is_set():
            scope.cancel()
        self._scopes.add(scope)

    def unregister(self, scope: anyio.CancelScope) -> None:
        self._scopes.discard(scope)

    def request_stop(self, reason: str = "") -> None:
        """Stop reading everywhere; in-flight requests drain. Safe to call more than once."""
        if not self.stopping.is_set():
            log.info("stopping", extra={"reason": reason})
            self.stopping.set()
        for scope in list(self._scopes):
            scope.cancel()


class Outbox:
    """Framed replies waiting for the writer. Past ``limit`` bytes the reader is too slow: overflow."""

    def __init__(self, limit: int = DEFAULT_OUTBOX_LIMIT) -> None:
        self.limit = limit
        self.overflowed = False
        #: Called once when the limit is passed (the writer may be stuck in a send that never ends).
        self.on_overflow: Callable[[], None] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._closed = False
        self._ready = anyio.Event()

    def put(self, data: bytes) -> None:
        if self._closed:
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > self.limit:
            self.overflowed = True
            self._closed = True
            self._chunks.clear()
            if self.on_overflow is not None:
                self.on_overflow()
        self._ready.set()

    async def get(self) -> bytes:
        """The next batch of bytes to write; b"" once closed and empty."""
        while not self._chunks:
            if self._closed:
                return b""
            self._ready = anyio.Event()
            await self._ready.wait()
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    def close(self) -> None:
        self._closed = True
        self._ready.set()


async def serve_connection(
    channel: ByteChannel,
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    *,
    peer: str,
    max_message_bytes: int,
    require_auth: bool | None = None,
    outbox_limit: int | None = None,
    eof_is_disconnect: bool = False,
) -> None:
    """Serve JSON-RPC on one byte channel until EOF or shutdown, then drain and close it.

    At shutdown every connection drains (in-flight requests get ``drain_timeout``). At EOF, stdin
    drains too (the parent has sent its last request and waits for the replies), while a socket
    client's EOF means it is gone (``eof_is_disconnect``): its in-flight requests are cancelled,
    so no upstream call or reservation outlives it.
    """
    outbox = Outbox(lifecycle.outbox_limit if outbox_limit is None else outbox_limit)
    framer_slot: list[Framer] = []

    def send(body: bytes) -> None:
        outbox.put(framer_slot[0].encode(body))

    try:
        async with anyio.create_task_group() as conn_tg:
            conn_tg.start_soon(_write_loop, channel, outbox, conn_tg.cancel_scope, peer)

            def overflow() -> None:
                log.warning(
                    "reader too slow: closing connection",
                    extra={"peer": peer, "limit": "outbox_bytes", "outbox_limit": outbox.limit},
                )
                conn_tg.cancel_scope.cancel()

            outbox.on_overflow = overflow
            try:
                async with anyio.create_task_group() as req_tg:
                    session = dispatcher.session(req_tg, send, peer=peer, require_auth=require_auth)
                    with anyio.CancelScope() as read_scope:
                        lifecycle.register(read_scope)
                        try:
                            await _read_loop(channel, session, framer_slot, max_message_bytes)
                        finally:
                            lifecycle.unregister(read_scope)
                    if eof_is_disconnect and session.active and not read_scope.cancel_called:
                        # The client is gone: stop paying for answers nobody will read.
                        log.info("peer disconnected: cancelling its requests", extra={"peer": peer})
                        session.cancel_all("the client disconnected")
                        with anyio.move_on_after(1.0):
                            await session.wait_idle()
                    if session.active:
                        with anyio.move_on_after(lifecycle.drain_timeout):
                            await session.wait_idle()
                    if session.active:
                        log.warning(
                            "drain timeout: cancelling requests", extra={"peer": peer, "requests": session.active}
                        )
                        session.cancel_all("the server stopped before the request finished (drain timeout)")
                        with anyio.move_on_after(1.0):
                            await session.wait_idle()
                    session.closed = True
                    req_tg.cancel_scope.cancel()
            finally:
                outbox.close()
    finally:
        with anyio.CancelScope(shield=True):
            with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                await channel.aclose()


async def _read_loop(channel: ByteChannel, session: Session, framer_slot: list[Framer], max_bytes: int) -> None:
    pending = b""
    perf = time.perf_counter
    while True:
        try:
            data = await channel.receive(READ_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        arrived = perf()  # every message in this chunk arrived now (for overhead_us)
        if not framer_slot:
            pending += data
            framer = detect_framer(pending, max_bytes)
            if framer is None:
                pending = b""
                continue
            framer_slot.append(framer)
            data, pending = pending, b""
        for item in framer_slot[0].feed(data):
            try:
                if isinstance(item, bytes):
                    session.handle_frame(item, arrived)
                else:
                    session.handle_frame_error(item)
            except Exception:
                # A bug in dispatch must cost one message, not the connection.
                log.exception("failed to handle a message", extra={"peer": session.peer})


async def _write_loop(channel: ByteChannel, outbox: Outbox, conn_scope: anyio.CancelScope, peer: str) -> None:
    while True:
        data = await outbox.get()
        if not data:
            break
        try:
            await channel.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            log.info("peer went away: cancelling its requests", extra={"peer": peer})
            conn_scope.cancel()
            return
