"""``resolve_route``: a dry run of the routing policy (contracts/routing.md)."""

from __future__ import annotations

from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.protocol.registry import NOT_INLINE
from llm_rpc.types import ResolveRouteParams, RouteDecision

__all__ = ["register"]


def register(table: MethodTable, router: Router) -> None:
    async def resolve_route(params: ResolveRouteParams, ctx: RequestContext) -> RouteDecision:
        """Where a call with these inputs would go now, and why: the chosen provider, model and backend, the
        rule or complexity tier that chose, the estimated cost, and every candidate considered with the
        reason it was rejected. Nothing is sent upstream and no state changes."""
        return await router.resolve_route(params)

    def resolve_route_nowait(params: ResolveRouteParams, ctx: RequestContext) -> RouteDecision | object:
        # Answered in the read loop unless a chain's budget must be awaited first.
        decision = router.resolve_route_nowait(params)
        return NOT_INLINE if decision is None else decision

    table.add(
        "resolve_route",
        resolve_route,
        try_inline=resolve_route_nowait,
        params=ResolveRouteParams,
        result=RouteDecision,
        summary="Dry-run the routing policy",
        errors=("no_route",),
    )
