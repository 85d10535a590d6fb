"""Ollama's native ``/api/chat``: one JSON body with ``stream: false``, NDJSON lines when streaming.

The native API rather than Ollama's ``/v1`` layer (use ``openai-compatible`` for that): it takes
``format: <JSON Schema>`` for structured output and reports done reasons and counts as the model
runs them. It differs from OpenAI where callers notice: tool-call arguments are objects (we return
them as JSON strings, as every provider does), calls may come without ids (we make some), there is no
``tool_choice`` (``none`` drops the tools; the other values are dropped with a warning), and a stream
ends with a ``done: true`` line that carries the token counts. Ollama streams by default, so a plain
call must say ``"stream": false``.

Layout as every provider module: constants, wire Structs, ``to_wire``, ``from_wire``, ``parse_error``,
stream-line decoding, then ``OllamaProvider``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from llm_rpc import errors
from llm_rpc._secret import redact
from llm_rpc.providers._base import HttpBackend
from llm_rpc.providers._http import LineTooLongError, classify_status, error_from_status, ndjson_lines
from llm_rpc.providers.base import ProviderRequest, ProviderResponse, StreamItem, TextDelta, ToolCallDelta
from llm_rpc.types import Message, ToolCall, Usage

__all__ = ["DEFAULT_BASE_URL", "OllamaProvider", "StreamAssembler", "from_wire", "parse_error", "to_wire"]

logger = logging.getLogger(__name__)

# -- constants --------------------------------------------------------------------------------------------

DEFAULT_BASE_URL: Final = "http://localhost:11434"
CHAT_PATH: Final = "/api/chat"
_FINISH: Final[dict[str, str]] = {"stop": "stop", "length": "length", "load": "stop", "unload": "stop"}
_ROLES: Final[dict[str, str]] = {"developer": "system"}
_SNIPPET: Final = 200
_MAX_LINE: Final = 16 * 1024 * 1024  # one NDJSON line; Ollama's are a few hundred bytes

# -- wire Structs (only the fields read; unknown fields and values are tolerated) -------------------------


class _Function(msgspec.Struct):
    name: str | None = None
    # An object natively; tolerated as a string.
    arguments: Any = None


class _ToolCall(msgspec.Struct):
    id: str | None = None
    function: _Function | None = None


class _Message(msgspec.Struct):
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Chat(msgspec.Struct):
    """A whole ``stream: false`` body, or one NDJSON line of a stream."""

    model: str | None = None
    message: _Message | None = None
    done: bool = False
    done_reason: str | None = None
    prompt_eval_count: int | None = None
    eval_count: int | None = None
    # {"error": "..."}: a failed request, or a failure after the stream began.
    error: Any = None


_decode_chat = msgspec.json.Decoder(_Chat).decode
_encode = msgspec.json.Encoder().encode

# -- to_wire ------------------------------------------------------------------------------------------------


def to_wire(request: ProviderRequest, *, stream: bool = False, backend: str = "ollama") -> bytes:
    """The JSON body of an ``/api/chat`` call for ``request``."""
    body: dict[str, Any] = {
        "model": request.model,
        "messages": _messages(request.messages),
        "stream": stream,
    }
    options: dict[str, Any] = {}
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.temperature is not None:
        options["temperature"] = request.temperature
    if request.stop:
        options["stop"] = request.stop
    tools = request.tools
    choice = request.tool_choice
    if choice == "none":
        # No tool_choice here; "none" is honoured by not offering the tools at all.
        tools = None
    elif choice is not None and choice != "auto":
        logger.warning(
            "%s: Ollama has no tool_choice; %s dropped (the model may answer without calling a tool)",
            backend,
            "a named tool choice" if isinstance(choice, dict) else repr(choice),
            extra={"backend": backend},
        )
    if tools:
        body["tools"] = [{"type": "function", "function": t} if "type" not in t and "name" in t else t for t in tools]
    fmt = _format(request.response_format)
    if fmt is not None:
        body["format"] = fmt
    extra = dict(request.extra)
    if isinstance(extra.get("options"), dict):
        options = {**extra.pop("options"), **options}
    if options:
        body["options"] = options
    for key, value in extra.items():
        # keep_alive, think, ...: never replace what we set.
        body.setdefault(key, value)
    return _encode(body)


def _format(response_format: dict[str, Any] | None) -> Any:
    """OpenAI's ``response_format`` as Ollama's ``format``: the schema itself, or ``"json"``."""
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if isinstance(spec, dict):
            return spec.get("schema", spec)
        return None
    if kind == "json_object":
        return "json"
    return None


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """OpenAI-style messages in Ollama's shape: string content, images apart, tool calls with objects."""
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for m in messages:
        text, images = _content(m.content)
        wire: dict[str, Any] = {"role": _ROLES.get(m.role, m.role), "content": text}
        if images:
            wire["images"] = images
        if m.tool_calls:
            calls = []
            for tc in m.tool_calls:
                fn = tc.get("function") or {}
                name = fn.get("name", "")
                if tc.get("id"):
                    names[tc["id"]] = name
                call: dict[str, Any] = {"function": {"name": name, "arguments": _object(fn.get("arguments"))}}
                if tc.get("id"):
                    call["id"] = tc["id"]
                calls.append(call)
            wire["tool_calls"] = calls
        if m.role == "tool":
            if m.tool_call_id:
                wire["tool_call_id"] = m.tool_call_id
            name = m.name or names.get(m.tool_call_id or "")
            if name:
                wire["tool_name"] = name
        out.append(wire)
    return out


