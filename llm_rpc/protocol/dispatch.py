"""Dispatch: the JSON-RPC 2.0 envelope, batches, per-request cancel scopes, and THE
exception-to-wire boundary.

A ``Session`` is one connection's JSON-RPC state. Its ``handle_frame`` never awaits a handler: it
decodes the envelope, then either runs an ``inline`` method on the spot or starts one task per
request in the connection's task group, so a slow ``execute`` never delays a ``health``. Every reply
is handed whole to ``send`` (the transport's framed, ordered outbox) as soon as it is ready.

Only this module builds error objects. Handlers raise; ``RpcError`` passes through, other
exceptions go through the ``error_mapper`` the methods layer supplies, and anything left becomes
-32603 with a correlation id (the exception text goes to the log, scrubbed, never to the client).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc
import msgspec

from llm_rpc import _codes
from llm_rpc.protocol.errors import RpcError
from llm_rpc.protocol.framing import FrameError
from llm_rpc.protocol.registry import NOT_INLINE, Method, MethodTable, RequestContext

__all__ = ["Dispatcher", "Session"]

log = logging.getLogger("llm_rpc.protocol")

_ABSENT = msgspec.Raw()
_NULL_ID = b"null"
_ID_START = frozenset(b'"-0123456789n')
_perf = time.perf_counter


class _Envelope(msgspec.Struct):
    jsonrpc: Any = None
    method: Any = None
    params: msgspec.Raw = _ABSENT
    id: msgspec.Raw = _ABSENT


_envelope_decoder = msgspec.json.Decoder(_Envelope)
_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()

ErrorMapper = Callable[[Exception], RpcError | None]

_VALIDATION_RE = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_EXPECTED_RE = re.compile(r"^Expected `(?P<expected>[^`]+)`, got `(?P<got>[^`]+)`")
_UNKNOWN_RE = re.compile(r"^Object contains unknown field `(?P<field>[^`]+)`")
_MISSING_RE = re.compile(r"^Object missing required field `(?P<field>[^`]+)`")


def validation_error_data(exc: msgspec.ValidationError, root: str = "params") -> dict[str, Any]:
    """-32602 ``data`` from a msgspec validation message: path, expected type, offending field."""
    text = str(exc)
    match = _VALIDATION_RE.match(text)
    reason = match.group("reason") if match else text
    path = root + ((match.group("path") or "") if match else "")
    data: dict[str, Any] = {"type": "invalid_params", "path": path, "reason": reason}
    if m := _EXPECTED_RE.match(reason):
        data["expected"] = m.group("expected")
        data["got"] = m.group("got")
    elif m := _UNKNOWN_RE.match(reason):
        data["unknown_field"] = m.group("field")
    elif m := _MISSING_RE.match(reason):
        data["missing_field"] = m.group("field")
        data["path"] = f"{path}.{m.group('field')}"
    return data


def _error_body(id_raw: bytes, code: int, message: str, data: dict[str, Any] | None) -> bytes:
    err: dict[str, Any] = {"code": code, "message": message}
    if data:
        err["data"] = data
    return b'{"jsonrpc":"2.0","id":' + id_raw + b',"error":' + _encoder.encode(err) + b"}"


def _rpc_error_body(id_raw: bytes, err: RpcError) -> bytes:
    return _error_body(id_raw, err.code, err.message, err.data)


class Dispatcher:
    """Shared by every connection of a server: the method table, limits and in-flight count."""

    def __init__(
        self,
        table: MethodTable,
        *,
        error_mapper: ErrorMapper | None = None,
        max_in_flight: int = 1024,
        auth_required: bool = False,
    ) -> None:
        self.table = table
        self.error_mapper = error_mapper
        self.max_in_flight = max_in_flight
        self.auth_required = auth_required
        self.in_flight = 0
        self.requests_total = 0

    def session(
        self,
        task_group: anyio.abc.TaskGroup,
        send: Callable[[bytes], None],
        *,
        peer: str = "",
        require_auth: bool | None = None,
    ) -> Session:
        return Session(
            self,
            task_group,
            send,
            peer=peer,
            require_auth=self.auth_required if require_auth is None else require_auth,
        )


class Session:
    """One connection's JSON-RPC state: its in-flight requests by id and its reply sink."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        task_group: anyio.abc.TaskGroup,
        send: Callable[[bytes], None],
        *,
        peer: str,
        require_auth: bool,
    ) -> None:
        self.dispatcher = dispatcher
        self.peer = peer
        self.authenticated = not require_auth
        self.closed = False
        self._tg = task_group
        self._send = send
        self._table = dispatcher.table
        self._active = 0
        self._idle = anyio.Event()
        self._idle.set()
        self._in_flight: dict[Any, anyio.CancelScope] = {}
        self._cancel_reasons: dict[Any, str] = {}

    # -- inbound ---------------------------------------------------------------------------------

    def handle_frame_error(self, err: FrameError) -> None:
        self._send(_error_body(_NULL_ID, err.code, err.message, err.data))

    def handle_frame(self, frame: bytes, arrived: float | None = None) -> None:
        """Process one framed message: answer at once, or start the task that will.

        ``arrived``: ``time.perf_counter()`` when the transport read the message's bytes (default:
        now); handlers see it as ``RequestContext.arrived``, the start of a result's ``overhead_us``."""
        if arrived is None:
            arrived = _perf()
        if frame[:1] == b"[":
            self._handle_batch(frame, arrived)
            return
        reply = self._handle_single(frame, None, 0, arrived)
        if reply is not None:
            self._send(reply)

    def _handle_single(self, frame: bytes, batch: _Batch | None, index: int, arrived: float) -> bytes | None:
        """Returns an immediate reply, or None (a notification, or a task now owns the reply)."""
        try:
            env = _envelope_decoder.decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return self._classify_undecodable(frame)
        id_raw = env.id
        is_notification = len(id_raw) == 0
        id_bytes = _NULL_ID if is_notification else bytes(id_raw)
        if not is_notification and id_bytes[0] == 0x22:  # a string id: its bytes must be valid UTF-8 JSON
            try:
                _any_decoder.decode(id_bytes)
            except (msgspec.DecodeError, UnicodeDecodeError):
                return _error_body(
                    _NULL_ID,
                    _codes.PARSE_ERROR,
                    "Parse error",
                    {"type": "parse_error", "reason": "invalid JSON or UTF-8"},
                )
        if not is_notification and id_bytes[0] not in _ID_START:
            return _error_body(
                _NULL_ID,
                _codes.INVALID_REQUEST,
                "Invalid Request",
                {"type": "invalid_request", "reason": "id must be a string, a number or null"},
            )
        if env.jsonrpc != "2.0":
            return _error_body(
                id_bytes,
                _codes.INVALID_REQUEST,
                "Invalid Request",
                {"type": "invalid_request", "reason": '`jsonrpc` must be "2.0"'},
            )
        name = env.method
        if not isinstance(name, str):
            return _error_body(
                id_bytes,
                _codes.INVALID_REQUEST,
                "Invalid Request",
                {"type": "invalid_request", "reason": "`method` must be a string"},
            )
        params_raw = env.params
        if len(params_raw) and bytes(params_raw)[:1] not in (b"{", b"["):
            return _error_body(
                id_bytes,
                _codes.INVALID_REQUEST,
                "Invalid Request",
                {"type": "invalid_request", "reason": "`params` must be an object or an array"},
            )
        method = self._table.get(name)
        if method is None:
            if is_notification:
                return None
            return _error_body(
                id_bytes,
                _codes.METHOD_NOT_FOUND,
                "Method not found",
                {"type": "method_not_found", "method": name},
            )
        if not self.authenticated and name != "auth":
            if is_notification:
                return None
            return _error_body(
                id_bytes,
                _codes.DOMAIN_CODES["unauthorized"],
                "Unauthorized: call `auth` first",
                {"type": "unauthorized"},
            )
        try:
            params = self._decode_params(method, params_raw)
        except RpcError as err:
            if err.code == _codes.PARSE_ERROR:
                return _rpc_error_body(_NULL_ID, err)
            return None if is_notification else _rpc_error_body(id_bytes, err)

        dispatcher = self.dispatcher
        if not is_notification and self._active >= dispatcher.max_in_flight:
            return _error_body(
                id_bytes,
                _codes.SERVER_BUSY,
                "Server busy: too many requests in flight on this connection",
                {"type": "server_busy", "limit": "max_in_flight", "max_in_flight": dispatcher.max_in_flight},
            )
        dispatcher.requests_total += 1
        if method.inline:
            ctx = RequestContext(self, None if is_notification else id_bytes, arrived)
            reply = self._call_inline(method, params, ctx, id_bytes)
            return None if is_notification else reply
        if method.try_inline is not None:
            ctx = RequestContext(self, None if is_notification else id_bytes, arrived)
            try:
                result = method.try_inline(params, ctx)
            except Exception as exc:
                return None if is_notification else _rpc_error_body(id_bytes, self._to_rpc_error(exc, method.name))
            if result is not NOT_INLINE:
                if is_notification:
                    return None
                return self._encode_result(id_bytes, result, method.name)
        self._started()
        if batch is not None and not is_notification:
            batch.pending += 1
        self._tg.start_soon(self._run, method, params, id_bytes, is_notification, batch, index, arrived)
        return None

    def _decode_params(self, method: Method, raw: msgspec.Raw) -> Any:
        decoder = method.decoder
        if decoder is None:
            return None
        data = bytes(raw) if len(raw) else b"{}" if method.by_name else b"[]"
        try:
            if method.by_name and data[:1] == b"[":
                return self._decode_positional(method, data)
            return decoder.decode(data)
        except msgspec.ValidationError as exc:
            raise RpcError(_codes.INVALID_PARAMS, "Invalid params", validation_error_data(exc)) from None
        except (msgspec.DecodeError, UnicodeDecodeError):
            # The envelope decoder skips over params without checking their UTF-8 or every token.
            raise RpcError(
                _codes.PARSE_ERROR, "Parse error", {"type": "parse_error", "reason": "invalid JSON or UTF-8"}
            ) from None

    @staticmethod
    def _decode_positional(method: Method, data: bytes) -> Any:
        assert method.params_type is not None
        values = _any_decoder.decode(data)
        fields = method.params_type.__struct_fields__
        if len(values) > len(fields):
            raise RpcError(
                _codes.INVALID_PARAMS,
                "Invalid params",
                {
                    "type": "invalid_params",
                    "path": "params",
                    "reason": f"at most {len(fields)} positional params",
                },
            )
        return msgspec.convert(dict(zip(fields, values, strict=False)), method.params_type)

    def _classify_undecodable(self, frame: bytes) -> bytes:
        try:
            value = _any_decoder.decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError):
            return _error_body(
                _NULL_ID,
                _codes.PARSE_ERROR,
                "Parse error",
                {"type": "parse_error", "reason": "invalid JSON or UTF-8"},
            )
        id_bytes = _NULL_ID
        if (
            isinstance(value, dict)
            and isinstance(value.get("id"), str | int | float)
            and not isinstance(value.get("id"), bool)
        ):
            id_bytes = _encoder.encode(value["id"])
        return _error_body(
            id_bytes,
            _codes.INVALID_REQUEST,
            "Invalid Request",
            {"type": "invalid_request", "reason": "not a request object"},
        )

    def _handle_batch(self, frame: bytes, arrived: float) -> None:
        try:
            items = _batch_decoder.decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError):
            self._send(
                _error_body(
                    _NULL_ID,
                    _codes.PARSE_ERROR,
                    "Parse error",
                    {"type": "parse_error", "reason": "invalid JSON or UTF-8"},
                )
            )
            return
        if not items:
            self._send(
                _error_body(
                    _NULL_ID,
                    _codes.INVALID_REQUEST,
                    "Invalid Request",
                    {"type": "invalid_request", "reason": "empty batch"},
                )
            )
            return
        batch = _Batch(self, len(items))
        for index, item in enumerate(items):
            reply = self._handle_single(bytes(item), batch, index, arrived)
            if reply is not None:
                batch.replies[index] = reply
        batch.sealed = True
        batch.maybe_finish()

    # -- running ---------------------------------------------------------------------------------

    def _started(self) -> None:
        if self._active == 0:
            self._idle = anyio.Event()
        self._active += 1
        self.dispatcher.in_flight += 1

    def _finished(self) -> None:
        self._active -= 1
        self.dispatcher.in_flight -= 1
        if self._active == 0:
            self._idle.set()

    def _call_inline(self, method: Method, params: Any, ctx: RequestContext, id_bytes: bytes) -> bytes:
        try:
            result = method.handler(params, ctx)
        except Exception as exc:
            return _rpc_error_body(id_bytes, self._to_rpc_error(exc, method.name))
        return self._encode_result(id_bytes, result, method.name)

    def _encode_result(self, id_bytes: bytes, result: Any, method: str) -> bytes:
        try:
            return b'{"jsonrpc":"2.0","id":' + id_bytes + b',"result":' + _encoder.encode(result) + b"}"
        except Exception as exc:
            return _rpc_error_body(id_bytes, self._to_rpc_error(exc, method))

    async def _run(
        self,
        method: Method,
        params: Any,
        id_bytes: bytes,
        is_notification: bool,
        batch: _Batch | None,
        index: int,
        arrived: float,
    ) -> None:
        key: Any = None
        reply: bytes
        try:
            with anyio.CancelScope() as scope:
                if not is_notification:
                    key = _id_key(id_bytes)
                    self._in_flight[key] = scope
                ctx = RequestContext(self, None if is_notification else id_bytes, arrived)
                try:
                    result = await method.handler(params, ctx)
                    reply = self._encode_result(id_bytes, result, method.name)
                except Exception as exc:
                    reply = _rpc_error_body(id_bytes, self._to_rpc_error(exc, method.name))
            if scope.cancelled_caught:
                reason = self._cancel_reasons.pop(key, "the client cancelled the request")
                reply = _error_body(
                    id_bytes,
                    _codes.REQUEST_CANCELLED,
                    "Request cancelled",
                    {"type": "cancelled", "reason": reason},
                )
        finally:
            if key is not None and self._in_flight.get(key) is scope:
                del self._in_flight[key]
            self._finished()
        if is_notification:
            return
        if batch is not None:
            batch.replies[index] = reply
            batch.pending -= 1
            batch.maybe_finish()
        else:
            self._send(reply)

    def _to_rpc_error(self, exc: Exception, method: str) -> RpcError:
        if isinstance(exc, RpcError):
            return exc
        mapper = self.dispatcher.error_mapper
        if mapper is not None:
            mapped = mapper(exc)
            if mapped is not None:
                return mapped
        import uuid  # only on this rare path: keeps start-up lean

        correlation_id = uuid.uuid4().hex[:16]
        log.error(
            "internal error in method",
            exc_info=exc,
            extra={"method": method, "correlation_id": correlation_id},
        )
        return RpcError(
            _codes.INTERNAL_ERROR,
            "Internal error",
            {"type": "internal_error", "correlation_id": correlation_id},
        )

    # -- control ---------------------------------------------------------------------------------

    def send_notification(self, method: str, params: Any) -> None:
        if not self.closed:
            self._send(
                b'{"jsonrpc":"2.0","method":' + _encoder.encode(method) + b',"params":' + _encoder.encode(params) + b"}"
            )

    def cancel(self, request_id: Any) -> bool:
        """Cancel the in-flight request with this id; False when there is none (not an error)."""
        scope = self._in_flight.get(_normalize_id(request_id))
        if scope is None:
            return False
        scope.cancel()
        return True

    def cancel_all(self, reason: str) -> int:
        """Cancel every in-flight request; each answers -32800 with ``reason``. Returns how many."""
        for key, scope in list(self._in_flight.items()):
            self._cancel_reasons[key] = reason
            scope.cancel()
        return len(self._in_flight)

    @property
    def active(self) -> int:
        return self._active

    async def wait_idle(self) -> None:
        await self._idle.wait()


class _Batch:
    """Collects the replies of one batch array in input order; sent once every element is done."""

    __slots__ = ("pending", "replies", "sealed", "session")

    def __init__(self, session: Session, size: int) -> None:
        self.session = session
        self.replies: list[bytes | None] = [None] * size
        self.pending = 0
        self.sealed = False

    def maybe_finish(self) -> None:
        if not self.sealed or self.pending:
            return
        parts = [r for r in self.replies if r is not None]
        if parts:
            self.session._send(b"[" + b",".join(parts) + b"]")


def _normalize_id(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _id_key(id_bytes: bytes) -> Any:
    return _normalize_id(_any_decoder.decode(id_bytes))
