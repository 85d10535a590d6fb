"""The Anthropic Messages API backend (``POST /v1/messages``), plain and streamed.

Callers speak OpenAI-style messages; this module translates them to Anthropic's shape (system prompt
at the top level, only ``user``/``assistant`` turns, tool results as ``tool_result`` blocks, a
``max_tokens`` on every request) and Anthropic's answers, stream events and errors back to the
normalized ``ProviderResponse`` and the ``ProviderError`` tree. The API key lives in a ``Secret``
until the ``x-api-key`` header is built, and every error goes through ``_http.error_from_status``,
which scrubs known keys from the provider's text.

Wire reference: ../shared/docs/providers.md sections 3, 6 and 9.
"""

from __future__ import annotations

import fnmatch
import math
import time
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any

import msgspec

from llm_rpc import errors
from llm_rpc._secret import redact
from llm_rpc.providers._base import HttpBackend, StreamState, image_url, plain_text, stream_items, tool_arguments
from llm_rpc.providers._client import httpx
from llm_rpc.providers._http import classify_status, error_from_status, retry_after_from_headers
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.types import Message, ToolCall, Usage

__all__ = ["AnthropicProvider", "from_wire", "parse_error", "reset_after_from_headers", "to_wire"]

# -- constants ------------------------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://api.anthropic.com"
MESSAGES_PATH = "/v1/messages"
#: The version header the official SDK sends; the wire format below is that version's.
API_VERSION = "2023-06-01"
#: ``max_tokens`` is required by the API. 4096 fits every current model's output limit; Anthropic's
#: output-token rate limit is estimated from ``max_tokens`` at admission, so a huge default would
#: throttle callers who never asked for long answers.
DEFAULT_MAX_TOKENS = 4096
MAX_TEMPERATURE = 1.0
#: Models that answer 400 to a non-default ``temperature`` (their migration guides): it is left out.
NO_SAMPLING_MODELS = ("claude-sonnet-5*", "claude-opus-4-7*", "claude-opus-4-8*", "claude-opus-5*")

_STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    # Only with server tools: the turn is incomplete and may be resent as is.
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

_ERROR_TYPES: dict[str, type[errors.ProviderError]] = {
    "invalid_request_error": errors.BadRequestError,
    "not_found_error": errors.BadRequestError,
    "request_too_large": errors.BadRequestError,
    "authentication_error": errors.AuthError,
    "permission_error": errors.AuthError,
    "billing_error": errors.BillingError,
    "rate_limit_error": errors.RateLimitedError,
    "api_error": errors.ServerError,
    "conflict_error": errors.ServerError,
    "timeout_error": errors.UpstreamTimeoutError,
    "overloaded_error": errors.OverloadedError,
}
_SPEND_LIMIT_CODE = "enforced_spend_limit_reached"
_RATE_LIMIT_BUCKETS = ("requests", "tokens", "input-tokens", "output-tokens")

# -- wire Structs (only the fields we read; unknown fields and values are ignored) ------------------------


class _OutputTokensDetails(msgspec.Struct):
    thinking_tokens: int | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: _OutputTokensDetails | None = None


class _Block(msgspec.Struct):
    type: str = "unknown"
    text: str | None = None
    id: str | None = None
    name: str | None = None
    # Kept as raw JSON: it becomes ``ToolCall.arguments`` byte for byte.
    input: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Message(msgspec.Struct):
    id: str | None = None
    model: str | None = None
    content: list[_Block] = msgspec.field(default_factory=list)
    stop_reason: str | None = None
    usage: _Usage | None = None


class _ErrorDetails(msgspec.Struct):
    error_code: str | None = None


class _ErrorInfo(msgspec.Struct):
    type: str | None = None
    message: str | None = None
    details: _ErrorDetails | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInfo | None = None
    request_id: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Event(msgspec.Struct):
    """Any stream event; ``type`` says which of the other fields are set."""

    type: str = "unknown"
    message: _Message | None = None
    index: int | None = None
    content_block: _Block | None = None
    delta: _Delta | None = None
    usage: _Usage | None = None
    error: _ErrorInfo | None = None


_message_decoder = msgspec.json.Decoder(_Message)
_error_decoder = msgspec.json.Decoder(_ErrorBody)
_event_decoder = msgspec.json.Decoder(_Event)

# -- to_wire --------------------------------------------------------------------------------------------


