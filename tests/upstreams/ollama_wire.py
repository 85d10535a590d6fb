"""Canned traffic of Ollama's native ``/api/chat``, shaped as the server sends it.

Bodies follow ollama's ``docs/api.md`` and ``api/types.go`` (``ChatResponse``, ``Message``,
``ToolCall``, ``Metrics``); /work/shared/docs/providers.md section 5 summarises them. Durations are in
nanoseconds; tool-call arguments are objects; a stream is NDJSON ending with a ``done: true`` line.
"""

from __future__ import annotations

from typing import Any

MODEL = "llama3.2"
REPORTED = "llama3.2:latest"
CREATED = "2026-11-28T12:00:00.000000Z"

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}},
    "required": ["city", "temp_c"],
}

METRICS: dict[str, Any] = {
    "total_duration": 4883583458,
    "load_duration": 1334875,
    "prompt_eval_count": 26,
    "prompt_eval_duration": 342546000,
    "eval_count": 282,
    "eval_duration": 4535599000,
}


def final(done_reason: str = "stop", *, content: str = "", **metrics: Any) -> dict[str, Any]:
    return {
        "model": REPORTED,
        "created_at": CREATED,
        "message": {"role": "assistant", "content": content},
        "done_reason": done_reason,
        "done": True,
        **{**METRICS, **metrics},
    }


def chat(content: str = "Oslo is 4 °C and cloudy.", done_reason: str = "stop") -> dict[str, Any]:
    """A ``stream: false`` answer."""
    return final(done_reason, content=content)


def tool_chat(*, with_ids: bool = False) -> dict[str, Any]:
    """The model calls a tool: ``content`` is empty, ``done_reason`` stays ``stop``, arguments are objects."""
    calls: list[dict[str, Any]] = [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}},
        {"function": {"index": 1, "name": "get_weather", "arguments": {"city": "Bergen"}}},
    ]
    if with_ids:
        for i, call in enumerate(calls):
            call["id"] = f"call_ollama{i}"
    body = final("stop", prompt_eval_count=180, eval_count=38)
    body["message"]["tool_calls"] = calls
    return body


def line(content: str = "", **message: Any) -> dict[str, Any]:
    return {
        "model": REPORTED,
        "created_at": CREATED,
        "message": {"role": "assistant", "content": content, **message},
        "done": False,
    }


def text_stream(parts: tuple[str, ...] = ("Oslo", " is 4 °C", " and cloudy.")) -> list[dict[str, Any]]:
    return [*(line(p) for p in parts), final("stop", prompt_eval_count=26, eval_count=9)]


def tool_stream() -> list[dict[str, Any]]:
    """Ollama streams each tool call whole, in its own line (ollama.com/blog/streaming-tool)."""
    return [
        line("", thinking="The user wants the weather."),
        line("", tool_calls=[{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Oslo"}}}]),
        line("", tool_calls=[{"function": {"index": 1, "name": "get_weather", "arguments": {"city": "Bergen"}}}]),
        final("stop", prompt_eval_count=180, eval_count=38),
    ]


def midstream_error() -> list[dict[str, Any]]:
    """The runner failed after the 200 was sent: the status stays 200, the error is a line."""
    return [line("Oslo"), line(" is"), {"error": "an error was encountered while running the model: unexpected EOF"}]


#: (case id, status, body, expected data.type, retryable)
ERROR_CASES: list[tuple[str, int, dict[str, Any] | str, str, bool]] = [
    ("400-bad-option", 400, {"error": "invalid options: num_predict must be an integer"}, "bad_request", False),
    ("401-cloud-key", 401, {"error": "unauthorized"}, "auth", False),
    ("404-model", 404, {"error": 'model "llama9" not found, try pulling it first'}, "bad_request", False),
    ("429-cloud", 429, {"error": "too many requests"}, "rate_limited", True),
    (
        "500-runner",
        500,
        {"error": "model requires more system memory (12.4 GiB) than is available (7.1 GiB)"},
        "server_error",
        True,
    ),
    ("502-cloud-unreachable", 502, {"error": "remote model is unreachable"}, "server_error", True),
    ("502-proxy-text", 502, "Bad Gateway\n", "server_error", True),
    (
        "503-busy",
        503,
        {"error": "server busy, please try again.  maximum pending requests exceeded"},
        "overloaded",
        True,
    ),
]
