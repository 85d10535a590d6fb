"""OpenAI Chat Completions and the services that speak it: OpenAI, xAI, OpenRouter, any compatible server.

One module for the family because the wire format is one. What differs between its members (default
base URL, the usual key variable, which max-tokens field they read, whether a stream must be asked for
its usage, OpenRouter's attribution headers) is a ``Dialect``; everything else is shared.

Layout (the same in every provider module): constants, wire Structs, ``to_wire``, ``from_wire``,
``parse_error``, stream-chunk decoding, then ``OpenAIProvider``. The key stays a ``Secret`` until the
one header that needs it is built; every error is made by ``_http.error_from_status`` (which scrubs
known keys from the provider's text) or ``map_transport_errors``, never from upstream exception text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from llm_rpc import errors
from llm_rpc._secret import redact
from llm_rpc.config import BackendConfig
from llm_rpc.providers._base import HttpBackend
from llm_rpc.providers._client import httpx
from llm_rpc.providers._http import classify_status, error_from_status, sse_events
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.types import ToolCall, Usage

__all__ = [
    "DIALECTS",
    "Dialect",
    "OpenAIProvider",
    "StreamAssembler",
    "from_wire",
    "parse_error",
    "to_wire",
]

# -- constants --------------------------------------------------------------------------------------------

CHAT_PATH: Final = "/chat/completions"
#: OpenRouter's app attribution (openrouter.ai/docs/app-attribution); a backend's ``headers`` override
#: these, and an empty value there drops the header.
OPENROUTER_REFERER: Final = "https://pypi.org/project/llm-rpc/"
OPENROUTER_TITLE: Final = "llm-rpc"


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one member of the family differs from OpenAI's own API."""

    kind: str
    base_url: str | None
    key_env: str | None
    max_tokens_field: str
    #: Send ``stream_options.include_usage``: without it OpenAI streams no usage at all. OpenRouter
    #: always sends usage and calls the option a deprecated no-op, so it is not sent there.
    stream_usage: bool
    headers: tuple[tuple[str, str], ...] = ()


DIALECTS: Final[dict[str, Dialect]] = {
    "openai": Dialect("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "max_completion_tokens", True),
    "xai": Dialect("xai", "https://api.x.ai/v1", "XAI_API_KEY", "max_tokens", True),
    "openrouter": Dialect(
        "openrouter",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "max_tokens",
        False,
        (("HTTP-Referer", OPENROUTER_REFERER), ("X-Title", OPENROUTER_TITLE)),
    ),
    # vLLM, llama.cpp, Ollama's /v1, Together, Groq...: most read only `max_tokens`.
    "openai-compatible": Dialect("openai-compatible", None, None, "max_tokens", True),
}

_FINISH: Final[dict[str, str]] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",  # deprecated functions API
    "content_filter": "content_filter",
    "error": "error",  # OpenRouter, mid-stream
    # spellings seen from compatible servers
    "eos": "stop",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_length": "length",
    "tool_use": "tool_calls",
}
_QUOTA_CODES: Final = frozenset({"insufficient_quota", "credit_balance_exhausted", "billing_hard_limit_reached"})
_FILTER_CODES: Final = frozenset({"content_filter", "content_policy_violation"})
_AUTH_CODES: Final = frozenset({"invalid_api_key", "authentication_error"})
_RATE_CODES: Final = frozenset({"rate_limit_exceeded", "rate_limit_error", "requests", "tokens"})
_OVERLOAD_CODES: Final = frozenset({"overloaded_error", "server_is_overloaded", "overloaded"})
_SNIPPET: Final = 200

# -- wire Structs (only the fields read; unknown fields and values are tolerated) -------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    # A JSON string per the spec; some compatible servers send an object.
    arguments: Any = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    index: int | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    # A string per the spec; some compatible servers send a list of parts.
    content: Any = None
    refusal: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    delta: _Message | None = None
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None
    cache_write_tokens: int | None = None


class _CompletionDetails(msgspec.Struct):
    reasoning_tokens: int | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    prompt_tokens_details: _PromptDetails | None = None
    completion_tokens_details: _CompletionDetails | None = None


