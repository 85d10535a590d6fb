"""Canned OpenAI Chat Completions traffic (and OpenRouter's variations), shaped as the services send it.

Bodies follow the API reference and the official SDK's types (openai-python ``chat_completion.py``,
``chat_completion_chunk.py``, ``completion_usage.py``) and OpenRouter's errors-and-debugging and
streaming pages; /work/shared/docs/providers.md sections 2 and 6 summarise them. Unknown fields
(``system_fingerprint``, ``service_tier``, ``logprobs``, ``obfuscation``, OpenRouter's ``cost``...) are
left in on purpose: a client must ignore them.
"""

from __future__ import annotations

import json
from typing import Any

MODEL = "gpt-4o-mini"
SNAPSHOT = "gpt-4o-mini-2024-07-18"
REQUEST_ID = "req_5b0c6f3e0a7d4d5c9f2e1a7b3c4d5e6f"

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}},
}
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}

#: Response headers OpenAI sends with every answer.
HEADERS: dict[str, str] = {
    "x-request-id": REQUEST_ID,
    "openai-processing-ms": "412",
    "openai-version": "2020-10-01",
    "x-ratelimit-limit-requests": "10000",
    "x-ratelimit-remaining-requests": "9999",
    "x-ratelimit-reset-requests": "6ms",
    "x-ratelimit-limit-tokens": "200000",
    "x-ratelimit-remaining-tokens": "199950",
    "x-ratelimit-reset-tokens": "15ms",
}


def usage(
    prompt: int = 52, completion: int = 14, *, cached: int = 0, cache_write: int | None = None, reasoning: int = 0
) -> dict[str, Any]:
    details: dict[str, Any] = {"cached_tokens": cached, "audio_tokens": 0}
    if cache_write is not None:
        details["cache_write_tokens"] = cache_write
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
        "completion_tokens_details": {
            "reasoning_tokens": reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def completion(
    content: str | None = "Oslo is 4 °C and cloudy.",
    *,
    model: str = SNAPSHOT,
    finish_reason: str = "stop",
    tool_calls: list[dict[str, Any]] | None = None,
    refusal: str | None = None,
    use: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal, "annotations": []}
    if tool_calls is not None:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}],
        "usage": use if use is not None else usage(),
        "service_tier": "default",
        "system_fingerprint": "fp_06737a9306",
    }


def tool_call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_completion() -> dict[str, Any]:
    """The model calls two tools at once (``content`` is null, as OpenAI sends it)."""
    return completion(
        None,
        finish_reason="tool_calls",
        tool_calls=[
            tool_call("call_Oslo1", "get_weather", '{"city":"Oslo"}'),
            tool_call("call_Time2", "get_time", '{"tz":"Europe/Oslo"}'),
        ],
        use=usage(82, 41),
    )


# -- streams ------------------------------------------------------------------------------------------------


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    use: dict[str, Any] | None = None,
    model: str = SNAPSHOT,
    choices: bool = True,
) -> str:
    """One ``data:`` event of a ``chat.completion.chunk``."""
    body: dict[str, Any] = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": model,
        "system_fingerprint": "fp_06737a9306",
        "choices": [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish_reason}]
        if choices
        else [],
        "usage": use,
        "obfuscation": "x7Qp",
    }
    return "data: " + json.dumps(body)


DONE = "data: [DONE]"


def text_stream(parts: tuple[str, ...] = ("Oslo is ", "4 °C", " and cloudy."), *, with_usage: bool = True) -> list[str]:
    """A text answer as OpenAI streams it with ``stream_options.include_usage``."""
    events = [chunk({"role": "assistant", "content": "", "refusal": None})]
    events += [chunk({"content": p}) for p in parts]
    events.append(chunk({}, finish_reason="stop"))
    if with_usage:
        events.append(chunk(choices=False, use=usage(52, 9, cached=32, reasoning=0)))
    events.append(DONE)
    return events


