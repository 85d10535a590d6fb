"""Anthropic Messages API wire bodies, as the real API sends them, for the loopback upstream.

Shapes follow the API reference and the official SDK's types (../shared/docs/providers.md section 3):
a ``message`` object, the named SSE events of a stream, and the ``{"type": "error", ...}`` envelope
with the headers that come with it (``request-id``, ``retry-after``, ``anthropic-ratelimit-*``,
``x-should-retry``).
"""

from __future__ import annotations

import json
from typing import Any

from tests.upstreams._server import Reply

MODEL = "claude-sonnet-4-5-20250929"
REQUEST_ID = "req_011CSHoEeqs5C35K2UUqR7Fy"


def usage(
    input_tokens: int = 40,
    output_tokens: int = 31,
    *,
    cache_read: int = 0,
    cache_write: int = 0,
    thinking: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": cache_write,
        "cache_read_input_tokens": cache_read,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": 0},
        "output_tokens": output_tokens,
        "server_tool_use": None,
        "service_tier": "standard",
    }
    if thinking is not None:
        out["output_tokens_details"] = {"thinking_tokens": thinking}
    return out


def message(
    content: list[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    model: str = MODEL,
    usage_: dict[str, Any] | None = None,
    id_: str = "msg_01XFDUDYJgAACzvnptvVoYEL",
) -> dict[str, Any]:
    return {
        "id": id_,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_ or usage(),
    }


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value, "citations": None}


def thinking(value: str) -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"}


def tool_use(id_: str, name: str, input_: dict[str, Any]) -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def event(name: str, data: dict[str, Any]) -> str:
    """One SSE event as the API frames it: the name, then the JSON whose ``type`` repeats it."""
    return f"event: {name}\ndata: {json.dumps(data)}"


def message_start(*, input_tokens: int = 40, cache_read: int = 0, cache_write: int = 0) -> str:
    start = message([], stop_reason="", usage_=usage(input_tokens, 1, cache_read=cache_read, cache_write=cache_write))
    start["stop_reason"] = None
    return event("message_start", {"type": "message_start", "message": start})


def block_start(index: int, block: dict[str, Any]) -> str:
    return event("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def text_delta(index: int, value: str) -> str:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": value}},
    )


def json_delta(index: int, partial: str) -> str:
    return event(
        "content_block_delta",
        {"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta", "partial_json": partial}},
    )


def block_stop(index: int) -> str:
    return event("content_block_stop", {"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str, output_tokens: int, *, thinking: int | None = None) -> str:
    delta_usage: dict[str, Any] = {"output_tokens": output_tokens}
    if thinking is not None:
        delta_usage["output_tokens_details"] = {"thinking_tokens": thinking}
    return event(
        "message_delta",
        {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": delta_usage},
    )


def message_stop() -> str:
    return event("message_stop", {"type": "message_stop"})


def ping() -> str:
    return event("ping", {"type": "ping"})


def stream_error(error_type: str = "overloaded_error", message_: str = "Overloaded") -> str:
    return event("error", {"type": "error", "error": {"type": error_type, "message": message_}})


def text_stream(pieces: list[str], *, input_tokens: int = 40, output_tokens: int = 12) -> list[str]:
    """A whole text answer, streamed: usage split between message_start and the message_delta events."""
    return [
        message_start(input_tokens=input_tokens, cache_read=5),
        block_start(0, {"type": "text", "text": ""}),
        ping(),
        *[text_delta(0, p) for p in pieces],
        block_stop(0),
        # message_delta usage is cumulative: the last one is the total.
        message_delta("end_turn", output_tokens - 2),
        message_delta("end_turn", output_tokens),
        message_stop(),
    ]


def error_body(error_type: str, message_: str, *, details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message_}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error, "request_id": REQUEST_ID}


def error_reply(
    status: int,
    error_type: str,
    message_: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> Reply:
    return Reply.json(
        error_body(error_type, message_, details=details),
        status=status,
        headers={"request-id": REQUEST_ID, "anthropic-organization-id": "org-0", **(headers or {})},
    )


def rate_limit_headers(reset_in: dict[str, str], remaining: dict[str, int]) -> dict[str, str]:
    """``anthropic-ratelimit-<bucket>-{limit,remaining,reset}`` for the buckets given."""
    out: dict[str, str] = {}
    for bucket, reset in reset_in.items():
        out[f"anthropic-ratelimit-{bucket}-limit"] = "1000"
        out[f"anthropic-ratelimit-{bucket}-remaining"] = str(remaining.get(bucket, 1000))
        out[f"anthropic-ratelimit-{bucket}-reset"] = reset
    return out
