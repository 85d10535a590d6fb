"""The built-in deterministic ``mock`` provider: no network, same input → same output.

It answers ``Mock answer to: <last user text>``, counts one token per whitespace-separated word,
honours ``max_tokens`` (``finish_reason: length`` when it truncates) and, when configured, waits
``latency_ms``, streams word by word every ``stream_delay_ms`` and fails a ``fail_rate`` share of
requests (chosen by a hash of the request, so the same request always fails or always succeeds)
with any error ``fail_type``.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import anyio
import msgspec

from llm_rpc import errors
from llm_rpc.config import BackendConfig
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta
from llm_rpc.types import Message, Usage

__all__ = ["MockProvider", "MockSettings"]

_PER_MESSAGE_TOKENS = 3


class MockSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Backend-level mock behaviour (config keys of a ``provider = "mock"`` backend)."""

    latency_ms: float = 0.0
    stream_delay_ms: float = 0.0
    fail_rate: float = 0.0
    fail_type: str = "server_error"


def _text_of(message: Message) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))


def count_tokens(messages: list[Message]) -> int:
    """The mock's tokenizer: words, plus a small per-message overhead."""
    return sum(len(_text_of(m).split()) + _PER_MESSAGE_TOKENS for m in messages)


class MockProvider:
    """A provider that answers from the prompt alone."""

    provider = "mock"

    def __init__(self, name: str = "mock", settings: MockSettings | None = None, **_: Any) -> None:
        self.name = name
        self.settings = settings or MockSettings()

    @classmethod
    def from_config(cls, config: BackendConfig) -> MockProvider:
        return cls(
            config.backend_name,
            MockSettings(
                latency_ms=config.latency_ms,
                stream_delay_ms=config.stream_delay_ms,
                fail_rate=config.fail_rate,
                fail_type=config.fail_type,
            ),
        )

    def _options(self, request: ProviderRequest) -> MockSettings:
        s = self.settings
        o = request.mock
        if o is None:
            return s  # no per-request overrides: the backend's settings as they are (never modified)
        return MockSettings(
            latency_ms=s.latency_ms if o.latency_ms is None else o.latency_ms,
            stream_delay_ms=s.stream_delay_ms if o.stream_delay_ms is None else o.stream_delay_ms,
            fail_rate=s.fail_rate if o.fail_rate is None else o.fail_rate,
            fail_type=s.fail_type if o.fail_type is None else o.fail_type,
        )

    def respond(self, request: ProviderRequest) -> ProviderResponse:
        """The answer, computed synchronously (no latency, no failure injection)."""
        last_user = next((m for m in reversed(request.messages) if m.role == "user"), None)
        text = _text_of(last_user) if last_user is not None else ""
        words = ["Mock", "answer", "to:", *text.split()]
        finish = "stop"
        if request.max_tokens is not None and len(words) > request.max_tokens:
            words = words[: request.max_tokens]
            finish = "length"
        prompt_tokens = count_tokens(request.messages)
        completion_tokens = len(words)
        return ProviderResponse(
            content=" ".join(words),
            model=request.model,
            finish_reason=finish,
            native_finish_reason=finish,
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
            id="mock-" + _digest(request),
        )

    def _maybe_fail(self, request: ProviderRequest, options: MockSettings) -> None:
        if options.fail_rate <= 0:
            return
        draw = int(_digest(request)[:8], 16) / 0xFFFFFFFF
        if draw < options.fail_rate:
            cls = errors.error_class_for_type(options.fail_type)
            if cls is None or not issubclass(cls, errors.ProviderError):
                cls = errors.ServerError
            raise cls(
                f"mock failure ({options.fail_type})",
                backend=self.name,
                provider_message="simulated by the mock provider",
            )

    def respond_nowait(self, request: ProviderRequest) -> ProviderResponse | None:
        """The answer now, or None when it must wait (configured latency)."""
        options = self._options(request)
        if options.latency_ms > 0:
            return None
        self._maybe_fail(request, options)
        return self.respond(request)

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        options = self._options(request)
        waited = 0.0
        if options.latency_ms > 0:
            # The simulated upstream: the only time of the call that is not llm-rpc's (overhead_us).
            started = time.perf_counter()
            await anyio.sleep(options.latency_ms / 1000)
            waited = time.perf_counter() - started
        self._maybe_fail(request, options)
        request.upstream_s = waited
        return self.respond(request)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        options = self._options(request)
        if options.latency_ms > 0:
            await anyio.sleep(options.latency_ms / 1000)
        self._maybe_fail(request, options)
        response = self.respond(request)
        delay = options.stream_delay_ms / 1000
        for i, word in enumerate((response.content or "").split(" ")):
            if delay:
                await anyio.sleep(delay)
            yield TextDelta(word if i == 0 else " " + word)
        yield response

    async def aclose(self) -> None:
        return None

    @property
    def needs_latency(self) -> bool:
        return self.settings.latency_ms > 0 or self.settings.fail_rate > 0


def _digest(request: ProviderRequest) -> str:
    """A stable 64-bit hex digest of what determines the answer (not cryptographic: no need)."""
    payload = msgspec.json.encode([request.model, request.messages, request.max_tokens, request.temperature])
    return f"{zlib.crc32(payload):08x}{zlib.adler32(payload):08x}"