def tool_stream() -> list[str]:
    """Two tool calls streamed in fragments, interleaved by ``index``, then usage."""
    return [
        chunk({"role": "assistant", "content": None, "refusal": None}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_Oslo1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 1,
                        "id": "call_Time2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"tz":"Europe/Oslo"}'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty":"Oslo"}'}}]}),
        chunk({}, finish_reason="tool_calls"),
        chunk(choices=False, use=usage(82, 41)),
        DONE,
    ]


def openrouter_stream() -> list[str]:
    """OpenRouter: keep-alive comments, ``vendor/model`` ids, usage (with cost) always in the last chunk."""
    model = "openai/gpt-4o-mini"
    use = {**usage(40, 7, cached=0, cache_write=0), "cost": 0.0000102, "is_byok": False}
    return [
        ": OPENROUTER PROCESSING",
        ": OPENROUTER PROCESSING",
        chunk({"role": "assistant", "content": "Hi"}, model=model),
        ": OPENROUTER PROCESSING",
        chunk({"content": " there."}, model=model),
        chunk({}, finish_reason="stop", model=model),
        chunk(choices=False, use=use, model=model),
        DONE,
    ]


def openrouter_midstream_error() -> list[str]:
    """Generation started, then the upstream failed: status stays 200, the error comes as a chunk."""
    model = "openai/gpt-4o-mini"
    failure = {
        "id": "gen-1741570283-abc",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": model,
        "provider": "OpenAI",
        "error": {"code": 502, "message": "Provider returned error: upstream disconnected"},
        "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
    }
    return [chunk({"role": "assistant", "content": "Par"}, model=model), "data: " + json.dumps(failure)]