class _ErrorDetail(msgspec.Struct):
    message: Any = None
    type: Any = None
    # OpenAI: a string slug; OpenRouter: the HTTP status as an integer.
    code: Any = None
    metadata: Any = None


class _Completion(msgspec.Struct):
    """A whole response body, or one stream chunk (same shape; ``delta`` instead of ``message``)."""

    id: str | None = None
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None
    # {"error": {...}} (OpenAI, OpenRouter), {"error": "..."} (some servers)
    error: _ErrorDetail | str | None = None
    # vLLM's {"object": "error", "message": ..., "type": ..., "code": ...}
    object: str | None = None
    message: Any = None
    type: Any = None
    code: Any = None


_decode_completion = msgspec.json.Decoder(_Completion).decode
_encode = msgspec.json.Encoder().encode

# -- to_wire ------------------------------------------------------------------------------------------------


def to_wire(request: ProviderRequest, dialect: Dialect, *, stream: bool = False) -> bytes:
    """The JSON body of a Chat Completions call for ``request`` in ``dialect``."""
    # The Message Structs are encoded as they are (the same bytes as their builtins), not copied first.
    body: dict[str, Any] = {"model": request.model, "messages": request.messages}
    if request.max_tokens is not None:
        body[dialect.max_tokens_field] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.stop:
        body["stop"] = request.stop
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    if stream:
        body["stream"] = True
        if dialect.stream_usage:
            body["stream_options"] = {"include_usage": True}
    for key, value in request.extra.items():
        # Provider-specific extras (top_p, seed, parallel_tool_calls, vLLM's top_k...) never replace ours.
        body.setdefault(key, value)
    return _encode(body)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    """A tool in OpenAI's shape; a bare ``{name, parameters}`` function is wrapped."""
    if "type" not in tool and "name" in tool:
        return {"type": "function", "function": tool}
    return tool


def _response_format(fmt: dict[str, Any]) -> dict[str, Any]:
    """``json_schema`` needs a ``name``: give it one when the caller did not."""
    schema = fmt.get("json_schema")
    if fmt.get("type") == "json_schema" and isinstance(schema, dict) and "name" not in schema:
        return {**fmt, "json_schema": {"name": "response", **schema}}
    return fmt


# -- from_wire ----------------------------------------------------------------------------------------------


def from_wire(
    body: bytes, *, backend: str, requested_model: str = "", include_raw: bool = False, status: int = 200
) -> ProviderResponse:
    """The normalized response of a successful (2xx) Chat Completions body.

    Raises:
        UpstreamProtocolError: the body is not JSON or not a chat completion.
        ProviderError: a 2xx body that carries an error object (some servers do this).
    """
    wire = _decode(body, backend, status=status, what="response body")
    if wire.error is not None or wire.object == "error":
        raise _embedded_error(wire, backend, status=None)
    if not wire.choices:
        raise _protocol(backend, "the response has no choices", body, status=status)
    choice = min(wire.choices, key=lambda c: c.index)
    message = choice.message or _Message()
    tool_calls = [
        ToolCall(
            id=tc.id or f"call_{i}",
            name=(tc.function.name if tc.function else None) or "",
            arguments=_arguments(tc.function.arguments if tc.function else None),
        )
        for i, tc in enumerate(message.tool_calls or [])
    ] or None
    content = _text(message.content)
    finish, native = _finish(choice.finish_reason, tool_calls is not None)
    if content is None and message.refusal:
        # A refusal (structured outputs) is the model declining: say so in finish_reason.
        content, finish = message.refusal, "content_filter"
    return ProviderResponse(
        content=_visible(content, tool_calls),
        model=wire.model or requested_model,
        finish_reason=finish,
        native_finish_reason=native,
        usage=_usage(wire.usage),
        tool_calls=tool_calls,
        id=wire.id,
        raw=body if include_raw else None,
    )


def _decode(body: bytes, backend: str, *, status: int, what: str) -> _Completion:
    try:
        return _decode_completion(body)
    except msgspec.DecodeError:
        raise _protocol(backend, f"the {what} is not JSON", body, status=status) from None
    except msgspec.ValidationError as exc:
        raise _protocol(backend, f"the {what} is not a chat completion ({exc})", body, status=status) from None


