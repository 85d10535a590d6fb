"""The provider seam: one small Protocol every backend implements, and the types it speaks.

Providers know wire formats and nothing of routing: they get a ``ProviderRequest`` already bound to
one model and return a ``ProviderResponse`` or raise a ``ProviderError`` subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from llm_rpc._secret import Secret
from llm_rpc.types import Message, MockOptions, ToolCall, Usage

__all__ = [
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "StreamItem",
    "TextDelta",
    "ToolCallDelta",
]


@dataclass(slots=True)
class ProviderRequest:
    """One call for one backend: OpenAI-style messages plus the knobs every provider maps."""

    model: str
    messages: list[Message]
    max_tokens: int | None = None
    temperature: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None
    stop: list[str] | None = None
    include_raw: bool = False
    timeout: float | None = None
    mock: MockOptions | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: The key for this attempt, chosen by the router when the backend has several (``api_key_envs``);
    #: a provider uses it instead of its own. None: the provider's own key.
    api_key: Secret | None = None
    #: Set by the provider during an attempt: the seconds of the upstream exchange itself (from sending
    #: the request to the whole answer read), which ``overhead_us`` leaves out. None: not measured, and
    #: the whole attempt counts as upstream. The router clears it before each attempt.
    upstream_s: float | None = None


@dataclass(slots=True)
class ProviderResponse:
    """A provider's answer, normalized (see contracts/execute.md for each field's meaning)."""

    content: str | None
    model: str
    finish_reason: str
    usage: Usage
    tool_calls: list[ToolCall] | None = None
    native_finish_reason: str | None = None
    id: str | None = None
    raw: bytes | None = None


@dataclass(slots=True)
class TextDelta:
    """A piece of the answer's text, as the provider streamed it."""

    content: str


@dataclass(slots=True)
class ToolCallDelta:
    """A fragment of a tool call: ``index`` identifies the call; id and name come first."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


StreamItem = TextDelta | ToolCallDelta | ProviderResponse


@runtime_checkable
class Provider(Protocol):
    """A backend. ``stream`` yields deltas, then exactly one final ``ProviderResponse``."""

    name: str
    provider: str

    async def complete(self, request: ProviderRequest) -> ProviderResponse: ...

    def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]: ...

    async def aclose(self) -> None: ...