def _content(content: str | list[dict[str, Any]] | None) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content:
        if part.get("type") == "text":
            texts.append(str(part.get("text", "")))
        elif part.get("type") == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if isinstance(url, str) and url.startswith("data:") and "," in url:
                images.append(url.partition(",")[2])
    return "".join(texts), images


def _object(arguments: Any) -> Any:
    """OpenAI's JSON-string arguments as the object Ollama wants (left as is if not JSON)."""
    if isinstance(arguments, str):
        try:
            return msgspec.json.decode(arguments) if arguments.strip() else {}
        except msgspec.DecodeError:
            return arguments
    return {} if arguments is None else arguments


# -- from_wire ----------------------------------------------------------------------------------------------


def from_wire(body: bytes, *, backend: str, requested_model: str = "", include_raw: bool = False) -> ProviderResponse:
    """The normalized response of a successful ``stream: false`` body.

    Raises:
        UpstreamProtocolError: the body is not JSON or not a chat response.
        ServerError: a 2xx body that carries ``{"error": ...}``.
    """
    chat = _decode(body, backend, what="response body")
    if chat.error is not None:
        raise _stream_error(chat.error, backend)
    message = chat.message or _Message()
    tool_calls = _tool_calls(message.tool_calls) or None
    return _response(
        message.content or "",
        tool_calls,
        chat,
        requested_model=requested_model,
        raw=body if include_raw else None,
    )


def _response(
    content: str, tool_calls: list[ToolCall] | None, final: _Chat, *, requested_model: str, raw: bytes | None
) -> ProviderResponse:
    native = final.done_reason
    finish = _FINISH.get(native or "", "stop")
    if tool_calls and finish == "stop":
        # Ollama keeps "stop" when the model called tools (its /v1 layer rewrites it the same way).
        finish = "tool_calls"
    prompt, completion = final.prompt_eval_count or 0, final.eval_count or 0
    return ProviderResponse(
        content=None if tool_calls and not content else content,
        model=final.model or requested_model,
        finish_reason=finish,
        native_finish_reason=native,
        usage=Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion),
        tool_calls=tool_calls,
        raw=raw,
    )


def _tool_calls(calls: list[_ToolCall] | None) -> list[ToolCall]:
    return [
        ToolCall(
            id=tc.id or _new_call_id(),
            name=(tc.function.name if tc.function else None) or "",
            arguments=_arguments(tc.function.arguments if tc.function else None),
        )
        for tc in calls or []
    ]


def _new_call_id() -> str:
    """Ollama may give no id; the caller needs one to answer the call."""
    return "call_" + os.urandom(12).hex()


def _arguments(arguments: Any) -> str:
    if isinstance(arguments, str):
        return arguments
    return _encode({} if arguments is None else arguments).decode()


def _decode(body: bytes, backend: str, *, what: str) -> _Chat:
    try:
        return _decode_chat(body)
    except msgspec.DecodeError:
        raise _protocol(backend, f"the {what} is not JSON", body) from None
    except msgspec.ValidationError as exc:
        raise _protocol(backend, f"the {what} is not a chat response ({exc})", body) from None


def _protocol(backend: str, why: str, body: bytes | str) -> errors.UpstreamProtocolError:
    """An unreadable or truncated answer; the body's first bytes (scrubbed) help whoever debugs it."""
    return errors.UpstreamProtocolError(
        f"{backend}: protocol: {why}", backend=backend, status=200, provider_message=redact(_snippet(body)) or None
    )


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return " ".join(text.split())[:_SNIPPET]


# -- parse_error --------------------------------------------------------------------------------------------