def _protocol(backend: str, why: str, body: bytes | str, *, status: int | None) -> errors.UpstreamProtocolError:
    """An unreadable or truncated answer; the body's first bytes (scrubbed) help whoever debugs it."""
    return errors.UpstreamProtocolError(
        f"{backend}: protocol: {why}",
        backend=backend,
        status=status,
        provider_message=redact(_snippet(body)) or None,
    )


def _snippet(body: bytes | str) -> str:
    """A short, single-line excerpt of a body that could not be read as JSON."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return " ".join(text.split())[:_SNIPPET]


def _text(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return str(content)


def _visible(content: str | None, tool_calls: list[ToolCall] | None) -> str | None:
    """``None`` rather than ``""`` when the answer is only tool calls, whichever way it arrived."""
    return None if tool_calls and not content else content


def _arguments(arguments: Any) -> str:
    if arguments is None:
        return ""
    if isinstance(arguments, str):
        return arguments
    return _encode(arguments).decode()


def _finish(native: str | None, has_tool_calls: bool) -> tuple[str, str | None]:
    """(normalized, native). Some compatible servers say ``stop`` when the model called tools."""
    finish = _FINISH.get(native or "", "stop")
    if has_tool_calls and finish == "stop":
        finish = "tool_calls"
    return finish, native


def _usage(usage: _Usage | None) -> Usage:
    if usage is None:
        return Usage()
    prompt = usage.prompt_tokens or 0
    completion = usage.completion_tokens or 0
    pd, cd = usage.prompt_tokens_details, usage.completion_tokens_details
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.total_tokens if usage.total_tokens is not None else prompt + completion,
        cached_tokens=pd.cached_tokens if pd else None,
        cache_write_tokens=pd.cache_write_tokens if pd else None,
        reasoning_tokens=cd.reasoning_tokens if cd else None,
    )


# -- parse_error --------------------------------------------------------------------------------------------


def parse_error(
    status: int, headers: Mapping[str, str], body: bytes, *, backend: str, kind: str = "openai"
) -> errors.ProviderError:
    """The typed error for a non-2xx answer, classified by status *and* body.

    A 429 whose code is ``insufficient_quota`` is a billing stop (``quota_exceeded``), not a rate
    limit; OpenRouter's 403 for moderation is ``content_filter``. A body that is not JSON keeps the
    status's type, with a short excerpt as the provider's message.
    """
    cls = classify_status(status)
    request_id = headers.get("x-request-id")
    try:
        wire: _Completion | None = _decode_completion(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        wire = None
    if wire is None or (wire.error is None and wire.message is None):
        snippet = _snippet(body) or None
        return error_from_status(
            cls, backend=backend, status=status, provider_message=snippet, headers=headers, request_id=request_id
        )
    message, type_, code, metadata = _error_fields(wire)
    err = error_from_status(
        _refine(cls, status, type_, code, metadata, kind),
        backend=backend,
        status=status,
        provider_message=message,
        headers=headers,
        provider_type=_short(type_),
        provider_code=_short(code),
        request_id=request_id,
    )
    if isinstance(err, errors.QuotaExceededError):
        # Waiting will not fix an exhausted quota, whatever x-should-retry says.
        err.should_retry = False
    return err


def _error_fields(wire: _Completion) -> tuple[str | None, Any, Any, Any]:
    """(message, type, code, metadata) from any of the family's error shapes."""
    if isinstance(wire.error, _ErrorDetail):
        e = wire.error
        return _message_text(e.message), e.type, e.code, e.metadata
    if isinstance(wire.error, str):
        return wire.error, wire.type, wire.code, None
    return _message_text(wire.message), wire.type, wire.code, None


def _message_text(message: Any) -> str | None:
    if message is None or isinstance(message, str):
        return message
    return _encode(message).decode()


def _short(value: Any) -> str | int | None:
    """A provider's error type or code, fit for ``data`` (scrubbed like every upstream text)."""
    if value is None or isinstance(value, int):
        return value
    return redact(str(value))[:100]