def to_wire(request: ProviderRequest, *, stream: bool = False) -> dict[str, Any]:
    """The Messages API body for ``request``.

    Raises:
        BadRequestError: a message cannot be expressed (e.g. tool-call arguments that are not JSON).
    """
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            system.append(plain_text(message.content))
            continue
        role, blocks = _turn(message, index)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            # The API wants alternating turns: parallel tool results become one user turn.
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": turns,
    }
    if system:
        body["system"] = "\n\n".join(system)
    if request.temperature is not None and not _rejects_sampling(request.model):
        body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
        choice = _tool_choice(request.tool_choice, request.extra.get("parallel_tool_calls"))
        if choice is not None:
            body["tool_choice"] = choice
    schema = _json_schema(request.response_format)
    if schema is not None:
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if stream:
        body["stream"] = True
    return body


def _rejects_sampling(model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in NO_SAMPLING_MODELS)


def _blocks(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Content blocks from OpenAI-style content; Anthropic-native blocks pass through unchanged."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [_image(part) if part.get("type") == "image_url" else part for part in content]


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url, inline = image_url(part)
    if inline is not None:
        media_type, data = inline
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _turn(message: Message, index: int) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
        content = _blocks(message.content)
        if content:
            result["content"] = content
        return "user", [result]
    if message.role == "assistant":
        blocks = _blocks(message.content)
        for j, call in enumerate(message.tool_calls or []):
            function = call.get("function") or {}
            blocks.append(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{index}_{j}",
                    "name": function.get("name", ""),
                    "input": tool_arguments(function.get("arguments"), f"messages[{index}].tool_calls[{j}]"),
                }
            )
        return "assistant", blocks
    return "user", _blocks(message.content)


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", tool)
    out: dict[str, Any] = {
        "name": function.get("name", ""),
        "input_schema": function.get("parameters") or {"type": "object", "properties": {}},
    }
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("strict") is not None:
        out["strict"] = function["strict"]
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    out: dict[str, Any] | None
    if choice is None:
        out = None if parallel is not False else {"type": "auto"}
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        out = {"type": "tool", "name": name} if name else {"type": "auto"}
    else:
        out = None
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def _json_schema(response_format: dict[str, Any] | None) -> Any:
    """The schema of an OpenAI ``json_schema`` response format (Anthropic has no schema-less JSON mode)."""
    if not response_format or response_format.get("type") != "json_schema":
        return None
    spec = response_format.get("json_schema") or {}
    return spec.get("schema", spec) if isinstance(spec, dict) else None


# -- from_wire ------------------------------------------------------------------------------------------


def from_wire(body: bytes, *, model: str, backend: str, include_raw: bool = False) -> ProviderResponse:
    """The normalized response for a Messages API body.

    Raises:
        UpstreamProtocolError: the body is not a Messages API response.
    """
    try:
        message = _message_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise errors.UpstreamProtocolError(
            f"{backend}: the response body is not a Messages API message", backend=backend, status=200
        ) from None
    tool_calls = [
        ToolCall(id=b.id or f"toolu_{i}", name=b.name or "", arguments=_raw_text(b.input))
        for i, b in enumerate(x for x in message.content if x.type == "tool_use")
    ]
    texts = [b.text or "" for b in message.content if b.type == "text"]
    return _response(
        message,
        content="".join(texts) if texts else None,
        tool_calls=tool_calls,
        usage=message.usage,
        model=model,
        raw=body if include_raw else None,
    )


def _raw_text(raw: msgspec.Raw | None) -> str:
    text = bytes(raw).decode("utf-8").strip() if raw is not None else ""
    return "{}" if text in ("", "null") else text


def _response(
    message: _Message,
    *,
    content: str | None,
    tool_calls: list[ToolCall],
    usage: _Usage | None,
    model: str,
    raw: bytes | None,
) -> ProviderResponse:
    native = message.stop_reason
    return ProviderResponse(
        content=content,
        model=message.model or model,
        finish_reason=_STOP_REASONS.get(native or "", "stop"),
        native_finish_reason=native,
        usage=_usage(usage),
        tool_calls=tool_calls or None,
        id=message.id,
        raw=raw,
    )