def parse_error(status: int, headers: Mapping[str, str], body: bytes, *, backend: str) -> errors.ProviderError:
    """The typed error for a non-2xx answer: Ollama's body is ``{"error": "message"}``, typed by status."""
    try:
        message = _error_text(msgspec.json.decode(body))
    except msgspec.DecodeError:
        message = None
    return error_from_status(
        classify_status(status),
        backend=backend,
        status=status,
        provider_message=message if message is not None else (_snippet(body) or None),
        headers=headers,
    )


def _error_text(payload: Any) -> str | None:
    if isinstance(payload, dict) and "error" in payload:
        error = payload["error"]
        if isinstance(error, dict):
            error = error.get("message", error)
        return error if isinstance(error, str) else _encode(error).decode()
    return None


def _stream_error(error: Any, backend: str) -> errors.ProviderError:
    """An ``{"error": ...}`` line after the 200: the model failed while running."""
    message = _error_text({"error": error})
    return error_from_status(
        errors.ServerError, backend=backend, status=200, provider_message=message, finish_reason="error"
    )


# -- stream-line decoding -----------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamAssembler:
    """Folds NDJSON lines into deltas and, at the ``done: true`` line, the same result as ``complete``.

    Each line carries whole tool calls (not fragments); each gets the next index. A stream that ends
    without ``done: true`` was cut short: ``finish`` raises ``UpstreamProtocolError``.
    """

    backend: str
    requested_model: str
    include_raw: bool = False
    text: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    final: _Chat | None = None
    raw: list[bytes] = field(default_factory=list)

    def feed(self, line: bytes) -> list[StreamItem]:
        """The deltas in one NDJSON line."""
        payload = line.strip()
        if not payload:
            return []
        chunk = _decode(payload, self.backend, what="stream line")
        if self.include_raw:
            self.raw.append(payload)
        if chunk.error is not None:
            raise _stream_error(chunk.error, self.backend)
        if self.final is not None:
            return []  # nothing counts after done: true
        out: list[StreamItem] = []
        message = chunk.message or _Message()
        if message.content:
            self.text.append(message.content)
            out.append(TextDelta(message.content))
        for call in _tool_calls(message.tool_calls):
            out.append(ToolCallDelta(index=len(self.calls), id=call.id, name=call.name, arguments=call.arguments))
            self.calls.append(call)
        if chunk.done:
            self.final = chunk
        return out

    def finish(self) -> ProviderResponse:
        """The assembled response; the stream must have ended with ``done: true``."""
        if self.final is None:
            raise _protocol(self.backend, "the stream ended without a done line (truncated)", "")
        return _response(
            "".join(self.text),
            self.calls or None,
            self.final,
            requested_model=self.requested_model,
            raw=b"[" + b",".join(self.raw) + b"]" if self.include_raw else None,
        )


# -- the provider -------------------------------------------------------------------------------------------


class OllamaProvider(HttpBackend):
    """A backend on Ollama's native API, local by default: ``HttpBackend`` with an optional ``Bearer`` key.

    Ollama needs no key locally; give the backend an ``api_key_env`` for ollama.com's cloud, which
    takes ``Authorization: Bearer``.
    """

    provider = "ollama"
    default_base_url = DEFAULT_BASE_URL
    auth_header = "authorization"
    auth_prefix = "Bearer "
    needs_key = False

    def _parse_error(self, status: int, headers: Mapping[str, str], body: bytes) -> errors.ProviderError:
        return parse_error(status, headers, body, backend=self.name)

    async def complete(self, request: ProviderRequest) -> ProviderResponse:
        """One call with ``stream: false``.

        Raises:
            ProviderError: a subclass naming what went wrong.
        """
        response = await self._post(CHAT_PATH, to_wire(request, backend=self.name), request)
        return from_wire(
            response.content, backend=self.name, requested_model=request.model, include_raw=request.include_raw
        )

    async def stream(self, request: ProviderRequest) -> AsyncIterator[StreamItem]:
        """Deltas line by line, then one final ``ProviderResponse`` with the counts of the done line.

        Raises:
            ProviderError: as ``complete``; an ``{"error": ...}`` line is ``server_error``, a stream cut
                short is ``protocol``.
        """
        body = to_wire(request, stream=True, backend=self.name)
        assembler = StreamAssembler(self.name, request.model, include_raw=request.include_raw)
        async with self._open_stream(CHAT_PATH, body, request) as response, ndjson_lines(response, _MAX_LINE) as lines:
            try:
                async for line in lines:
                    for item in assembler.feed(line):
                        yield item
            except LineTooLongError:
                raise _protocol(self.name, "a line of the stream is too long", "") from None
        yield assembler.finish()
