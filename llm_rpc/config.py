"""Configuration: msgspec Structs decoded from TOML (and YAML); unknown keys are rejected with their path.

See contracts/config.md for the schema and a full example.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from llm_rpc.errors import ConfigError

__all__ = ["BackendConfig", "Config", "ModelPrice", "RouterSettings", "default_config", "load_config"]

ProviderKind = Literal["openai", "anthropic", "gemini", "ollama", "xai", "openrouter", "openai-compatible", "mock"]
Strategy = Literal["failover", "round-robin", "least-loaded", "latency"]


class _Cfg(Struct, kw_only=True, forbid_unknown_fields=True):
    pass


class RouterSettings(_Cfg):
    strategy: Strategy = "failover"
    retries: Annotated[int, Meta(ge=0)] = 3
    retry_base_delay: Annotated[float, Meta(ge=0)] = 1.0
    retry_max_delay: Annotated[float, Meta(ge=0)] = 60.0
    timeout_seconds: Annotated[float, Meta(gt=0)] = 120.0
    default_model: str | None = None


class BackendConfig(_Cfg):
    provider: ProviderKind
    name: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    models: list[str] | None = None
    priority: int = 100
    rate_limit_tpm: Annotated[int, Meta(ge=1)] | None = None
    rate_limit_rpm: Annotated[int, Meta(ge=1)] | None = None
    max_concurrent: Annotated[int, Meta(ge=1)] | None = None
    local: bool = False
    tags: list[str] = field(default_factory=list)
    # mock-only behaviour (contracts/config.md)
    latency_ms: Annotated[float, Meta(ge=0)] = 0.0
    stream_delay_ms: Annotated[float, Meta(ge=0)] = 0.0
    fail_rate: Annotated[float, Meta(ge=0, le=1)] = 0.0
    fail_type: str = "server_error"

    @property
    def backend_name(self) -> str:
        return self.name or self.provider


class ModelPrice(_Cfg):
    name: str
    input: Annotated[float, Meta(ge=0)]
    output: Annotated[float, Meta(ge=0)]


class Config(_Cfg):
    router: RouterSettings = field(default_factory=RouterSettings)
    backends: list[BackendConfig] = field(default_factory=list)
    models: list[ModelPrice] = field(default_factory=list)


def default_config() -> Config:
    """No config file: the mock serves every model."""
    return Config(backends=[BackendConfig(provider="mock")])


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load ``path`` (or ``$LLM_RPC_CONFIG``); with neither, the default config.

    Raises:
        ConfigError: the file is missing, unparseable or invalid; ``data.path`` names the key.
    """
    if path is None:
        path = os.environ.get("LLM_RPC_CONFIG") or None
    if path is None:
        return default_config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(p)!r}: {exc.strerror}", file=str(p)) from None
    try:
        if p.suffix.lower() == ".toml":
            return msgspec.toml.decode(raw, type=Config)
        raise ConfigError(f"unsupported config file type {p.suffix!r} (use .toml)", file=str(p))
    except msgspec.ValidationError as exc:
        raise ConfigError(f"invalid config {str(p)!r}: {exc}", file=str(p)) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(f"cannot parse config {str(p)!r}: {exc}", file=str(p)) from None
