"""``usage.get`` and ``usage.reset``: what each agent has spent, from the router's counters."""

from __future__ import annotations

import msgspec

from llm_rpc.core.router import Router
from llm_rpc.protocol import MethodTable, RequestContext
from llm_rpc.types import UsageReport, UsageResetResult

__all__ = ["UsageParams", "register"]


class UsageParams(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One agent (``agent_id``), or every agent when it is omitted."""

    agent_id: str | None = None


def register(table: MethodTable, router: Router) -> None:
    def get(params: UsageParams, ctx: RequestContext) -> UsageReport:
        """Usage by agent: requests, errors, tokens and cost, in total and by backend and model."""
        if params.agent_id is not None:
            return UsageReport(agents={params.agent_id: router.get_agent_usage(params.agent_id)})
        return UsageReport(agents=router.get_all_usage())

    def reset(params: UsageParams, ctx: RequestContext) -> UsageResetResult:
        """Clear one agent's usage counters, or every agent's."""
        return UsageResetResult(reset=router.reset_agent_usage(params.agent_id))

    table.add("usage.get", get, params=UsageParams, result=UsageReport, summary="Usage per agent", inline=True)
    table.add(
        "usage.reset", reset, params=UsageParams, result=UsageResetResult, summary="Clear usage counters", inline=True
    )
