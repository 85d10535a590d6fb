"""The errors llm-rpc raises, one tree for every layer above the wire.

```
LLMError                        base: every error a caller of llm-rpc should catch
├── ConfigError                 config_error     the config file or an option is invalid
├── NoRouteError                no_route         no backend can serve the request
├── RequestTimeoutError         timeout          the request's own deadline expired
├── RequestCancelledError       cancelled        the call was cancelled (e.g. by a failing sibling)
├── LLMBudgetExceededError      budget_exceeded  a delegation-chain budget refused the call
├── BackendError                backend_error    two or more attempts failed; data.attempts lists them
└── ProviderError               (upstream faults, classified by status and body)
    ├── AuthError               auth             bad or missing key (401/403, Gemini API_KEY_INVALID)
    ├── BillingError            billing          402, exhausted credits
    ├── QuotaExceededError      quota_exceeded   a 429 that waiting will not fix
    ├── BadRequestError         bad_request      400/404/413/422
    ├── ContentFilterError      content_filter   the provider refused the content
    ├── RateLimitedError        rate_limited     429 (retryable; data.retry_after)
    ├── OverloadedError         overloaded       503, Anthropic 529 (retryable)
    ├── ServerError             server_error     500/502/409 (retryable)
    ├── UpstreamTimeoutError    timeout          408/504 or the attempt timed out (retryable)
    ├── UpstreamConnectionError connection       connect/reset (retryable)
    └── UpstreamProtocolError   protocol         unparseable or truncated body or stream (retryable)
```

Each class has a stable ``type`` slug; ``data`` holds JSON-ready details. Nothing here knows
JSON-RPC: the wire code for each ``type`` lives in ``llm_rpc._codes``. Messages are built from our
own fields, never from upstream exception text, so that no secret can ride along.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "BackendError",
    "BadRequestError",
    "BillingError",
    "ConfigError",
    "ContentFilterError",
    "LLMBudgetExceededError",
    "LLMError",
    "NoRouteError",
    "OverloadedError",
    "ProviderError",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ServerError",
    "UpstreamConnectionError",
    "UpstreamProtocolError",
    "UpstreamTimeoutError",
    "error_class_for_type",
]


class LLMError(Exception):
    """Base class of every error llm-rpc raises to its callers."""

    type: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = {k: v for k, v in data.items() if v is not None}

    def to_data(self) -> dict[str, Any]:
        """The JSON-ready ``data`` of this error, ``type`` first."""
        return {"type": self.type, **self.data}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigError(LLMError):
    """The configuration is invalid; ``data.path`` names the offending key."""

    type = "config_error"


class NoRouteError(LLMError):
    """No configured backend can serve the request."""

    type = "no_route"


class RequestTimeoutError(LLMError):
    """The request's own deadline expired (queueing, retries and streaming included)."""

    type = "timeout"


class RequestCancelledError(LLMError):
    """The call was cancelled before it finished (``execute_batch`` with ``fail_fast``, a client)."""

    type = "cancelled"


class LLMBudgetExceededError(LLMError):
    """A delegation-chain budget refused the call; nothing was sent upstream."""

    type = "budget_exceeded"


class BackendError(LLMError):
    """Every attempt failed; ``data.attempts`` lists them and ``data.last_type`` names the last."""

    type = "backend_error"


class ProviderError(LLMError):
    """An upstream fault. ``data`` carries ``backend``, ``status`` and the provider's own message."""

    type = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        status: int | None = None,
        retry_after: float | None = None,
        provider_message: str | None = None,
        should_retry: bool | None = None,
        **data: Any,
    ) -> None:
        super().__init__(
            message,
            backend=backend,
            status=status,
            retry_after=retry_after,
            provider_message=provider_message,
            **data,
        )
        self.backend = backend
        self.status = status
        self.retry_after = retry_after
        # The provider's x-should-retry header, when present, overrides ``retryable``.
        self.should_retry = should_retry

    @property
    def is_retryable(self) -> bool:
        return self.retryable if self.should_retry is None else self.should_retry


class AuthError(ProviderError):
    type = "auth"


class BillingError(ProviderError):
    type = "billing"


class QuotaExceededError(ProviderError):
    type = "quota_exceeded"


class BadRequestError(ProviderError):
    type = "bad_request"


class ContentFilterError(ProviderError):
    type = "content_filter"


class RateLimitedError(ProviderError):
    type = "rate_limited"
    retryable = True


class OverloadedError(ProviderError):
    type = "overloaded"
    retryable = True


class ServerError(ProviderError):
    type = "server_error"
    retryable = True


class UpstreamTimeoutError(ProviderError):
    type = "timeout"
    retryable = True


class UpstreamConnectionError(ProviderError):
    type = "connection"
    retryable = True


class UpstreamProtocolError(ProviderError):
    type = "protocol"
    retryable = True


_PROVIDER_ERRORS: dict[str, type[ProviderError]] = {
    cls.type: cls
    for cls in (
        AuthError,
        BillingError,
        QuotaExceededError,
        BadRequestError,
        ContentFilterError,
        RateLimitedError,
        OverloadedError,
        ServerError,
        UpstreamTimeoutError,
        UpstreamConnectionError,
        UpstreamProtocolError,
    )
}
_OTHER_ERRORS: dict[str, type[LLMError]] = {
    cls.type: cls for cls in (ConfigError, NoRouteError, LLMBudgetExceededError, BackendError, RequestCancelledError)
}


def error_class_for_type(type_: str, *, upstream: bool = True) -> type[LLMError] | None:
    """The error class for a ``data.type`` slug (``timeout`` is ambiguous: ``upstream`` picks)."""
    if type_ == "timeout" and not upstream:
        return RequestTimeoutError
    return _PROVIDER_ERRORS.get(type_) or _OTHER_ERRORS.get(type_)


def provider_error_types() -> frozenset[str]:
    """The ``type`` slugs of upstream faults (what the mock can simulate)."""
    return frozenset(_PROVIDER_ERRORS)