def _refine(
    cls: type[errors.ProviderError], status: int | None, type_: Any, code: Any, metadata: Any, kind: str
) -> type[errors.ProviderError]:
    slugs = {s for s in (type_, code) if isinstance(s, str)}
    if slugs & _QUOTA_CODES:
        return errors.QuotaExceededError
    if slugs & _FILTER_CODES:
        return errors.ContentFilterError
    if slugs & _AUTH_CODES:
        return errors.AuthError
    if kind == "openrouter" and status == 403 and _is_moderation(metadata):
        return errors.ContentFilterError
    return cls


def _is_moderation(metadata: Any) -> bool:
    return isinstance(metadata, dict) and ("reasons" in metadata or "flagged_input" in metadata)


def _embedded_error(wire: _Completion, backend: str, *, status: int | None) -> errors.ProviderError:
    """An error object inside a 2xx body or a stream: typed by its code when it has one."""
    message, type_, code, metadata = _error_fields(wire)
    code_status = code if isinstance(code, int) and 400 <= code <= 599 else None
    slugs = {s for s in (type_, code) if isinstance(s, str)}
    if code_status is not None:
        cls = classify_status(code_status)
    elif slugs & _RATE_CODES:
        cls = errors.RateLimitedError
    elif slugs & _OVERLOAD_CODES:
        cls = errors.OverloadedError
    else:
        cls = errors.ServerError
    return error_from_status(
        _refine(cls, code_status, type_, code, metadata, ""),
        backend=backend,
        status=code_status if code_status is not None else status,
        provider_message=message,
        provider_type=_short(type_),
        provider_code=_short(code),
        finish_reason="error",
    )


# -- stream-chunk decoding ----------------------------------------------------------------------------------


@dataclass(slots=True)
class _PartialCall:
    id: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class StreamAssembler:
    """Folds ``chat.completion.chunk`` events into deltas and, at the end, the same result as ``complete``.

    Tool calls are assembled by ``index`` (the first fragment carries id and name, later ones only
    argument pieces). A stream that ends before ``[DONE]`` or without a finish reason is truncated:
    ``finish`` raises ``UpstreamProtocolError`` rather than return a silently short answer.
    """

    backend: str
    requested_model: str
    include_raw: bool = False
    text: list[str] = field(default_factory=list)
    calls: dict[int, _PartialCall] = field(default_factory=dict)
    native_finish: str | None = None
    model: str | None = None
    id: str | None = None
    usage: _Usage | None = None
    done: bool = False
    raw: list[bytes] = field(default_factory=list)

    def feed(self, data: str) -> list[StreamItem]:
        """The deltas in one SSE ``data`` payload (``[DONE]`` marks the normal end)."""
        if data.strip() == "[DONE]":
            self.done = True
            return []
        if not data.strip():
            return []
        payload = data.encode()
        chunk = _decode(payload, self.backend, status=200, what="stream chunk")
        if self.include_raw:
            self.raw.append(payload)
        if chunk.error is not None or chunk.object == "error":
            raise _embedded_error(chunk, self.backend, status=200)
        self.model = chunk.model or self.model
        self.id = chunk.id or self.id
        if chunk.usage is not None:
            self.usage = chunk.usage
        out: list[StreamItem] = []
        for choice in chunk.choices or []:
            if choice.index != 0:
                continue
            delta = choice.delta or choice.message or _Message()
            text = _text(delta.content)
            if text:
                self.text.append(text)
                out.append(TextDelta(text))
            for position, tc in enumerate(delta.tool_calls or []):
                index = tc.index if tc.index is not None else position
                call = self.calls.setdefault(index, _PartialCall())
                fn = tc.function or _Function()
                call.id = call.id or tc.id
                call.name = call.name or fn.name
                piece = _arguments(fn.arguments)
                call.arguments.append(piece)
                out.append(ToolCallDelta(index=index, id=tc.id, name=fn.name, arguments=piece))
            if choice.finish_reason is not None:
                self.native_finish = choice.finish_reason
                if choice.finish_reason == "error":
                    raise _embedded_error(chunk, self.backend, status=200)
        return out

    def finish(self) -> ProviderResponse:
        """The assembled response; the stream must have ended normally."""
        if not self.done or self.native_finish is None:
            missing = "[DONE]" if not self.done else "a finish_reason"
            raise _protocol(self.backend, f"the stream ended without {missing} (truncated)", "", status=200)
        tool_calls = [
            ToolCall(id=c.id or f"call_{i}", name=c.name or "", arguments="".join(c.arguments))
            for i, c in sorted(self.calls.items())
        ] or None
        finish, native = _finish(self.native_finish, tool_calls is not None)
        return ProviderResponse(
            content=_visible("".join(self.text), tool_calls),
            model=self.model or self.requested_model,
            finish_reason=finish,
            native_finish_reason=native,
            usage=_usage(self.usage),
            tool_calls=tool_calls,
            id=self.id,
            raw=b"[" + b",".join(self.raw) + b"]" if self.include_raw else None,
        )


