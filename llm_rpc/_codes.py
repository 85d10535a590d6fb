"""JSON-RPC error codes: the single table shared by the server's method layer and the client.

One code per ``data.type``, all domain codes in -32000..-32099 (contracts/protocol.md lists them;
a test keeps that table and this one equal).
"""

from __future__ import annotations

from typing import Final

PARSE_ERROR: Final = -32700
"""Standard JSON-RPC: the frame is not valid UTF-8 JSON."""
INVALID_REQUEST: Final = -32600
"""Standard JSON-RPC: not a valid request object (also: a message over the size limit)."""
METHOD_NOT_FOUND: Final = -32601
"""Standard JSON-RPC: no such method."""
INVALID_PARAMS: Final = -32602
"""Standard JSON-RPC: params failed validation; ``data.path`` and ``data.expected`` say where and what."""
INTERNAL_ERROR: Final = -32603
"""Standard JSON-RPC: a bug; ``data.correlation_id`` finds the log line. No exception text is sent."""
REQUEST_CANCELLED: Final = -32800
"""LSP convention: the request was cancelled by the client (or its connection went away)."""
SERVER_BUSY: Final = -32008
"""The connection's in-flight cap was reached; retry later."""

#: ``data.type`` → JSON-RPC code for every domain error.
DOMAIN_CODES: Final[dict[str, int]] = {
    "backend_error": -32000,
    "budget_exceeded": -32001,
    "unauthorized": -32002,
    "no_route": -32003,
    "timeout": -32004,
    "rate_limited": -32005,
    "overloaded": -32006,
    "server_error": -32007,
    "server_busy": SERVER_BUSY,
    "connection": -32009,
    "protocol": -32010,
    "auth": -32011,
    "billing": -32012,
    "quota_exceeded": -32013,
    "bad_request": -32014,
    "content_filter": -32015,
    "config_error": -32016,
    "provider_error": -32017,
    "cancelled": REQUEST_CANCELLED,
}

#: JSON-RPC code → ``data.type`` (the standard codes have types too, for uniform handling).
TYPES_BY_CODE: Final[dict[int, str]] = {
    PARSE_ERROR: "parse_error",
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
    INTERNAL_ERROR: "internal_error",
    **{code: type_ for type_, code in DOMAIN_CODES.items()},
}
