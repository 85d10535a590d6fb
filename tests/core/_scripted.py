"""A scripted ``Provider`` for router tests: it answers or fails as told and records every call.

This is our own seam (``providers.Provider``), used the way httpx's ``MockTransport`` is: the router
cannot tell it from a real backend, and a test can say exactly which error (status, Retry-After,
x-should-retry) each call gets, hold calls open, and count how many were in flight at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel

from llm_rpc import errors
from llm_rpc.config import BackendConfig, Config, RouterSettings
from llm_rpc.core.router import Router
from llm_rpc.providers import Provider, ProviderRequest, ProviderResponse, StreamItem
from llm_rpc.types import Usage

#: What one call does: None answers; a factory's error is raised.
Outcome = Callable[[], errors.ProviderError] | None


def fail(
    cls: type[errors.ProviderError],
    status: int | None = None,
    retry_after: float | None = None,
    should_retry: bool | None = None,
) -> Callable[[], errors.ProviderError]:
    """An outcome raising ``cls`` as a provider would (a fresh exception each time)."""

    def make() -> errors.ProviderError:
        return cls("scripted failure", status=status, retry_after=retry_after, should_retry=should_retry)

    return make


@dataclass
class Seen:
    """One call as the provider saw it."""

    at: float
    model: str
    prompt: str
    api_key: str | None
    timeout: float | None


class Scripted:
    """Answers ``"<name> says hi"`` unless the next scripted outcome (then ``default``) is a failure."""

    provider = "scripted"

    def __init__(
        self,
        name: str,
        *outcomes: Outcome,
        default: Outcome = None,
        latency: float = 0.0,
        usage: Usage | None = None,
    ) -> None:
        self.name = name
        self.outcomes: deque[Outcome] = deque(outcomes)
        self.default = default
        self.latency = latency
        self.usage = usage or Usage(prompt_tokens=5, completion_tokens=5, total_tokens=10)
        self.gate: anyio.Event | None = None
        self.calls: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        last = request.messages[-1].content
        self.calls.append(
            Seen(
                at=anyio.current_time(),
                model=request.model,
                prompt=last if isinstance(last, str) else "",
                api_key=request.api_key.reveal() if request.api_key is not None else None,
                timeout=request.timeout,
            )
        )
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            outcome = self.outcomes.popleft() if self.outcomes else self.default
            if self.latency:
                await anyio.sleep(self.latency)
            if self.gate is not None:
                await self.gate.wait()
            if outcome is not None:
                raise outcome()
            return ProviderResponse(
                content=f"{self.name} says hi", model=request.model, finish_reason="stop", usage=self.usage
            )
        finally:
            self.in_flight -= 1

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        yield await self.complete(request)

    async def aclose(self) -> None:
        return None

    @property
    def times(self) -> list[float]:
        return [c.at for c in self.calls]


def make_router(
    *providers: Scripted,
    backends: dict[str, dict[str, Any]] | None = None,
    seed: int | None = 0,
    **settings: Any,
) -> Router:
    """A router over ``providers`` (priority in the order given, all serving model ``m``).

    ``backends`` adds config keys per backend name; ``settings`` are ``[router]`` keys. Retries back
    off by nothing unless a test says otherwise.
    """
    settings.setdefault("retry_base_delay", 0.0)
    settings.setdefault("retry_max_delay", 0.0)
    extra = backends or {}
    config = Config(
        router=RouterSettings(**settings),
        backends=[
            BackendConfig(provider="ollama", name=p.name, models=["m"], priority=i + 1, **extra.get(p.name, {}))
            for i, p in enumerate(providers)
        ],
    )
    seam: dict[str, Provider] = {p.name: p for p in providers}
    return Router(config, providers=seam, seed=seed)


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Yield to other tasks until ``predicate()`` holds (bounded by the caller's ``fail_after``)."""
    while not predicate():
        await anyio.lowlevel.checkpoint()
