"""Provider backends, one module each, imported lazily by name (the mock path never imports httpx)."""

from __future__ import annotations

import importlib
from typing import Any

from llm_rpc.providers.base import (
    Provider,
    ProviderRequest,
    ProviderResponse,
    StreamItem,
    TextDelta,
    ToolCallDelta,
)

__all__ = [
    "PROVIDER_KINDS",
    "Provider",
    "ProviderRequest",
    "ProviderResponse",
    "StreamItem",
    "TextDelta",
    "ToolCallDelta",
    "provider_class",
]

#: provider kind → "module:Class", imported on first use.
PROVIDER_KINDS: dict[str, str] = {
    "mock": "llm_rpc.providers.mock:MockProvider",
    "anthropic": "llm_rpc.providers.anthropic:AnthropicProvider",
    "gemini": "llm_rpc.providers.gemini:GeminiProvider",
    "openai": "llm_rpc.providers.openai:OpenAIProvider",
    "xai": "llm_rpc.providers.openai:OpenAIProvider",
    "openrouter": "llm_rpc.providers.openai:OpenAIProvider",
    "openai-compatible": "llm_rpc.providers.openai:OpenAIProvider",
    "ollama": "llm_rpc.providers.ollama:OllamaProvider",
}


def provider_class(kind: str) -> Any:
    """The backend class for a provider kind (``KeyError`` if unknown)."""
    module, _, name = PROVIDER_KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