def _is_event_stream(response: httpx.Response) -> bool:
    content_type = response.headers.get("content-type", "")
    return content_type.partition(";")[0].strip().lower() == "text/event-stream"


# -- the provider -------------------------------------------------------------------------------------------


class OpenAIProvider(HttpBackend):
    """A backend speaking OpenAI Chat Completions: ``openai``, ``xai``, ``openrouter``, ``openai-compatible``.

    ``HttpBackend`` with a ``Bearer`` key and its ``Dialect``'s base URL, key variable and headers. A
    backend without key variables (a local ``openai-compatible`` server) calls without a key.
    """

    auth_header = "authorization"
    auth_prefix = "Bearer "
    needs_key = False

    def __init__(
        self,
        name: str,
        *,
        kind: str = "openai",
        base_url: str | None = None,
        key_envs: list[str] | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        """A backend of the dialect ``kind``; ``key_envs`` None: the dialect's usual key variable.

        Raises:
            ConfigError: an unknown ``kind``, or no ``base_url`` for ``openai-compatible``.
        """
        if kind not in DIALECTS:
            raise errors.ConfigError(f"{name}: unknown provider kind {kind!r}", path="provider")
        self.provider = kind
        self.dialect = DIALECTS[kind]
        self.default_headers = self.dialect.headers
        if key_envs is None:
            key_envs = [self.dialect.key_env] if self.dialect.key_env else []
        super().__init__(
            name,
            base_url=base_url or self.dialect.base_url,
            key_envs=key_envs,
            headers=headers,
            timeout=timeout,
            max_connections=max_connections,
        )

    @classmethod
    def _config_options(cls, config: BackendConfig) -> dict[str, Any]:
        # No key variable configured: the dialect's usual one.
        return {**super()._config_options(config), "kind": config.provider, "key_envs": config.key_envs or None}

    def _parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> errors.ProviderError:
        return parse_error(status, headers, body, backend=self.name, kind=self.provider)

    # -- Provider protocol

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """One call, one normalized response.

        Raises:
            ProviderError: a subclass naming what went wrong (``auth``, ``rate_limited``, ``protocol``...).
        """
        response = await self._post(CHAT_PATH, to_wire(request, self.dialect), request)
        return from_wire(
            response.content,
            backend=self.name,
            requested_model=request.model,
            include_raw=request.include_raw,
            status=response.status_code,
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """Text and tool-call deltas as they arrive, then one final ``ProviderResponse`` with usage.

        Raises:
            ProviderError: as ``complete``; also an error sent inside the stream, and ``protocol`` for
                a stream cut short.
        """
        body = to_wire(request, self.dialect, stream=True)
        assembler = StreamAssembler(self.name, request.model, include_raw=request.include_raw)
        async with self._open_stream(CHAT_PATH, body, request) as response:
            if not _is_event_stream(response):
                # Some servers answer a stream request with one JSON body: an error, or the whole answer.
                result = from_wire(
                    await response.aread(),
                    backend=self.name,
                    requested_model=request.model,
                    include_raw=request.include_raw,
                )
                if result.content:
                    yield TextDelta(result.content)
                for i, call in enumerate(result.tool_calls or []):
                    yield ToolCallDelta(index=i, id=call.id, name=call.name, arguments=call.arguments)
                yield result
                return
            async with sse_events(response) as events:
                try:
                    async for event in events:
                        for item in assembler.feed(event.data):
                            yield item
                except httpx.SSEError:
                    raise _protocol(self.name, "an event in the stream is too large", "", status=200) from None
        yield assembler.finish()
