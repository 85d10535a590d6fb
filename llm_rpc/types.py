"""Public wire types shared by every layer: what callers send and what they get back.

Structs for what clients send forbid unknown fields, so a typo is an error with its path; replies
omit fields left at their defaults. The same Structs generate contracts/openrpc.json.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct, field

__all__ = [
    "AgentUsage",
    "BackendHealth",
    "BatchItem",
    "BatchSummary",
    "BudgetHealth",
    "BudgetOverrun",
    "BudgetRemaining",
    "Capability",
    "Complexity",
    "ErrorObject",
    "ExecuteBatchParams",
    "ExecuteBatchResult",
    "ExecuteParams",
    "ExecuteResult",
    "HealthResult",
    "Message",
    "MockOptions",
    "ResolveRouteParams",
    "RouteCandidate",
    "RouteDecision",
    "RunConfig",
    "Strategy",
    "ToolCall",
    "Usage",
    "UsageCounts",
    "UsageReport",
    "UsageResetResult",
]

Role = Literal["system", "developer", "user", "assistant", "tool"]
Strategy = Literal["failover", "round-robin", "least-loaded", "latency"]
FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "error"]
#: What a backend can do, as routing rules ``require`` it (contracts/routing.md).
Capability = Literal["tools", "json_schema", "vision", "local", "long_context"]
#: The complexity tiers of the task classifier, lowest first.
Complexity = Literal["simple", "moderate", "complex", "critical"]
PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
NonNegativeFloat = Annotated[float, Meta(ge=0)]


class _In(Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """Base of Structs decoded from client input: unknown keys are rejected with their path."""


class _Out(Struct, kw_only=True, omit_defaults=True):
    """Base of reply Structs: fields left at their default are omitted from the wire."""


class ToolCall(_Out):
    """One tool call requested by the model; ``arguments`` is a JSON string, exactly as produced."""

    id: str
    name: str
    arguments: str
    type: Literal["function"] = "function"


class Message(_In):
    """An OpenAI-style chat message."""

    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None


class RunConfig(_In):
    """llm-connect's RunConfig: every field optional, llm-connect's names."""

    model_name: str | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    max_tokens: PositiveInt | None = None
    timeout_seconds: PositiveFloat | None = None
    #: Streaming: fail over a provider that accepts the request but streams nothing for this long.
    first_token_timeout_seconds: PositiveFloat | None = None


class MockOptions(_In):
    """Per-request overrides for the built-in ``mock`` provider, for clients' own tests."""

    latency_ms: NonNegativeFloat | None = None
    stream_delay_ms: NonNegativeFloat | None = None
    fail_rate: Annotated[float, Meta(ge=0, le=1)] | None = None
    fail_type: str | None = None


class ExecuteParams(_In):
    """Params of ``execute``: one prompt or one message list, and how to run it."""

    prompt: str | None = None
    messages: Annotated[list[Message], Meta(min_length=1)] | None = None
    model: str | None = None
    config: RunConfig | None = None
    agent_id: str | None = None
    chain_id: str | None = None
    task_type: str | None = None
    metadata: dict[str, Any] | None = None
    mock: MockOptions | None = None
    strategy: Strategy | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    stop: list[str] | None = None
    include_raw: bool = False
    stream: bool = False
    #: Routing (contracts/routing.md): labels matched by rules' ``tags``, and a cap on the call's
    #: estimated cost; a call with no ``model`` is routed by the ``[routing]`` policy.
    tags: list[str] | None = None
    max_cost_usd: NonNegativeFloat | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("exactly one of `prompt` and `messages` is required")

    def chat_messages(self) -> list[Message]:
        """The conversation as messages (``prompt`` becomes one user message)."""
        if self.messages is not None:
            return self.messages
        return [Message(role="user", content=self.prompt)]

    def requested_model(self) -> str | None:
        """``model``, else llm-connect's ``config.model_name`` alias."""
        if self.model is not None:
            return self.model
        return self.config.model_name if self.config is not None else None


