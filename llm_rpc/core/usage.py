"""Usage per agent: every call accounted to its ``agent_id`` (or ``"anonymous"``), backend and model.

Counters are plain slotted objects updated in place (a call touches three of them), and become the
public ``AgentUsage`` Structs only when someone asks. Totals and ``by_model`` count calls;
``by_backend`` counts the attempts each backend received, so a call that failed over shows as an
error on the backend that failed and a request on the one that answered.
"""

from __future__ import annotations

from llm_rpc.types import AgentUsage, Usage, UsageCounts

__all__ = ["ANONYMOUS", "UsageTracker"]

ANONYMOUS = "anonymous"


class _Counts:
    __slots__ = ("completion_tokens", "cost_usd", "errors", "prompt_tokens", "requests", "total_tokens")

    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.total_tokens = 0
        self.cost_usd = 0.0

    def add(self, usage: Usage, cost: float | None) -> None:
        self.requests += 1
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        self.total_tokens += usage.total_tokens
        if cost:
            self.cost_usd += cost

    def fail(self) -> None:
        self.requests += 1
        self.errors += 1

    def view(self) -> UsageCounts:
        return UsageCounts(
            requests=self.requests,
            errors=self.errors,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            cost_usd=round(self.cost_usd, 9),
        )


class _Agent:
    __slots__ = ("by_backend", "by_model", "total")

    def __init__(self) -> None:
        self.total = _Counts()
        self.by_backend: dict[str, _Counts] = {}
        self.by_model: dict[str, _Counts] = {}

    def backend(self, name: str) -> _Counts:
        counts = self.by_backend.get(name)
        if counts is None:
            counts = self.by_backend[name] = _Counts()
        return counts

    def model(self, name: str) -> _Counts:
        counts = self.by_model.get(name)
        if counts is None:
            counts = self.by_model[name] = _Counts()
        return counts


class UsageTracker:
    """In-memory usage counters for the life of the process."""

    __slots__ = ("_agents",)

    def __init__(self) -> None:
        self._agents: dict[str, _Agent] = {}

    def _agent(self, agent_id: str | None) -> _Agent:
        key = agent_id or ANONYMOUS
        agent = self._agents.get(key)
        if agent is None:
            agent = self._agents[key] = _Agent()
        return agent

    def success(
        self,
        agent_id: str | None,
        model: str,
        backend: str,
        usage: Usage,
        cost: float | None,
        failed: list[str] | None = None,
    ) -> None:
        """A call answered by ``backend``; ``failed`` lists the backends of earlier failed attempts."""
        agent = self._agent(agent_id)
        agent.total.add(usage, cost)
        agent.model(model).add(usage, cost)
        agent.backend(backend).add(usage, cost)
        if failed:
            for name in failed:
                agent.backend(name).fail()

    def failure(self, agent_id: str | None, model: str, failed: list[str]) -> None:
        """A call that failed; ``failed`` lists the backend of each attempt (none: nothing was sent)."""
        agent = self._agent(agent_id)
        agent.total.fail()
        agent.model(model).fail()
        for name in failed:
            agent.backend(name).fail()

    def get(self, agent_id: str | None) -> AgentUsage:
        """One agent's usage (all zeros for an agent never seen)."""
        key = agent_id or ANONYMOUS
        agent = self._agents.get(key)
        if agent is None:
            return AgentUsage(agent_id=key)
        t = agent.total
        return AgentUsage(
            agent_id=key,
            requests=t.requests,
            errors=t.errors,
            prompt_tokens=t.prompt_tokens,
            completion_tokens=t.completion_tokens,
            total_tokens=t.total_tokens,
            cost_usd=round(t.cost_usd, 9),
            by_backend={name: c.view() for name, c in agent.by_backend.items()},
            by_model={name: c.view() for name, c in agent.by_model.items()},
        )

    def all(self) -> dict[str, AgentUsage]:
        return {key: self.get(key) for key in self._agents}

    def reset(self, agent_id: str | None = None) -> list[str]:
        """Clear one agent's counters, or everyone's; returns the agents cleared."""
        if agent_id is None:
            cleared = list(self._agents)
            self._agents.clear()
            return cleared
        return [agent_id] if self._agents.pop(agent_id, None) is not None else []