def _usage(usage: _Usage | None) -> Usage:
    """``input_tokens`` excludes cache reads and writes: the prompt is the sum of the three."""
    if usage is None:
        return Usage()
    cache_read = usage.cache_read_input_tokens
    cache_write = usage.cache_creation_input_tokens
    prompt = (usage.input_tokens or 0) + (cache_read or 0) + (cache_write or 0)
    completion = usage.output_tokens or 0
    details = usage.output_tokens_details
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=details.thinking_tokens if details is not None else None,
    )


# -- parse_error ----------------------------------------------------------------------------------------


def parse_error(
    backend: str, status: int | None, headers: Mapping[str, str], body: bytes | None
) -> errors.ProviderError:
    """The typed error for an error response (or, with ``status`` None, an ``error`` stream event)."""
    info: _ErrorInfo | None = None
    request_id: str | None = None
    text: str | None = None
    if body:
        try:
            decoded = _error_decoder.decode(body)
            info, request_id = decoded.error, decoded.request_id
        except (msgspec.DecodeError, msgspec.ValidationError):
            # Not Anthropic's JSON (a proxy's HTML page, say): classify by status, keep a scrubbed excerpt.
            text = body.decode("utf-8", "replace").strip() or None
    error_type = info.type if info is not None else None
    code = info.details.error_code if info is not None and info.details is not None else None
    cls = _ERROR_TYPES.get(error_type or "") or (classify_status(status) if status is not None else errors.ServerError)
    message = info.message if info is not None else text
    if code == _SPEND_LIMIT_CODE or (
        # A spend limit the organization set itself comes as a 400 (providers.md section 3).
        error_type == "invalid_request_error" and message is not None and "usage limits" in message.lower()
    ):
        cls = errors.QuotaExceededError
    retry_after = retry_after_from_headers(headers)
    if retry_after is None and cls is errors.RateLimitedError:
        retry_after = reset_after_from_headers(headers)
    return error_from_status(
        cls,
        backend=backend,
        status=status,
        provider_message=message,
        headers=headers,
        retry_after=retry_after,
        provider_code=redact(provider_code) if (provider_code := code or error_type) else None,
        request_id=redact(request_id) if request_id else None,
    )


