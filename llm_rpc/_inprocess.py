"""Run one JSON-RPC call in-process through the exact server path (``llm-rpc call`` without --tcp)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import msgspec

from llm_rpc.core.router import Router
from llm_rpc.methods import build_table, error_mapper
from llm_rpc.methods.admin import build_openrpc
from llm_rpc.protocol import Dispatcher, MethodTable

__all__ = ["call_in_process", "openrpc"]


class _LocalServer:
    def __init__(self) -> None:
        self.started_at = time.monotonic()

    def in_flight(self) -> int:
        return 0

    def draining(self) -> bool:
        return False

    def request_stop(self, reason: str) -> None:
        return None

    def check_token(self, token: str) -> bool:
        return True


def _table(router: Router) -> MethodTable:
    return build_table(router, _LocalServer())


async def call_in_process(method: str, params: Any, *, config: str | None = None) -> dict[str, Any]:
    """The reply object for one call, as a server would send it."""
    replies: list[bytes] = []
    async with Router.from_config(config) as router:
        dispatcher = Dispatcher(_table(router), error_mapper=error_mapper)
        request: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method}
        if params is not None:
            request["params"] = params
        async with anyio.create_task_group() as tg:
            session = dispatcher.session(tg, replies.append, peer="in-process")
            session.handle_frame(msgspec.json.encode(request))
            await session.wait_idle()
    reply: dict[str, Any] = msgspec.json.decode(replies[0])
    return reply


def openrpc() -> dict[str, Any]:
    """The OpenRPC document for the default configuration."""
    from llm_rpc.config import default_config

    return build_openrpc(_table(Router(default_config(environ={}))))
