"""llm-rpc: a long-lived JSON-RPC 2.0 gateway to LLM providers.

The public API is small and explicit (``__all__``). Names are imported lazily, so that importing
``llm_rpc`` (which every ``llm-rpc`` command does) costs nothing it does not use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from llm_rpc._version import __version__

if TYPE_CHECKING:
    from llm_rpc.client import Client
    from llm_rpc.config import Config, load_config
    from llm_rpc.core.budgets import BudgetTracker
    from llm_rpc.core.policy import RoutingPolicy
    from llm_rpc.core.router import Router
    from llm_rpc.errors import (
        AuthError,
        BackendError,
        BadRequestError,
        BillingError,
        ConfigError,
        ContentFilterError,
        LLMBudgetExceededError,
        LLMError,
        NoRouteError,
        OverloadedError,
        ProviderError,
        QuotaExceededError,
        RateLimitedError,
        RequestTimeoutError,
        ServerError,
        UpstreamConnectionError,
        UpstreamProtocolError,
        UpstreamTimeoutError,
    )
    from llm_rpc.providers.base import Provider
    from llm_rpc.server import ServeOptions, serve
    from llm_rpc.types import ExecuteParams, ExecuteResult, Message, RunConfig, Usage

__all__ = [
    "AuthError",
    "BackendError",
    "BadRequestError",
    "BillingError",
    "BudgetTracker",
    "Client",
    "Config",
    "ConfigError",
    "ContentFilterError",
    "ExecuteParams",
    "ExecuteResult",
    "LLMBudgetExceededError",
    "LLMError",
    "Message",
    "NoRouteError",
    "OverloadedError",
    "Provider",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestTimeoutError",
    "Router",
    "RoutingPolicy",
    "RunConfig",
    "ServeOptions",
    "ServerError",
    "UpstreamConnectionError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
    "Usage",
    "__version__",
    "load_config",
    "serve",
]

_LOCATIONS: dict[str, str] = {
    "Client": "llm_rpc.client",
    "Config": "llm_rpc.config",
    "load_config": "llm_rpc.config",
    "Router": "llm_rpc.core.router",
    "BudgetTracker": "llm_rpc.core.budgets",
    "RoutingPolicy": "llm_rpc.core.policy",
    "Provider": "llm_rpc.providers.base",
    "ServeOptions": "llm_rpc.server",
    "serve": "llm_rpc.server",
    "ExecuteParams": "llm_rpc.types",
    "ExecuteResult": "llm_rpc.types",
    "Message": "llm_rpc.types",
    "RunConfig": "llm_rpc.types",
    "Usage": "llm_rpc.types",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None and name in __all__:
        module = "llm_rpc.errors"
    if module is None:
        raise AttributeError(f"module 'llm_rpc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
