"""Gemini (Generative Language API) wire bodies, as the real API sends them, for the loopback upstream.

Shapes follow the API reference and python-genai's types (../shared/docs/providers.md section 4): a
``GenerateContentResponse``, the data-only SSE stream of ``streamGenerateContent?alt=sse`` (one full
response object per event, no sentinel), and the ``google.rpc.Status`` error envelope with its
``details`` (``ErrorInfo``, ``RetryInfo``, ``QuotaFailure``).
"""

from __future__ import annotations

import json
from typing import Any

from tests.upstreams._server import Reply

MODEL_VERSION = "gemini-3.8-flash"
SIGNATURE = "CiQBcsjafPqA4mJ2r3c2/Tm2xeD6VQ8cAq9n5Vq1Wm1I0R0gN1s="


def usage(
    prompt: int = 40,
    candidates: int = 8,
    *,
    thoughts: int | None = None,
    tool_use_prompt: int | None = None,
    cached: int | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": candidates}
    total = prompt + candidates
    if thoughts is not None:
        out["thoughtsTokenCount"] = thoughts
        total += thoughts
    if tool_use_prompt is not None:
        out["toolUsePromptTokenCount"] = tool_use_prompt
        total += tool_use_prompt
    if cached is not None:
        out["cachedContentTokenCount"] = cached
    out["totalTokenCount"] = total
    out["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return out


def text(value: str, *, thought: bool = False) -> dict[str, Any]:
    return {"text": value, "thought": True} if thought else {"text": value}


def function_call(
    name: str, args: dict[str, Any], *, id_: str | None = None, signature: str | None = None
) -> dict[str, Any]:
    call: dict[str, Any] = {"name": name, "args": args}
    if id_ is not None:
        call["id"] = id_
    part: dict[str, Any] = {"functionCall": call}
    if signature is not None:
        part["thoughtSignature"] = signature
    return part


def response(
    parts: list[dict[str, Any]] | None,
    *,
    finish_reason: str | None = "STOP",
    usage_: dict[str, Any] | None = None,
    model_version: str | None = MODEL_VERSION,
    response_id: str = "mPfvaMXkI4W-1e8Pq8Hd0Qg",
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"index": 0}
    if parts is not None:
        candidate["content"] = {"role": "model", "parts": parts}
    if finish_reason is not None:
        candidate["finishReason"] = finish_reason
    out: dict[str, Any] = {"candidates": [candidate]}
    if usage_ is not None:
        out["usageMetadata"] = usage_
    if model_version is not None:
        out["modelVersion"] = model_version
    out["responseId"] = response_id
    return out


def blocked(reason: str = "PROHIBITED_CONTENT") -> dict[str, Any]:
    """A prompt refused before generation: no candidates, only ``promptFeedback``."""
    return {
        "promptFeedback": {"blockReason": reason},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": MODEL_VERSION,
        "responseId": "blk",
    }


def sse(chunks: list[dict[str, Any]]) -> list[str]:
    """``alt=sse`` framing: data-only events, one response object each, no ``[DONE]``."""
    return [f"data: {json.dumps(c)}" for c in chunks]


def text_stream(pieces: list[str]) -> list[str]:
    """A text answer streamed in pieces; the last chunk carries finishReason and the usage."""
    chunks = [response([text(p)], finish_reason=None, usage_=usage(40, i + 1)) for i, p in enumerate(pieces[:-1])]
    chunks.append(response([text(pieces[-1])], finish_reason="STOP", usage_=usage(40, 12, thoughts=30, cached=16)))
    return sse(chunks)


def error_body(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def error_reply(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> Reply:
    # Google's front end sends these with its usual headers and no rate-limit headers.
    return Reply.json(
        error_body(code, status, message, details),
        status=code,
        headers={"vary": "Origin, X-Origin, Referer", "server": "scaffolding on HTTPServer2", "x-xss-protection": "0"},
    )


def error_info(reason: str) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": reason,
        "domain": "googleapis.com",
        "metadata": {"service": "generativelanguage.googleapis.com"},
    }


def localized(message: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message}


def retry_info(delay: str) -> dict[str, Any]:
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}


def quota_failure(
    quota_id: str, metric: str = "generativelanguage.googleapis.com/generate_content_free_tier_requests"
) -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [
            {
                "quotaMetric": metric,
                "quotaId": quota_id,
                "quotaDimensions": {"location": "global", "model": "gemini-3.8-flash"},
                "quotaValue": "250",
            }
        ],
    }


def help_link() -> dict[str, Any]:
    return {
        "@type": "type.googleapis.com/google.rpc.Help",
        "links": [
            {
                "description": "Learn more about Gemini API quotas",
                "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
            }
        ],
    }
