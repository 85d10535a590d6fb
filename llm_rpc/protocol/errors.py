"""The protocol layer's own error: a JSON-RPC error object ready for the wire."""

from __future__ import annotations

from typing import Any

from llm_rpc import _codes

__all__ = [
    "PROTOCOL_ERRORS",
    "InternalError",
    "InvalidParamsError",
    "InvalidRequestError",
    "MethodNotFoundError",
    "ParseError",
    "RequestCancelledError",
    "RpcError",
    "ServerBusyError",
    "UnauthorizedError",
]


class RpcError(Exception):
    """A JSON-RPC error: ``code``, ``message`` and ``data`` (``data.type`` always set)."""

    code_value: int = _codes.INTERNAL_ERROR

    def __init__(self, code: int, message: str, data: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data: dict[str, Any] = data if data is not None else {}
        self.data.setdefault("type", _codes.TYPES_BY_CODE.get(code, "error"))

    def __repr__(self) -> str:
        return f"RpcError({self.code}, {self.message!r}, {self.data!r})"


class ParseError(RpcError):
    code_value = _codes.PARSE_ERROR


class InvalidRequestError(RpcError):
    code_value = _codes.INVALID_REQUEST


class MethodNotFoundError(RpcError):
    code_value = _codes.METHOD_NOT_FOUND


class InvalidParamsError(RpcError):
    code_value = _codes.INVALID_PARAMS


class InternalError(RpcError):
    code_value = _codes.INTERNAL_ERROR


class ServerBusyError(RpcError):
    code_value = _codes.SERVER_BUSY


class RequestCancelledError(RpcError):
    code_value = _codes.REQUEST_CANCELLED


class UnauthorizedError(RpcError):
    code_value = _codes.DOMAIN_CODES["unauthorized"]


PROTOCOL_ERRORS: dict[int, type[RpcError]] = {
    cls.code_value: cls
    for cls in (
        ParseError,
        InvalidRequestError,
        MethodNotFoundError,
        InvalidParamsError,
        InternalError,
        ServerBusyError,
        RequestCancelledError,
        UnauthorizedError,
    )
}
