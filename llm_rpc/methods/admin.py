"""Server methods: ``health``, ``shutdown``, ``rpc.discover``, ``auth`` and cancellation."""

from __future__ import annotations

import time
from typing import Any, Protocol

import msgspec

from llm_rpc import _codes
from llm_rpc._version import __version__
from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext, RpcError
from llm_rpc.protocol.openrpc import openrpc_document
from llm_rpc.types import HealthResult

__all__ = ["ServerHooks", "register"]


class ServerHooks(Protocol):
    """What the methods need from the running server (it lives above this layer)."""

    started_at: float

    def in_flight(self) -> int: ...

    def draining(self) -> bool: ...

    def request_stop(self, reason: str) -> None: ...

    def check_token(self, token: str) -> bool: ...


class _In(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class NoParams(_In):
    """This method takes no params (an empty object or array, or none)."""


class AuthParams(_In):
    token: str


class AuthResult(msgspec.Struct):
    authenticated: bool


class ShutdownResult(msgspec.Struct):
    stopping: bool


class CancelParams(_In):
    id: str | int


class CancelResult(msgspec.Struct):
    cancelled: bool


class McpCancelledParams(_In):
    requestId: str | int
    reason: str | None = None


def register(table: MethodTable, router: Router, server: ServerHooks) -> None:
    def health(params: NoParams, ctx: RequestContext) -> HealthResult:
        """Liveness and load: version, uptime, requests in flight, backends."""
        return HealthResult(
            status="draining" if server.draining() else "ok",
            version=__version__,
            uptime_s=round(time.monotonic() - server.started_at, 3),
            in_flight=server.in_flight(),
            backends=router.health(),
            budgets=router.budgets.health(),
        )

    def shutdown(params: NoParams, ctx: RequestContext) -> ShutdownResult:
        """Stop gracefully, as on EOF: stop reading, finish in-flight requests, flush, exit 0."""
        server.request_stop("shutdown requested")
        return ShutdownResult(stopping=True)

    document: dict[str, Any] = {}

    def discover(params: NoParams, ctx: RequestContext) -> dict[str, Any]:
        """The OpenRPC document of this server (contracts/openrpc.json)."""
        if not document:
            document.update(build_openrpc(table))
        return document

    def auth(params: AuthParams, ctx: RequestContext) -> AuthResult:
        """Authenticate this connection with the token named by the server's --auth-token-env."""
        if not server.check_token(params.token):
            raise RpcError(_codes.DOMAIN_CODES["unauthorized"], "Unauthorized: bad token", {"type": "unauthorized"})
        ctx.session.authenticated = True
        return AuthResult(authenticated=True)

    def cancel(params: CancelParams, ctx: RequestContext) -> CancelResult:
        """Cancel an in-flight request of this connection; it answers -32800. Unknown ids: false."""
        return CancelResult(cancelled=ctx.session.cancel(params.id))

    def lsp_cancel(params: CancelParams, ctx: RequestContext) -> None:
        """LSP's $/cancelRequest notification."""
        ctx.session.cancel(params.id)

    def mcp_cancelled(params: McpCancelledParams, ctx: RequestContext) -> None:
        """MCP's notifications/cancelled notification."""
        ctx.session.cancel(params.requestId)

    table.add("health", health, params=NoParams, result=HealthResult, summary="Server health", inline=True)
    table.add("shutdown", shutdown, params=NoParams, result=ShutdownResult, summary="Graceful stop", inline=True)
    table.add(
        "rpc.discover",
        discover,
        params=NoParams,
        result=dict[str, Any],
        summary="OpenRPC document",
        inline=True,
    )
    table.add(
        "auth",
        auth,
        params=AuthParams,
        result=AuthResult,
        summary="Authenticate this connection",
        inline=True,
        errors=("unauthorized",),
    )
    table.add("cancel", cancel, params=CancelParams, result=CancelResult, summary="Cancel a request", inline=True)
    table.add(
        "$/cancelRequest",
        lsp_cancel,
        params=CancelParams,
        result=None,
        summary="Cancel a request (LSP)",
        inline=True,
        notification=True,
    )
    table.add(
        "notifications/cancelled",
        mcp_cancelled,
        params=McpCancelledParams,
        result=None,
        summary="Cancel a request (MCP)",
        inline=True,
        notification=True,
    )


def build_openrpc(table: MethodTable) -> dict[str, Any]:
    return openrpc_document(
        table,
        title="llm-rpc",
        version=__version__,
        description="JSON-RPC 2.0 gateway to LLM providers. See contracts/protocol.md.",
        error_codes={**_codes.DOMAIN_CODES},
    )