class Usage(_Out):
    """Token counts; ``prompt_tokens`` includes cached input, ``completion_tokens`` reasoning."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None


class RouteCandidate(_Out):
    """One model on one backend that a routing decision considered; ``rejected_because`` says why not."""

    provider: str
    model: str
    backend: str | None
    #: USD per 1,000 tokens, blended by the rule's input:output ratio; null when the model has no price.
    cost_per_1k: float | None
    #: The backend's observed latency (moving average); null until measured.
    latency_ms: float | None
    rejected_because: str | None = None


class RouteDecision(_Out):
    """Where a call goes, and why (``resolve_route``; ``route`` in an ``execute`` result)."""

    provider: str
    model: str
    backend: str | None
    #: The rule that matched (its ``name``, else ``rules[i]``); null when complexity routing chose.
    rule: str | None
    complexity: Complexity | None
    reason: str
    estimated_cost_usd: float | None
    estimated_tokens: int
    candidates: list[RouteCandidate]


class ResolveRouteParams(_In):
    """Params of ``resolve_route``: a dry run of routing, with the inputs an ``execute`` would give."""

    task_type: str | None = None
    #: The task's text (an ``execute``'s last user message), for the complexity classifier.
    task: str | None = None
    model: str | None = None
    #: Tokens the call may spend in all (prompt and answer); default: estimated from ``task`` and ``max_tokens``.
    estimated_tokens: Annotated[int, Meta(ge=0)] | None = None
    chain_id: str | None = None
    tags: list[str] | None = None
    agent_id: str | None = None
    max_tokens: PositiveInt | None = None
    max_cost_usd: NonNegativeFloat | None = None
    #: Capabilities the call needs (an ``execute`` with ``tools`` or ``response_format`` implies them).
    require: list[Capability] | None = None


class ExecuteResult(_Out):
    """The normalized result of ``execute``, whichever provider answered."""

    content: str | None
    model: str
    provider: str
    backend: str
    usage: Usage
    finish_reason: FinishReason
    latency_ms: float
    cost_usd: float | None
    metadata: dict[str, Any]
    tool_calls: list[ToolCall] | None = None
    native_finish_reason: str | None = None
    id: str | None = None
    attempts: int = 1
    #: llm-rpc's own time for the call (contracts/execute.md, "What overhead_us counts").
    overhead_us: (
        Annotated[
            float,
            Meta(
                description="llm-rpc's own time for this call, in microseconds: from the request's arrival to "
                "its reply, less the upstream exchanges and the waits for limits, cooldowns and backoffs "
                '(contracts/execute.md, "What overhead_us counts")'
            ),
        ]
        | None
    ) = None
    raw: msgspec.Raw | None = None
    #: The routing decision, when the call named no ``model`` and the ``[routing]`` policy chose.
    route: RouteDecision | None = None
    #: The chain's budget after this call, when it ran on one (``chain_id``; contracts/budgets.md).
    budget: BudgetRemaining | None = None


class BudgetOverrun(_Out):
    """Spend recorded beyond what was reserved (a provider that went past ``max_tokens``)."""

    tokens: int = 0
    usd: float = 0.0


class BudgetRemaining(_Out):
    """A chain's budget after a call: what a new call may still reserve (null: no such limit)."""

    chain_id: str
    remaining_tokens: int | None
    remaining_usd: float | None
    #: Present when this call spent more than it had reserved; recorded on the chain too.
    overrun: BudgetOverrun | None = None


class BudgetHealth(Struct, kw_only=True):
    """The budget store as ``health`` reports it; ``recovered_*``: reservations found in flight at
    start (SQLite, after a crash), settled at what they had reserved."""

    #: ``memory``, ``sqlite`` or ``redis``.
    store: str
    location: str
    recovered_reservations: int = 0
    recovered_tokens: int = 0
    recovered_usd: float = 0.0


class BackendHealth(Struct, kw_only=True):
    """One backend as ``health`` reports it: every field always present (null when unknown)."""

    name: str
    provider: str
    state: Literal["healthy", "cooling_down", "probing"] = "healthy"
    in_flight: int = 0
    key: Literal["set", "missing", "not_needed"] = "not_needed"
    #: Share of recent calls that failed (exponentially weighted, about the last 10 calls).
    error_rate: float = 0.0
    #: Moving average of recent successful calls' latency; absent until one succeeded.
    latency_ms: float | None = None
    #: Seconds left before a cooling-down backend gets its probe request.
    cooldown_s: float | None = None


class HealthResult(_Out):
    """The result of ``health``."""

    status: Literal["ok", "draining"]
    version: str
    uptime_s: float
    in_flight: int
    backends: list[BackendHealth]
    budgets: BudgetHealth | None = None


class UsageCounts(Struct, kw_only=True):
    """Counters of one agent, overall or for one backend or model (every field always present)."""

    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0


class AgentUsage(Struct, kw_only=True):
    """What one agent spent: totals, and the same counters by backend and by model.

    Totals and ``by_model`` count calls (``errors``: calls that failed); ``by_backend`` counts the
    attempts sent to each backend (``errors``: attempts that failed there).
    """

    agent_id: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: float = 0.0
    by_backend: dict[str, UsageCounts] = msgspec.field(default_factory=dict)
    by_model: dict[str, UsageCounts] = msgspec.field(default_factory=dict)


class UsageReport(Struct, kw_only=True):
    """The result of ``usage.get``: agent id → its usage."""

    agents: dict[str, AgentUsage]


class UsageResetResult(Struct, kw_only=True):
    """The result of ``usage.reset``: the agents whose counters were cleared."""

    reset: list[str]


class ExecuteBatchParams(_In):
    """Params of ``execute_batch``: many ``execute`` params run at once."""

    items: Annotated[list[ExecuteParams], Meta(min_length=1, max_length=10_000)]
    concurrency: PositiveInt | None = None
    chain_id: str | None = None
    fail_fast: bool = False


class ErrorObject(_Out):
    """A JSON-RPC error object, as one batch item's outcome."""

    code: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class BatchItem(_Out):
    """One item's outcome: exactly one of ``ok`` and ``error``."""

    ok: ExecuteResult | None = None
    error: ErrorObject | None = None


class BatchSummary(_Out):
    ok: int
    failed: int
    total_tokens: int
    cost_usd: float | None
    wall_ms: float


class ExecuteBatchResult(_Out):
    """Results in input order, and the batch's totals."""

    results: list[BatchItem]
    summary: BatchSummary