def openai_midstream_error() -> list[str]:
    """OpenAI's SDK raises on any chunk with an ``error`` key; this is what such a chunk holds."""
    failure = {
        "error": {
            "message": "The server had an error while processing your request. Sorry about that!",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    return [chunk({"role": "assistant", "content": "Par"}), "data: " + json.dumps(failure)]


# -- errors -------------------------------------------------------------------------------------------------


def error(message: str, type_: str | None, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error body."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def openrouter_error(code: int, message: str, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenRouter's error body: ``code`` is the HTTP status as an integer."""
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if metadata is not None:
        body["error"]["metadata"] = metadata
    return body


CLOUDFLARE_502 = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    "<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
CLOUDFLARE_504 = (
    "<html>\r\n<head><title>504 Gateway Time-out</title></head>\r\n<body>\r\n<center><h1>504 Gateway Time-out</h1>"
    "</center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)

RATE_LIMIT_MESSAGE = (
    "Rate limit reached for gpt-4o-mini in organization org-abc123 on requests per min (RPM): Limit 3, Used 3, "
    "Requested 1. Please try again in 20s. Visit https://platform.openai.com/account/rate-limits to learn more."
)
QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more information on this "
    "error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors."
)


def bad_key_message(shown: str) -> str:
    """OpenAI's 401 text; ``shown`` is what it quotes of the key (masked, by OpenAI itself)."""
    return f"Incorrect API key provided: {shown}. You can find your API key at https://platform.openai.com/account/api-keys."


#: (case id, kind, status, body, extra headers, expected data.type, retryable)
ERROR_CASES: list[tuple[str, str, int, dict[str, Any] | str, dict[str, str], str, bool]] = [
    (
        "400-invalid-request",
        "openai",
        400,
        error(
            "Invalid value for 'temperature': expected a number between 0 and 2.",
            "invalid_request_error",
            "invalid_value",
            "temperature",
        ),
        {},
        "bad_request",
        False,
    ),
    (
        "400-context-length",
        "openai",
        400,
        error(
            "This model's maximum context length is 128000 tokens. However, your messages resulted in 130412 tokens.",
            "invalid_request_error",
            "context_length_exceeded",
            "messages",
        ),
        {},
        "bad_request",
        False,
    ),
    (
        "401-invalid-key",
        "openai",
        401,
        error(bad_key_message("sk-canar*****************************9e1f"), "invalid_request_error", "invalid_api_key"),
        {},
        "auth",
        False,
    ),
    (
        "402-openrouter-credits",
        "openrouter",
        402,
        openrouter_error(
            402, "This request requires more credits, or fewer max_tokens. You requested up to 4096 tokens."
        ),
        {},
        "billing",
        False,
    ),
    (
        "403-region",
        "openai",
        403,
        error(
            "Country, region, or territory not supported", "request_forbidden", "unsupported_country_region_territory"
        ),
        {},
        "auth",
        False,
    ),
    (
        "403-openrouter-moderation",
        "openrouter",
        403,
        openrouter_error(
            403,
            'openai/gpt-4o-mini requires moderation on OpenAI. Your input was flagged for "harassment".',
            {
                "reasons": ["harassment"],
                "flagged_input": "you are a...",
                "provider_name": "OpenAI",
                "model_slug": "openai/gpt-4o-mini",
            },
        ),
        {},
        "content_filter",
        False,
    ),
    (
        "404-model",
        "openai",
        404,
        error(
            "The model `gpt-9` does not exist or you do not have access to it.",
            "invalid_request_error",
            "model_not_found",
        ),
        {},
        "bad_request",
        False,
    ),
    (
        "408-openrouter-timeout",
        "openrouter",
        408,
        openrouter_error(408, "Request timed out"),
        {},
        "timeout",
        True,
    ),
    (
        "409-conflict",
        "openai",
        409,
        error("The request conflicted with another request in progress; please try again.", "invalid_request_error"),
        {},
        "server_error",
        True,
    ),
    (
        "413-too-large",
        "openai-compatible",
        413,
        {"object": "error", "message": "Request body too large", "type": "BadRequestError", "param": None, "code": 413},
        {},
        "bad_request",
        False,
    ),
    (
        "422-unprocessable",
        "openai-compatible",
        422,
        {"detail": [{"type": "missing", "loc": ["body", "messages"], "msg": "Field required", "input": {}}]},
        {},
        "bad_request",
        False,
    ),
    (
        "429-rate-limit",
        "openai",
        429,
        error(RATE_LIMIT_MESSAGE, "requests", "rate_limit_exceeded"),
        {"retry-after": "20", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "20s"},
        "rate_limited",
        True,
    ),
    (
        "429-insufficient-quota",
        "openai",
        429,
        error(QUOTA_MESSAGE, "insufficient_quota", "insufficient_quota"),
        {},
        "quota_exceeded",
        False,
    ),
    (
        "429-openrouter-upstream",
        "openrouter",
        429,
        openrouter_error(
            429,
            "openai/gpt-4o-mini is temporarily rate-limited upstream. Please retry shortly.",
            {"provider_name": "OpenAI", "raw": "Rate limit reached", "provider_code": 429},
        ),
        {"retry-after": "3"},
        "rate_limited",
        True,
    ),
    (
        "500-server",
        "openai",
        500,
        error("The server had an error while processing your request. Sorry about that!", "server_error"),
        {},
        "server_error",
        True,
    ),
    ("502-cloudflare-html", "openai", 502, CLOUDFLARE_502, {"content-type": "text/html"}, "server_error", True),
    (
        "503-overloaded",
        "openai",
        503,
        error("The engine is currently overloaded, please try again later.", "server_error", "server_is_overloaded"),
        {"retry-after": "2"},
        "overloaded",
        True,
    ),
    (
        "503-openrouter-no-provider",
        "openrouter",
        503,
        openrouter_error(503, "No allowed providers are available for the selected model."),
        {"retry-after": "5"},
        "overloaded",
        True,
    ),
    ("504-cloudflare-html", "openai", 504, CLOUDFLARE_504, {"content-type": "text/html"}, "timeout", True),
]
