"""The router: which backend serves a request, and the one place where a call to it is made.

``Router.execute`` is the whole in-process API (``await router.execute(prompt=..., model=...)``);
the JSON-RPC ``execute`` method is a thin wrapper over it.
"""

from __future__ import annotations

import fnmatch
import math
import os
import time
from typing import Any

import anyio
import msgspec

from llm_rpc import errors
from llm_rpc.config import BackendConfig, Config, load_config
from llm_rpc.providers import Provider, ProviderRequest, ProviderResponse, provider_class
from llm_rpc.types import BackendHealth, ExecuteParams, ExecuteResult

__all__ = ["Backend", "Router"]

# A provider's own model-name rules, used when a backend lists no ``models`` globs.
_NAMING_RULES: dict[str, tuple[str, ...]] = {
    "openai": ("gpt-*", "o1*", "o3*", "o4*", "chatgpt-*", "text-embedding-*"),
    "anthropic": ("claude-*",),
    "gemini": ("gemini-*",),
    "xai": ("grok-*",),
}


class Backend:
    """One configured backend and its live state."""

    __slots__ = ("config", "in_flight", "name", "provider")

    def __init__(self, config: BackendConfig, provider: Provider) -> None:
        self.config = config
        self.provider = provider
        self.name = config.backend_name
        self.in_flight = 0

    def serves(self, model: str) -> bool:
        globs = self.config.models
        if globs:
            return any(fnmatch.fnmatchcase(model, g) for g in globs)
        kind = self.config.provider
        prefix, sep, _ = model.partition("/")
        if sep and prefix == kind:
            return True
        if kind in ("mock", "ollama", "openai-compatible", "openrouter"):
            return True
        return any(fnmatch.fnmatchcase(model, g) for g in _NAMING_RULES.get(kind, ()))

    def key_state(self) -> str:
        names = self.config.key_envs
        if not names:
            return "not_needed"
        return "set" if any(os.environ.get(name) for name in names) else "missing"


def _build_provider(config: BackendConfig) -> Provider:
    cls = provider_class(config.provider)
    provider: Provider = cls.from_config(config)
    return provider


class Router:
    """Routes ``execute`` calls to configured backends."""

    def __init__(self, config: Config | None = None, *, providers: dict[str, Provider] | None = None) -> None:
        self.config = config if config is not None else load_config(None)
        providers = providers or {}
        self.backends: list[Backend] = []
        seen: set[str] = set()
        for bc in self.config.backends:
            name = bc.backend_name
            if name in seen:
                raise errors.ConfigError(f"two backends are named {name!r}", path=f"backends.{name}")
            seen.add(name)
            self.backends.append(Backend(bc, providers.get(name) or _build_provider(bc)))
        self.backends.sort(key=lambda b: b.config.priority)
        self._prices = {m.name: (m.input, m.output) for m in self.config.models}

    @classmethod
    def from_config(cls, path: str | os.PathLike[str] | None = None) -> Router:
        """A router for the config file at ``path`` (or ``$LLM_RPC_CONFIG``, or the defaults)."""
        return cls(load_config(path))

    @property
    def default_model(self) -> str:
        if self.config.router.default_model:
            return self.config.router.default_model
        return "mock"

    def candidates(self, model: str) -> list[Backend]:
        """Backends able to serve ``model``, in preference order."""
        return [b for b in self.backends if b.serves(model)]

    async def execute(self, params: ExecuteParams | None = None, /, **kwargs: Any) -> ExecuteResult:
        """Run one call. Accepts an ``ExecuteParams`` or its fields as keywords.

        Raises:
            NoRouteError: no backend serves the model.
            RequestTimeoutError: the request's deadline expired.
            ProviderError: the upstream call failed.
        """
        if params is None:
            try:
                params = msgspec.convert(kwargs, ExecuteParams)
            except msgspec.ValidationError as exc:
                raise TypeError(f"invalid execute arguments: {exc}") from None
        backend, request = self._prepare(params)
        timeout = request.timeout
        started = time.perf_counter()
        backend.in_flight += 1
        try:
            with anyio.fail_after(timeout):
                response = await backend.provider.complete(request)
        except TimeoutError:
            raise errors.RequestTimeoutError(
                f"request deadline of {timeout:g}s expired", timeout_seconds=timeout, backend=backend.name
            ) from None
        finally:
            backend.in_flight -= 1
        latency_ms = (time.perf_counter() - started) * 1000
        return self._result(params, backend, response, latency_ms)

    def execute_nowait(self, params: ExecuteParams) -> ExecuteResult | None:
        """The result, if it can be had without waiting for anything (the mock with no latency).

        None means "use ``execute``". Same routing, same result, same errors as ``execute``: this
        only saves the task and the deadline scope that a call which never waits does not need.
        """
        backend, request = self._prepare(params)
        respond = getattr(backend.provider, "respond_nowait", None)
        if respond is None:
            return None
        started = time.perf_counter()
        response: ProviderResponse | None = respond(request)
        if response is None:
            return None
        return self._result(params, backend, response, (time.perf_counter() - started) * 1000)

    def _prepare(self, params: ExecuteParams) -> tuple[Backend, ProviderRequest]:
        model = params.requested_model() or self.default_model
        candidates = self.candidates(model)
        if not candidates:
            raise errors.NoRouteError(
                f"no backend serves model {model!r}",
                model=model,
                backends=[b.name for b in self.backends],
            )
        backend = candidates[0]
        cfg = params.config
        timeout = (cfg.timeout_seconds if cfg is not None else None) or self.config.router.timeout_seconds
        request = ProviderRequest(
            model=model,
            messages=params.chat_messages(),
            max_tokens=cfg.max_tokens if cfg is not None else None,
            temperature=cfg.temperature if cfg is not None else None,
            timeout=timeout,
            mock=params.mock,
        )
        return backend, request

    def _result(
        self, params: ExecuteParams, backend: Backend, response: ProviderResponse, latency_ms: float
    ) -> ExecuteResult:
        return ExecuteResult(
            content=response.content,
            model=response.model,
            provider=backend.provider.provider,
            backend=backend.name,
            usage=response.usage,
            finish_reason=response.finish_reason,  # type: ignore[arg-type]
            latency_ms=round(latency_ms, 3),
            cost_usd=self.cost_usd(backend, response),
            metadata=params.metadata or {},
            tool_calls=response.tool_calls,
            native_finish_reason=response.native_finish_reason,
            id=response.id,
            raw=msgspec.Raw(response.raw) if response.raw is not None else None,
        )

    def cost_usd(self, backend: Backend, response: ProviderResponse) -> float | None:
        """USD for this response from the configured prices; the mock is free; unknown → None."""
        if backend.config.provider == "mock":
            return 0.0
        price = self._prices.get(response.model)
        if price is None:
            return None
        usage = response.usage
        cost = (usage.prompt_tokens * price[0] + usage.completion_tokens * price[1]) / 1_000_000
        return math.floor(cost * 1e9 + 0.5) / 1e9

    def health(self) -> list[BackendHealth]:
        return [
            BackendHealth(
                name=b.name,
                provider=b.config.provider,
                in_flight=b.in_flight,
                key=b.key_state(),  # type: ignore[arg-type]
            )
            for b in self.backends
        ]

    async def aclose(self) -> None:
        """Close every backend's connection pool."""
        for backend in self.backends:
            with anyio.CancelScope(shield=True):
                await backend.provider.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
