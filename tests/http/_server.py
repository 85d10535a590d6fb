"""HTTP servers for the tests: the whole ``serve`` on loopback, or an HTTP listener over any table."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc

from llm_rpc.protocol import Dispatcher, MethodTable
from llm_rpc.server import ServeOptions, serve
from llm_rpc.transports import Lifecycle
from llm_rpc.transports.http import HttpSettings, HttpStats, serve_http


@dataclass
class Listener:
    url: str
    host: str
    port: int
    stats: HttpStats
    lifecycle: Lifecycle


@asynccontextmanager
async def running(**options: Any) -> AsyncIterator[str]:
    """``llm-rpc serve --http 127.0.0.1:0`` in process (mock config); yields the base URL."""
    async with anyio.create_task_group() as tg:
        bound = await tg.start(serve, ServeOptions(http=[("127.0.0.1", 0)], **options))
        ((host, port),) = bound["http"]
        yield f"http://{host}:{port}"
        tg.cancel_scope.cancel()


@asynccontextmanager
async def listening(table: MethodTable, **settings: Any) -> AsyncIterator[Listener]:
    """Just the HTTP transport over ``table`` (for test-only methods)."""
    lifecycle = Lifecycle(drain_timeout=5.0)
    stats = HttpStats()
    dispatcher = Dispatcher(table)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(
            lambda task_status: serve_http(
                dispatcher,
                lifecycle,
                tg,
                host="127.0.0.1",
                port=0,
                settings=HttpSettings(**settings),
                stats=stats,
                task_status=task_status,
            )
        )
        yield Listener(f"http://{host}:{port}", host, port, stats, lifecycle)
        tg.cancel_scope.cancel()


def sse_events(text: str) -> list[Any]:
    """The JSON ``data`` of each Server-Sent Event in ``text``."""
    events = []
    for block in text.split("\n\n"):
        data = [line[len("data: ") :] for line in block.splitlines() if line.startswith("data: ")]
        if data:
            events.append(json.loads("\n".join(data)))
    return events


async def raw_exchange(stream: anyio.abc.ByteStream, request: bytes) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    await stream.send(request)
    received = b""
    with anyio.fail_after(10):
        while True:
            try:
                received += await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionResetError):
                return received
