"""In-process harness: a Session over a task group, replies captured as decoded JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.lowlevel
import msgspec

from llm_rpc import errors
from llm_rpc.methods import error_mapper
from llm_rpc.protocol import Dispatcher, MethodTable, RequestContext, Session


class Subtract(msgspec.Struct, forbid_unknown_fields=True):
    minuend: int
    subtrahend: int


class Echo(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    value: Any = None
    count: int = 1


class Gate:
    """Lets a test hold a ``slow`` call open until it says so."""

    def __init__(self) -> None:
        self.entered = 0
        self.release = anyio.Event()
        self.started = anyio.Event()


def spec_table(gate: Gate | None = None) -> MethodTable:
    """The methods of the JSON-RPC 2.0 specification's examples, plus a few for edge cases."""
    table = MethodTable()
    gate = gate or Gate()

    def subtract(p: Subtract, ctx: RequestContext) -> int:
        return p.minuend - p.subtrahend

    def sum_(p: list[int], ctx: RequestContext) -> int:
        return sum(p)

    def ignore(p: list[int], ctx: RequestContext) -> None:
        return None

    def get_data(p: list[Any], ctx: RequestContext) -> list[Any]:
        return ["hello", 5]

    async def echo(p: Echo, ctx: RequestContext) -> Any:
        await anyio.lowlevel.checkpoint()
        return p.value

    async def slow(p: Echo, ctx: RequestContext) -> Any:
        gate.entered += 1
        gate.started.set()
        await gate.release.wait()
        return p.value

    async def crash(p: Echo, ctx: RequestContext) -> Any:
        raise RuntimeError(f"boom with secret {p.value}")

    async def limited(p: Echo, ctx: RequestContext) -> Any:
        raise errors.RateLimitedError("upstream said slow down", backend="b1", status=429, retry_after=2.0)

    table.add("subtract", subtract, params=Subtract, result=int, inline=True)
    table.add("sum", sum_, params=list[int], result=int, inline=True)
    table.add("update", ignore, params=list[int], result=None, inline=True)
    table.add("notify_hello", ignore, params=list[int], result=None, inline=True)
    table.add("get_data", get_data, params=list[Any], result=list[Any], inline=True)
    table.add("echo", echo, params=Echo, result=Any)
    table.add("slow", slow, params=Echo, result=Any)
    table.add("crash", crash, params=Echo, result=Any)
    table.add("limited", limited, params=Echo, result=Any)
    return table


class Captured:
    def __init__(self, session: Session, replies: list[bytes]) -> None:
        self.session = session
        self.raw = replies

    def feed(self, frame: bytes | str) -> None:
        self.session.handle_frame(frame.encode() if isinstance(frame, str) else frame)

    async def settle(self) -> list[Any]:
        """Wait until no request is in flight; return (and forget) the replies so far."""
        with anyio.fail_after(5):
            await self.session.wait_idle()
        out = [msgspec.json.decode(r) for r in self.raw]
        self.raw.clear()
        return out


@asynccontextmanager
async def harness(table: MethodTable | None = None, **kwargs: Any) -> AsyncIterator[Captured]:
    dispatcher = Dispatcher(table or spec_table(), error_mapper=error_mapper, **kwargs)
    replies: list[bytes] = []
    async with anyio.create_task_group() as tg:
        yield Captured(dispatcher.session(tg, replies.append, peer="test"), replies)
        tg.cancel_scope.cancel()