def reset_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds until the exhausted ``anthropic-ratelimit-*`` bucket resets (RFC 3339 reset times).

    The exhausted bucket is the one with nothing remaining; when none says 0, the one with the smallest
    share left. None when the headers are absent or unparseable.
    """
    now = time.time() if now is None else now
    buckets: list[tuple[float, float]] = []  # (share remaining, seconds to reset)
    for bucket in _RATE_LIMIT_BUCKETS:
        reset = headers.get(f"anthropic-ratelimit-{bucket}-reset")
        if reset is None:
            continue
        try:
            seconds = max(0.0, datetime.fromisoformat(reset.strip()).timestamp() - now)
        except ValueError:
            continue
        buckets.append((_share_left(headers, bucket), seconds))
    if not buckets:
        return None
    lowest = min(share for share, _ in buckets)
    return max(seconds for share, seconds in buckets if share == lowest)


def _share_left(headers: Mapping[str, str], bucket: str) -> float:
    """What is left of a bucket, 0..1 (1 when the headers do not say)."""
    try:
        remaining = float(headers.get(f"anthropic-ratelimit-{bucket}-remaining", "nan"))
        limit = float(headers.get(f"anthropic-ratelimit-{bucket}-limit", "nan"))
    except ValueError:
        return 1.0
    if math.isnan(remaining):
        return 1.0
    if remaining <= 0:
        return 0.0
    return remaining / limit if limit > 0 else 1.0


# -- stream decoding ------------------------------------------------------------------------------------


class _StreamState(StreamState):
    """Assembles stream events into the same normalized response ``from_wire`` gives."""

    def __init__(self, model: str, backend: str, include_raw: bool) -> None:
        super().__init__(backend)
        self.model = model
        self.message = _Message()
        self.usage = _Usage()
        self.texts: list[str] = []
        self.saw_text = False
        # Block index → (tool-call ordinal, id, name, argument pieces, input from content_block_start).
        self.tools: dict[int, tuple[int, str, str, list[str], msgspec.Raw | None]] = {}
        self.started = False
        self.stopped = False
        self.raw: list[bytes] | None = [] if include_raw else None

    def _feed(self, sse: httpx.ServerSentEvent) -> list[StreamItem]:
        name, data = sse.event, sse.data
        if self.raw is not None:
            self.raw.append(data.encode("utf-8"))
        if name == "ping":
            return []
        try:
            event = _event_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise errors.UpstreamProtocolError(
                f"{self.backend}: a stream event is not valid JSON", backend=self.backend, status=200
            ) from None
        kind = "error" if name == "error" else event.type
        if kind == "error":
            raise parse_error(self.backend, None, {}, data.encode("utf-8"))
        if kind == "message_start" and event.message is not None:
            self.started = True
            self.message = event.message
            if event.message.usage is not None:
                self.usage = event.message.usage
        elif kind == "content_block_start" and event.content_block is not None and event.index is not None:
            return self._block_start(event.index, event.content_block)
        elif kind == "content_block_delta" and event.delta is not None and event.index is not None:
            return self._block_delta(event.index, event.delta)
        elif kind == "message_delta":
            if event.delta is not None and event.delta.stop_reason is not None:
                self.message.stop_reason = event.delta.stop_reason
            if event.usage is not None:
                self._overlay_usage(event.usage)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def _block_start(self, index: int, block: _Block) -> list[StreamItem]:
        if block.type == "text":
            self.saw_text = True
            if block.text:
                self.texts.append(block.text)
                return [TextDelta(block.text)]
        elif block.type == "tool_use":
            ordinal = len(self.tools)
            call_id = block.id or f"toolu_{ordinal}"
            self.tools[index] = (ordinal, call_id, block.name or "", [], block.input)
            return [ToolCallDelta(index=ordinal, id=call_id, name=block.name or "")]
        return []

    def _block_delta(self, index: int, delta: _Delta) -> list[StreamItem]:
        if delta.type == "text_delta" and delta.text:
            self.saw_text = True
            self.texts.append(delta.text)
            return [TextDelta(delta.text)]
        if delta.type == "input_json_delta" and delta.partial_json and index in self.tools:
            tool = self.tools[index]
            tool[3].append(delta.partial_json)
            return [ToolCallDelta(index=tool[0], arguments=delta.partial_json)]
        return []

    def _overlay_usage(self, usage: _Usage) -> None:
        """``message_delta`` counts are cumulative: each one replaces what it carries."""
        for field in usage.__struct_fields__:
            value = getattr(usage, field)
            if value is not None:
                setattr(self.usage, field, value)

    def finish(self) -> ProviderResponse:
        if self.failure is not None:
            raise self.failure
        if not self.started or not self.stopped:
            raise errors.UpstreamProtocolError(
                f"{self.backend}: the stream ended before message_stop", backend=self.backend, status=200
            )
        tool_calls = [
            ToolCall(
                id=call_id,
                name=name,
                arguments="".join(pieces) if pieces else _raw_text(start_input),
            )
            for _, call_id, name, pieces, start_input in sorted(self.tools.values(), key=lambda t: t[0])
        ]
        raw = b"[" + b",".join(self.raw) + b"]" if self.raw is not None else None
        return _response(
            self.message,
            content="".join(self.texts) if self.saw_text else None,
            tool_calls=tool_calls,
            usage=self.usage,
            model=self.model,
            raw=raw,
        )


# -- the provider ---------------------------------------------------------------------------------------


class AnthropicProvider(HttpBackend):
    """One Anthropic backend: ``HttpBackend`` with the version header and the key in ``x-api-key``."""

    provider = "anthropic"
    default_base_url = DEFAULT_BASE_URL
    auth_header = "x-api-key"
    default_headers = (("anthropic-version", API_VERSION),)

    def _parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> errors.ProviderError:
        return parse_error(self.name, status, headers, body)

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """One Messages API call.

        Raises:
            ProviderError: a subclass for each upstream fault (status and body both count).
        """
        response = await self._post(MESSAGES_PATH, msgspec.json.encode(to_wire(request)), request)
        return from_wire(response.content, model=request.model, backend=self.name, include_raw=request.include_raw)

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """The streamed call: text and tool-call deltas, then the final response.

        Raises:
            ProviderError: as ``complete``; an ``error`` event mid-stream raises its typed error and a
                stream that ends before ``message_stop`` raises ``UpstreamProtocolError``.
        """
        body = msgspec.json.encode(to_wire(request, stream=True))
        state = _StreamState(request.model, self.name, request.include_raw)
        async with (
            self._open_stream(MESSAGES_PATH, body, request) as response,
            stream_items(response, state) as batches,
        ):
            async for items in batches:
                for item in items:
                    yield item
        yield state.finish()
