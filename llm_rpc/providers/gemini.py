"""The Google Gemini backend (Generative Language API, ``generateContent``), plain and streamed.

Callers speak OpenAI-style messages; this module translates them to Gemini's ``contents`` (roles
``user``/``model``, ``systemInstruction``, ``functionCall``/``functionResponse`` parts, a
``generationConfig``) and Gemini's answers, SSE chunks and errors back to the normalized
``ProviderResponse`` and the ``ProviderError`` tree. The key travels only in the ``x-goog-api-key``
header, never in a URL; it lives in a ``Secret`` until that header is built, and every error goes
through ``_http.error_from_status``, which scrubs known keys from the provider's text.

Gemini 3 and later attach a ``thoughtSignature`` to function calls and refuse (400) a replayed model
turn without it. Callers replay OpenAI-shaped tool calls, which have no place for it, so each backend
remembers the signatures of the calls it returned (by call id, bounded) and puts them back; for a call
it never saw it sends Google's documented placeholder, which skips the check.

Wire reference: ../shared/docs/providers.md sections 4, 6 and 9.
"""

from __future__ import annotations

import functools
import mimetypes
import os
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote

import msgspec

from llm_rpc import errors
from llm_rpc._secret import redact
from llm_rpc.providers._base import HttpBackend, StreamState, image_url, plain_text, stream_items, tool_arguments
from llm_rpc.providers._client import httpx
from llm_rpc.providers._http import classify_status, error_from_status, parse_duration
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.types import Message, ToolCall, Usage

__all__ = ["GeminiProvider", "from_wire", "parse_error", "to_wire"]

# -- constants ------------------------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
#: Google's documented placeholder for a replayed function call whose real signature is unknown.
SKIP_SIGNATURE = "skip_thought_signature_validator"
#: How many function-call signatures a backend remembers for replay.
SIGNATURE_CACHE_SIZE = 4096
#: Prefix of the call ids we make up when Gemini gives none (they are not sent back as ids).
SYNTHETIC_ID_PREFIX = "call_gemini_"
#: Models that predate thought signatures: no placeholder is sent to them.
_UNSIGNED_MODELS = ("gemini-1", "gemini-2", "models/gemini-1", "models/gemini-2")

_FINISH_REASONS: dict[str, str] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
    "MALFORMED_FUNCTION_CALL": "error",
    "UNEXPECTED_TOOL_CALL": "error",
    "TOO_MANY_TOOL_CALLS": "error",
    "OTHER": "error",
    "FINISH_REASON_UNSPECIFIED": "error",
}
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# A status string stands in for the HTTP status of an error that arrives inside a 200 stream.
_STATUS_CODES = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
_RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"
_QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"

# -- wire Structs (only the fields we read; unknown fields and values are ignored) ------------------------


class _FunctionCall(msgspec.Struct):
    name: str = ""
    # Kept as raw JSON: it becomes ``ToolCall.arguments`` byte for byte.
    args: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    id: str | None = None


class _Part(msgspec.Struct, rename="camel"):
    text: str | None = None
    thought: bool | None = None
    function_call: _FunctionCall | None = None
    thought_signature: str | None = None


class _Content(msgspec.Struct):
    parts: list[_Part] = msgspec.field(default_factory=list)


class _Candidate(msgspec.Struct, rename="camel"):
    content: _Content | None = None
    finish_reason: str | None = None


class _UsageMetadata(msgspec.Struct, rename="camel"):
    prompt_token_count: int | None = None
    candidates_token_count: int | None = None
    thoughts_token_count: int | None = None
    tool_use_prompt_token_count: int | None = None
    cached_content_token_count: int | None = None


class _PromptFeedback(msgspec.Struct, rename="camel"):
    block_reason: str | None = None


class _Violation(msgspec.Struct, rename="camel"):
    quota_id: str | None = None
    quota_metric: str | None = None


class _ErrorDetail(msgspec.Struct, rename="camel"):
    type: str | None = msgspec.field(default=None, name="@type")
    reason: str | None = None
    retry_delay: str | None = None
    violations: list[_Violation] | None = None


class _ErrorInfo(msgspec.Struct):
    code: int | None = None
    message: str | None = None
    status: str | None = None
    details: list[_ErrorDetail] | None = None


class _ErrorBody(msgspec.Struct):
    error: _ErrorInfo | None = None


class _Response(msgspec.Struct, rename="camel"):
    candidates: list[_Candidate] | None = None
    prompt_feedback: _PromptFeedback | None = None
    usage_metadata: _UsageMetadata | None = None
    model_version: str | None = None
    response_id: str | None = None
    # Only in a stream: a failure after the 200.
    error: _ErrorInfo | None = None


_response_decoder = msgspec.json.Decoder(_Response)
_error_decoder = msgspec.json.Decoder(_ErrorBody | list[_ErrorBody])
_json_decoder = msgspec.json.Decoder()

# -- to_wire --------------------------------------------------------------------------------------------


def to_wire(request: ProviderRequest, signatures: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The ``generateContent`` body for ``request``; ``signatures`` maps call ids to thought signatures.

    Raises:
        BadRequestError: a message cannot be expressed (e.g. tool-call arguments that are not JSON).
    """
    signatures = signatures or {}
    placeholder = not request.model.startswith(_UNSIGNED_MODELS)
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for index, message in enumerate(request.messages):
        if message.role in ("system", "developer"):
            system.append(plain_text(message.content))
            continue
        role, parts = _turn(message, index, call_names, signatures, placeholder)
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            # Parallel function responses belong in one user turn.
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": "\n\n".join(system)}]}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.stop:
        config["stopSequences"] = list(request.stop)
    _response_format(request.response_format, config)
    if config:
        body["generationConfig"] = config
    if request.tools:
        body["tools"] = [{"functionDeclarations": [_declaration(t) for t in request.tools]}]
        tool_config = _tool_config(request.tool_choice)
        if tool_config is not None:
            body["toolConfig"] = tool_config
    return body


def _parts(content: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """Gemini parts from OpenAI-style content; parts already in Gemini's shape pass through unchanged."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    out: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type")
        if kind == "text":
            out.append({"text": str(part.get("text", ""))})
        elif kind == "image_url":
            out.append(_image(part))
        else:
            out.append(part)
    return out


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url, inline = image_url(part)
    if inline is not None:
        mime, data = inline
        return {"inlineData": {"mimeType": mime, "data": data}}
    mime = mimetypes.guess_type(url)[0] or "application/octet-stream"
    return {"fileData": {"fileUri": url, "mimeType": mime}}


def _turn(
    message: Message,
    index: int,
    call_names: dict[str, str],
    signatures: Mapping[str, str],
    placeholder: bool,
) -> tuple[str, list[dict[str, Any]]]:
    if message.role == "tool":
        call_id = message.tool_call_id or ""
        response: dict[str, Any] = {
            "name": message.name or call_names.get(call_id, ""),
            "response": _function_response(message.content),
        }
        if call_id and not call_id.startswith(SYNTHETIC_ID_PREFIX):
            response["id"] = call_id
        return "user", [{"functionResponse": response}]
    if message.role == "assistant":
        parts = _parts(message.content)
        for j, call in enumerate(message.tool_calls or []):
            function = call.get("function") or {}
            call_id = str(call.get("id") or "")
            name = str(function.get("name", ""))
            call_names[call_id] = name
            function_call: dict[str, Any] = {
                "name": name,
                "args": tool_arguments(function.get("arguments"), f"messages[{index}].tool_calls[{j}]"),
            }
            if call_id and not call_id.startswith(SYNTHETIC_ID_PREFIX):
                function_call["id"] = call_id
            part: dict[str, Any] = {"functionCall": function_call}
            signature = call.get("thought_signature") or signatures.get(call_id)
            if signature is None and j == 0 and placeholder:
                # Only the first call of a turn carries a signature (parallel calls share it).
                signature = SKIP_SIGNATURE
            if signature is not None:
                part["thoughtSignature"] = signature
            parts.append(part)
        return "model", parts
    return "user", _parts(message.content)


def _function_response(content: str | list[dict[str, Any]] | None) -> dict[str, Any]:
    """``functionResponse.response`` must be an object: a JSON object passes, anything else is ``output``."""
    text = plain_text(content)
    try:
        value = _json_decoder.decode(text) if text else text
    except msgspec.DecodeError:
        value = text
    return value if isinstance(value, dict) else {"output": value}


def _declaration(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool.get("function", tool)
    out: dict[str, Any] = {"name": function.get("name", "")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters"):
        # JSON Schema as is (``parameters`` would be Google's OpenAPI subset).
        out["parametersJsonSchema"] = function["parameters"]
    return out


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"functionCallingConfig": {"mode": _TOOL_MODES[choice]}}
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") or choice.get("name")
        if name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    return None


def _response_format(response_format: dict[str, Any] | None, config: dict[str, Any]) -> None:
    if not response_format:
        return
    kind = response_format.get("type")
    if kind == "json_object":
        config["responseMimeType"] = "application/json"
    elif kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        config["responseMimeType"] = "application/json"
        config["responseJsonSchema"] = spec.get("schema", spec) if isinstance(spec, dict) else spec


# -- from_wire ------------------------------------------------------------------------------------------


def from_wire(body: bytes, *, model: str, backend: str, include_raw: bool = False) -> ProviderResponse:
    """The normalized response for a ``GenerateContentResponse`` body.

    Raises:
        UpstreamProtocolError: the body is not a GenerateContentResponse.
    """
    return _from_response(_decode(body, backend), model=model, raw=body if include_raw else None)[0]


def _decode(body: bytes, backend: str) -> _Response:
    try:
        return _response_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise errors.UpstreamProtocolError(
            f"{backend}: the response body is not a GenerateContentResponse", backend=backend, status=200
        ) from None


def _from_response(response: _Response, *, model: str, raw: bytes | None) -> tuple[ProviderResponse, dict[str, str]]:
    """The normalized response, and the thought signatures of its tool calls by call id."""
    candidate = response.candidates[0] if response.candidates else None
    parts = candidate.content.parts if candidate is not None and candidate.content is not None else []
    calls = _tool_calls(parts)
    normalized = _normalize(
        parts,
        finish_reason=candidate.finish_reason if candidate is not None else None,
        block_reason=response.prompt_feedback.block_reason if response.prompt_feedback is not None else None,
        usage=response.usage_metadata,
        model=response.model_version or model,
        response_id=response.response_id,
        raw=raw,
        tool_calls=[call for call, _ in calls],
    )
    return normalized, {call.id: signature for call, signature in calls if signature}


def _tool_calls(parts: list[_Part]) -> list[tuple[ToolCall, str | None]]:
    """Tool calls with their thought signatures; ids are made up where Gemini gives none."""
    out = []
    for i, part in enumerate(p for p in parts if p.function_call is not None):
        call = part.function_call
        assert call is not None
        args = bytes(call.args).decode("utf-8").strip()
        call_id = call.id or f"{SYNTHETIC_ID_PREFIX}{os.urandom(6).hex()}_{i}"
        arguments = "{}" if args in ("", "null") else args
        out.append((ToolCall(id=call_id, name=call.name, arguments=arguments), part.thought_signature))
    return out


def _normalize(
    parts: list[_Part],
    *,
    finish_reason: str | None,
    block_reason: str | None,
    usage: _UsageMetadata | None,
    model: str,
    response_id: str | None,
    raw: bytes | None,
    tool_calls: list[ToolCall],
) -> ProviderResponse:
    texts = [p.text for p in parts if p.text is not None and not p.thought]
    native: str | None
    if finish_reason is None and block_reason is not None:
        # The prompt itself was blocked: no candidates at all.
        finish, native = "content_filter", block_reason
    else:
        native = finish_reason
        finish = _FINISH_REASONS.get(native or "", "error" if native else "stop")
        if finish == "stop" and tool_calls:
            # Gemini says STOP when the model called a function.
            finish = "tool_calls"
    return ProviderResponse(
        content="".join(texts) if texts else None,
        model=model,
        finish_reason=finish,
        native_finish_reason=native,
        usage=_usage(usage),
        tool_calls=tool_calls or None,
        id=response_id,
        raw=raw,
    )


def _usage(usage: _UsageMetadata | None) -> Usage:
    """Prompt = prompt + tool-use prompt; completion = candidates + thoughts (which Gemini counts apart)."""
    if usage is None:
        return Usage()
    thoughts = usage.thoughts_token_count
    prompt = (usage.prompt_token_count or 0) + (usage.tool_use_prompt_token_count or 0)
    completion = (usage.candidates_token_count or 0) + (thoughts or 0)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cached_tokens=usage.cached_content_token_count,
        reasoning_tokens=thoughts,
    )


# -- parse_error ----------------------------------------------------------------------------------------


def parse_error(
    backend: str, status: int | None, headers: Mapping[str, str], body: bytes | None
) -> errors.ProviderError:
    """The typed error for an error response (``status`` None: an error object inside a stream)."""
    info: _ErrorInfo | None = None
    text: str | None = None
    if body:
        try:
            decoded = _error_decoder.decode(body)
            # Without alt=sse the streaming endpoint wraps everything in a JSON array.
            first = decoded[0] if isinstance(decoded, list) and decoded else decoded
            info = first.error if isinstance(first, _ErrorBody) else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            text = body.decode("utf-8", "replace").strip() or None
    return _error(backend, status, headers, info, text)


def _error(
    backend: str, status: int | None, headers: Mapping[str, str], info: _ErrorInfo | None, text: str | None
) -> errors.ProviderError:
    effective = status
    if effective is None and info is not None:
        effective = info.code or _STATUS_CODES.get(info.status or "")
    cls = classify_status(effective) if effective is not None else errors.ServerError
    details = (info.details if info is not None else None) or []
    reasons = [d.reason for d in details if d.reason]
    if any(r.startswith("API_KEY_") for r in reasons):
        # Gemini answers a bad key with 400 INVALID_ARGUMENT (reason API_KEY_INVALID).
        cls = errors.AuthError
    retry_after = None
    for detail in details:
        if detail.retry_delay is not None and (detail.type is None or detail.type == _RETRY_INFO):
            retry_after = parse_duration(detail.retry_delay)
    if cls is errors.RateLimitedError and _per_day(details):
        cls = errors.QuotaExceededError
    code = reasons[0] if reasons else info.status if info is not None else None
    return error_from_status(
        cls,
        backend=backend,
        status=status,
        provider_message=info.message if info is not None else text,
        headers=headers,
        retry_after=retry_after,
        provider_code=redact(code) if code else None,
    )


def _per_day(details: list[_ErrorDetail]) -> bool:
    """A daily quota: waiting seconds will not clear it (quota ids such as ``...PerDayPerProject...``)."""
    for detail in details:
        if detail.type not in (None, _QUOTA_FAILURE):
            continue
        for violation in detail.violations or []:
            names = f"{violation.quota_id or ''} {violation.quota_metric or ''}".lower().replace("_", "")
            if "perday" in names:
                return True
    return False


# -- stream decoding ------------------------------------------------------------------------------------


class _StreamState(StreamState):
    """Assembles SSE chunks (each a GenerateContentResponse with only new parts) into one response."""

    def __init__(self, model: str, backend: str, include_raw: bool) -> None:
        super().__init__(backend)
        self.model = model
        self.parts: list[_Part] = []
        self.tool_calls: list[ToolCall] = []
        self.signatures: dict[str, str] = {}
        self.finish_reason: str | None = None
        self.block_reason: str | None = None
        self.usage: _UsageMetadata | None = None
        self.model_version: str | None = None
        self.response_id: str | None = None
        self.raw: list[bytes] | None = [] if include_raw else None

    def _feed(self, sse: httpx.ServerSentEvent) -> list[StreamItem]:
        if not sse.data:
            return []
        raw = sse.data.encode("utf-8")
        if self.raw is not None:
            self.raw.append(raw)
        try:
            chunk = _response_decoder.decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            raise errors.UpstreamProtocolError(
                f"{self.backend}: a stream chunk is not valid JSON", backend=self.backend, status=200
            ) from None
        if chunk.error is not None:
            raise _error(self.backend, None, {}, chunk.error, None)
        self.model_version = chunk.model_version or self.model_version
        self.response_id = chunk.response_id or self.response_id
        if chunk.usage_metadata is not None:
            self.usage = chunk.usage_metadata
        if chunk.prompt_feedback is not None and chunk.prompt_feedback.block_reason:
            self.block_reason = chunk.prompt_feedback.block_reason
        items: list[StreamItem] = []
        candidate = chunk.candidates[0] if chunk.candidates else None
        if candidate is None:
            return items
        if candidate.finish_reason:
            self.finish_reason = candidate.finish_reason
        parts = candidate.content.parts if candidate.content is not None else []
        self.parts.extend(parts)
        for part in parts:
            if part.text and not part.thought:
                items.append(TextDelta(part.text))
        for call, signature in _tool_calls(parts):
            items.append(
                ToolCallDelta(index=len(self.tool_calls), id=call.id, name=call.name, arguments=call.arguments)
            )
            self.tool_calls.append(call)
            if signature:
                self.signatures[call.id] = signature
        return items

    def finish(self) -> ProviderResponse:
        if self.failure is not None:
            raise self.failure
        if self.finish_reason is None and self.block_reason is None:
            raise errors.UpstreamProtocolError(
                f"{self.backend}: the stream ended without a finishReason", backend=self.backend, status=200
            )
        raw = b"[" + b",".join(self.raw) + b"]" if self.raw is not None else None
        return _normalize(
            self.parts,
            finish_reason=self.finish_reason,
            block_reason=self.block_reason,
            usage=self.usage,
            model=self.model_version or self.model,
            response_id=self.response_id,
            raw=raw,
            tool_calls=self.tool_calls,
        )


# -- the provider ---------------------------------------------------------------------------------------


class GeminiProvider(HttpBackend):
    """One Gemini backend: ``HttpBackend`` with the key in ``x-goog-api-key`` and the signatures it returned."""

    provider = "gemini"
    default_base_url = DEFAULT_BASE_URL
    auth_header = "x-goog-api-key"

    @functools.cached_property
    def _signatures(self) -> OrderedDict[str, str]:
        # Made on first use, as the client is, so the class takes HttpBackend's constructor as it is.
        return OrderedDict()

    def _parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> errors.ProviderError:
        return parse_error(self.name, status, headers, body)

    @staticmethod
    def _path(model: str, method: str) -> str:
        # "gemini-x" → models/gemini-x; "tunedModels/t" and "models/m" are already resource names.
        resource = model if "/" in model else f"models/{model}"
        return f"{quote(resource, safe='/')}:{method}"

    def _remember(self, signatures: Mapping[str, str]) -> None:
        for call_id, signature in signatures.items():
            self._signatures[call_id] = signature
            self._signatures.move_to_end(call_id)
        while len(self._signatures) > SIGNATURE_CACHE_SIZE:
            self._signatures.popitem(last=False)

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """One ``generateContent`` call.

        Raises:
            ProviderError: a subclass for each upstream fault (status and body both count).
        """
        body = msgspec.json.encode(to_wire(request, self._signatures))
        response = await self._post(self._path(request.model, "generateContent"), body, request)
        raw = response.content
        result, signatures = _from_response(
            _decode(raw, self.name), model=request.model, raw=raw if request.include_raw else None
        )
        self._remember(signatures)
        return result

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """The streamed call (``streamGenerateContent?alt=sse``): deltas, then the final response.

        Raises:
            ProviderError: as ``complete``; an error chunk raises its typed error and a stream that ends
                without a ``finishReason`` raises ``UpstreamProtocolError``.
        """
        body = msgspec.json.encode(to_wire(request, self._signatures))
        state = _StreamState(request.model, self.name, request.include_raw)
        path = self._path(request.model, "streamGenerateContent")
        async with (
            self._open_stream(path, body, request, params={"alt": "sse"}) as response,
            stream_items(response, state) as batches,
        ):
            async for items in batches:
                for item in items:
                    yield item
        self._remember(state.signatures)
        yield state.finish()
