"""HTTP/1.1 on httptools over anyio sockets: JSON-RPC in a POST body, llm-connect's routes, and /metrics.

Routes (contracts/http.md is the client's manual):

* ``POST /rpc`` and ``POST /``: the body is one JSON-RPC message or a batch; the reply is the body
  of a 200, or 204 when the body held only notifications. When the client accepts
  ``text/event-stream``, or the request's params say ``"stream": true``, the reply is a stream of
  Server-Sent Events: one per notification the request sends (``execute.delta``), then the reply.
* ``POST /execute`` and ``GET /health``: llm-connect's serve-mode contract, translated to and from
  the ``execute`` method.
* ``GET /metrics``: whatever the server's ``metrics`` callable renders (Prometheus text).

Each HTTP request gets its own ``Session`` (so replies and notifications belong to that exchange),
and the requests of one connection run in the connection's task group, as on TCP. Slow clients are
bounded by three timeouts (idle keep-alive, request head, request body), each connection by the
message size limit, and the listener by a connection cap. Like every transport this knows nothing
of methods beyond the names it translates llm-connect's routes to.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from time import perf_counter as _perf
from typing import Any

import anyio
import anyio.abc
import httptools
import msgspec

from llm_rpc.protocol.dispatch import Dispatcher, Session
from llm_rpc.transports._connection import Lifecycle, Outbox
from llm_rpc.transports.sockets import announce

__all__ = ["HttpSettings", "HttpStats", "serve_http"]

log = logging.getLogger("llm_rpc.transport")

READ_CHUNK = 65536
MAX_HEADER_BYTES = 16 * 1024
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 4 * 1024 * 1024

#: A token check: True when the bearer token is the server's.
TokenCheck = Callable[[str], bool]
#: Renders the metrics page: ``(body, content_type)``.
MetricsRenderer = Callable[[], tuple[bytes, str]]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Limits and hooks of one HTTP listener (``llm-rpc serve --http``)."""

    max_message_bytes: int = 16 * 1024 * 1024
    #: Open connections at most; past it a new connection gets a 503 and is closed.
    max_connections: int = 1024
    #: Seconds a kept-alive connection may sit idle before the next request starts.
    keepalive_timeout: float = 60.0
    #: Seconds from a request's first byte to the end of its head (a slowloris gets 408).
    header_timeout: float = 10.0
    #: Seconds to read a request's whole body once its head has arrived.
    body_timeout: float = 30.0
    #: Every request but ``GET /health`` must carry ``Authorization: Bearer <token>`` passing this.
    check_token: TokenCheck | None = None
    #: ``GET /metrics``; None: 404.
    metrics: MetricsRenderer | None = None


class HttpStats:
    """Live figures of the HTTP listeners of one server (read by the metrics)."""

    __slots__ = ("accepted", "connections", "rejected", "requests")

    def __init__(self) -> None:
        #: Open now.
        self.connections = 0
        #: Since start: connections served, connections refused over the cap, requests read.
        self.accepted = 0
        self.rejected = 0
        self.requests = 0


# -- wire helpers ---------------------------------------------------------------------------------------

_encoder = msgspec.json.Encoder()
_JSON = b"application/json"
_SSE = b"text/event-stream"


class _Probe(msgspec.Struct):
    """Just enough of a request to see whether it asks to be streamed."""

    params: Any = None


class _IdProbe(msgspec.Struct):
    id: msgspec.Raw = msgspec.Raw()


_probe_decoder = msgspec.json.Decoder(_Probe)
_id_decoder = msgspec.json.Decoder(_IdProbe)
_batch_ids_decoder = msgspec.json.Decoder(list[_IdProbe])
_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class _ExecuteOut(msgspec.Struct):
    content: str | None = None
    model: str = ""
    usage: _Usage = msgspec.field(default_factory=_Usage)
    finish_reason: str = "stop"
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    provider: str | None = None
    backend: str | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None


class _Reply(msgspec.Struct):
    result: msgspec.Raw = msgspec.Raw()
    error: dict[str, Any] | None = None


_reply_decoder = msgspec.json.Decoder(_Reply)
_execute_out_decoder = msgspec.json.Decoder(_ExecuteOut)


def _wants_stream(body: bytes) -> bool:
    """A single request whose params hold ``"stream": true`` (checked only when the bytes say so)."""
    if b'"stream"' not in body or body[:1] != b"{":
        return False
    try:
        params = _probe_decoder.decode(body).params
    except (msgspec.DecodeError, UnicodeDecodeError):
        return False
    return isinstance(params, dict) and params.get("stream") is True


def _expects_reply(body: bytes) -> bool:
    """Whether a body will be answered: it holds a request (an id), or something invalid (an error)."""
    try:
        if body[:1] == b"[":
            return any(len(item.id) for item in _batch_ids_decoder.decode(body))
        return len(_id_decoder.decode(body).id) > 0
    except (msgspec.DecodeError, UnicodeDecodeError):
        return True


def _error_object(message: str, type_: str, code: int | None = None, **data: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "data": {"type": type_, **data}}
    if code is not None:
        error = {"code": code, **error}
    return error


def _rpc_error_body(message: str, type_: str, code: int, **data: Any) -> bytes:
    return _encoder.encode({"jsonrpc": "2.0", "id": None, "error": _error_object(message, type_, code, **data)})


def _http_error_body(message: str, type_: str, code: int | None = None, **data: Any) -> bytes:
    """The body of an HTTP-level error outside JSON-RPC: FastAPI's ``detail`` plus our typed error."""
    return _encoder.encode({"detail": message, "error": _error_object(message, type_, code, **data)})


# Codes used here without importing the method layer's table (transports import protocol/ only).
_PARSE_ERROR = -32700
_INVALID_REQUEST = -32600
_INVALID_PARAMS = -32602
_UNAUTHORIZED = -32002
_SERVER_BUSY = -32008
_CLIENT_ERRORS = frozenset({_PARSE_ERROR, _INVALID_REQUEST, _INVALID_PARAMS})


# -- one exchange -----------------------------------------------------------------------------------------


class _Exchange:
    """The replies of one HTTP request: the reply, or (SSE) every message as an event."""

    __slots__ = ("done", "events", "reply")

    def __init__(self, events: Outbox | None) -> None:
        self.reply: bytes | None = None
        self.done: anyio.Event | None = None
        self.events = events

    def send(self, data: bytes) -> None:
        """The reply to the request (or batch) of this exchange."""
        self.reply = data
        if self.events is not None:
            self.events.put(b"data: " + data + b"\n\n")
            self.events.close()
        if self.done is not None:
            self.done.set()


_NO_EXCHANGE = _Exchange(None)


class _HttpSession(Session):
    """A Session whose replies go to its current exchange, and notifications to that exchange's
    event stream (or nowhere). One serves the requests of a connection one after another."""

    def __init__(self, dispatcher: Dispatcher, task_group: anyio.abc.TaskGroup, *, peer: str) -> None:
        self.exchange = _NO_EXCHANGE
        super().__init__(dispatcher, task_group, self._deliver, peer=peer, require_auth=False)

    def _deliver(self, data: bytes) -> None:
        self.exchange.send(data)

    def send_notification(self, method: str, params: Any) -> None:
        events = self.exchange.events
        if events is not None and not self.closed:
            message = _encoder.encode({"jsonrpc": "2.0", "method": method, "params": params})
            events.put(b"data: " + message + b"\n\n")


# -- one connection ---------------------------------------------------------------------------------------

_IDLE, _HEAD, _BODY, _BUSY = "idle", "head", "body", "busy"
_STATUS_LINES = {s.value: b"HTTP/1.1 %d %s\r\n" % (s.value, s.phrase.encode()) for s in HTTPStatus}
#: The keep-alive deadline is moved at most this often (seconds): a request costs no timer update.
_DEADLINE_SLACK = 1.0


class _Closed(Exception):
    """The connection cannot go on (the client left, or did not read its event stream)."""


class _BadHttp(Exception):
    """A request that cannot be served: answered with ``status`` and the connection closed."""

    def __init__(self, status: int, message: str, **data: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.data = data


class _StopParsing(Exception):
    """Raised in a callback to stop httptools at an error ``_Parser.error`` names."""


class _Request:
    """One request as the routes need it, filled in by ``_Parser``'s callbacks."""

    __slots__ = (
        "accept_sse",
        "arrived",
        "authorization",
        "chunks",
        "complete",
        "content_length",
        "expect_continue",
        "has_host",
        "head_bytes",
        "head_done",
        "http_1_0",
        "keep_alive",
        "method",
        "path",
        "size",
        "target",
        "too_large",
    )

    def __init__(self) -> None:
        #: ``perf_counter()`` when its last bytes were read: where its ``overhead_us`` starts, as on
        #: the other transports (a slow upload is the client's time, not ours).
        self.arrived = 0.0
        self.method = b""
        self.target = b""
        self.path = b""
        self.content_length = -1
        self.accept_sse = False
        self.authorization: bytes | None = None
        self.expect_continue = False
        self.has_host = False
        self.keep_alive = True
        self.http_1_0 = False
        self.head_done = False
        self.head_bytes = 0
        self.chunks: list[bytes] = []
        self.size = 0
        self.too_large = False
        self.complete = False

    @property
    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class _Parser:
    """httptools (llhttp) reads the bytes; these callbacks keep what the routes need.

    Requests complete in order into ``ready``; the connection answers each before it reads on, so
    what a pipelining client sends ahead waits here (at most a read's worth). A parse error is kept
    until the requests completed before it have been answered. The head size limit counts the
    head's bytes seen by the callbacks in the read that began it, then whole reads while it is
    still incomplete (httptools buffers a header line until its end)."""

    __slots__ = ("current", "error", "fresh", "max_body", "parser", "ready", "upgraded")

    def __init__(self, max_body: int) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.max_body = max_body
        self.ready: collections.deque[_Request] = collections.deque()
        self.current: _Request | None = None
        self.error: _BadHttp | None = None
        self.fresh = False
        self.upgraded = False

    def feed(self, data: bytes) -> None:
        if self.error is not None or self.upgraded:
            return  # nothing after either is read
        self.fresh = False
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True  # no protocol switch here: the request is answered, then the connection closes
            return
        except httptools.HttpParserCallbackError:
            return  # our own callbacks raise only after setting self.error
        except httptools.HttpParserError as exc:
            self.error = _BadHttp(400, "malformed HTTP request", reason=str(exc))
            return
        current = self.current
        if current is not None and not current.head_done:
            if not self.fresh:
                current.head_bytes += len(data)
            if current.head_bytes > MAX_HEADER_BYTES:
                self.error = _BadHttp(431, "request head larger than the limit", max_bytes=MAX_HEADER_BYTES)

    def end_of_input(self) -> None:
        """The client closed its side: a request it had begun is malformed."""
        if self.current is not None and self.error is None:
            self.error = _BadHttp(400, "malformed HTTP request", reason="connection closed mid-request")

    # -- httptools callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.current = _Request()
        self.fresh = True

    def on_url(self, url: bytes) -> None:
        request = self.current
        assert request is not None
        request.target += url
        if self.fresh:
            request.head_bytes += len(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self.current
        assert request is not None
        if self.fresh:
            request.head_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name == b"content-length":
            request.content_length = int(value)
        elif name == b"accept":
            request.accept_sse = _SSE in value
        elif name == b"authorization":
            request.authorization = value
        elif name == b"host":
            request.has_host = True
        elif name == b"expect":
            request.expect_continue = value.lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        request = self.current
        assert request is not None
        parser = self.parser
        request.head_done = True
        request.method = parser.get_method()
        request.path = request.target.split(b"?", 1)[0]
        request.http_1_0 = parser.get_http_version() == "1.0"
        request.keep_alive = parser.should_keep_alive()
        if request.head_bytes > MAX_HEADER_BYTES:
            self.error = _BadHttp(431, "request head larger than the limit", max_bytes=MAX_HEADER_BYTES)
        elif not request.has_host and not request.http_1_0:
            self.error = _BadHttp(400, "malformed HTTP request", reason="missing Host header")  # RFC 9112 3.2
        if self.error is not None:
            raise _StopParsing  # httptools re-raises it as HttpParserCallbackError
        if request.content_length > self.max_body:
            request.too_large = True

    def on_body(self, body: bytes) -> None:
        request = self.current
        assert request is not None
        request.size += len(body)
        if request.size > self.max_body:
            request.too_large = True
            request.chunks.clear()
        elif not request.too_large:
            request.chunks.append(body)

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        request.complete = True
        request.arrived = _perf()
        self.ready.append(request)
        self.current = None


class _Connection:
    """One HTTP/1.1 connection: requests one after another, each answered before the next is read.

    httptools parses the requests (head, body framing incl. chunked, keep-alive rules); ``_Parser``
    adds the limits, the Host rule and 100-continue. Responses are written directly: their every
    byte is ours (a status line, content-type, content-length), and an event stream is framed
    chunked (close-delimited for HTTP/1.0)."""

    def __init__(
        self,
        stream: anyio.abc.SocketStream,
        dispatcher: Dispatcher,
        lifecycle: Lifecycle,
        settings: HttpSettings,
        stats: HttpStats,
        peer: str,
    ) -> None:
        self.stream = stream
        self.dispatcher = dispatcher
        self.lifecycle = lifecycle
        self.settings = settings
        self.stats = stats
        self.peer = peer
        self.parser = _Parser(settings.max_message_bytes)
        self.eof = False
        #: The request being answered came as HTTP/1.0 (an event stream is then close-delimited).
        self.http_1_0 = False
        self.timer = anyio.CancelScope()
        self.phase = _IDLE
        self.deadline_phase = ""
        self.deadline_set_at = -math.inf
        self.closing = False
        #: While a reply is awaited: its scope, given the drain timeout when the server stops.
        self.wait_scope: anyio.CancelScope | None = None
        self.req_tg: anyio.abc.TaskGroup | None = None
        self.session: _HttpSession | None = None
        #: Set when the reader started for a running request has read (its bytes in ``watched``);
        #: None when no such reader is pending. It outlives its request: the next read takes its bytes.
        self.watcher_done: anyio.Event | None = None
        self.watched = b""

    # Lifecycle calls this at shutdown (it takes anything with ``cancel``): an idle connection
    # closes now, a busy one after its response, and a request in flight gets the drain timeout.
    def cancel(self) -> None:
        self.closing = True
        if self.phase == _IDLE:
            self.timer.cancel()
        elif self.wait_scope is not None and math.isinf(self.wait_scope.deadline):
            self.wait_scope.deadline = anyio.current_time() + self.lifecycle.drain_timeout

    async def run(self) -> None:
        """Serve until the client closes, a limit or timeout ends the connection, or shutdown.

        The accept loop has already counted this connection; it is uncounted here when it ends."""
        try:
            async with anyio.create_task_group() as req_tg:
                self.req_tg = req_tg
                with self.timer:
                    self.lifecycle.register(self)  # type: ignore[arg-type]
                    try:
                        await self._serve()
                    except _BadHttp as exc:
                        await self._protocol_error(exc)
                    except (_Closed, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                        pass
                    finally:
                        self.lifecycle.unregister(self)  # type: ignore[arg-type]
                if self.timer.cancelled_caught and self.phase in (_HEAD, _BODY):
                    await self._timeout_response()
                # The connection is over: whatever it started (a notification's work) stops with it.
                req_tg.cancel_scope.cancel()
        finally:
            self.stats.connections -= 1
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    await self.stream.aclose()

    # -- reading -------------------------------------------------------------------------------------

    async def _recv(self) -> bytes:
        """One read from the socket; b"" once the client has closed (or the connection broke)."""
        try:
            return await self.stream.receive(READ_CHUNK)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return b""

    async def _read(self) -> bytes:
        """The client's next bytes (b"" once it has closed), from the watcher when one was reading."""
        done = self.watcher_done
        if done is None:
            return await self._recv()
        await done.wait()
        self.watcher_done = None
        return self.watched

    def _watch(self) -> None:
        """Start reading while a request runs (unless a reader is pending already): the client's
        close cancels its requests at once. One reader per connection at a time, kept across
        requests rather than cancelled after each (cancelling a pending read costs more than the
        read)."""
        if self.watcher_done is None:
            self.watcher_done = anyio.Event()
            assert self.req_tg is not None
            self.req_tg.start_soon(self._watcher, self.watcher_done)

    async def _watcher(self, done: anyio.Event) -> None:
        self.watched = data = await self._recv()
        done.set()
        if not data and self.phase == _BUSY and self.session is not None:
            log.info("peer disconnected: cancelling its requests", extra={"peer": self.peer})
            self.closing = True
            self.session.cancel_all("the client disconnected")

    async def _receive(self) -> None:
        phase = self.phase
        if phase == _IDLE:
            now = anyio.current_time()
            slack = min(_DEADLINE_SLACK, self.settings.keepalive_timeout / 4)
            if self.deadline_phase != _IDLE or now - self.deadline_set_at > slack:
                self.deadline_phase = _IDLE
                self.deadline_set_at = now
                self.timer.deadline = now + self.settings.keepalive_timeout
        elif phase != self.deadline_phase:
            self.deadline_phase = phase
            timeout = self.settings.header_timeout if phase == _HEAD else self.settings.body_timeout
            self.timer.deadline = anyio.current_time() + timeout
        data = await self._read()
        if data:
            if phase == _IDLE:
                self.phase = _HEAD
            self.parser.feed(data)
        else:
            self.eof = True
            self.parser.end_of_input()

    async def _next_request(self) -> _Request | None:
        """The next whole request (or one already known to be too large); None once the client has
        closed between requests.

        Raises:
            _BadHttp: the bytes are not HTTP, or break a limit of the head.
        """
        parser = self.parser
        while True:
            if parser.ready:
                return parser.ready.popleft()
            if parser.error is not None:
                raise parser.error
            if self.eof or parser.upgraded:
                return None
            current = parser.current
            if current is not None and current.head_done:
                if current.too_large:
                    return current
                self.phase = _BODY
                if current.expect_continue:
                    current.expect_continue = False
                    await self.stream.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await self._receive()

    async def _serve(self) -> None:
        parser = self.parser
        while not self.closing:
            self.phase = _IDLE
            request = await self._next_request()
            if request is None:
                return  # the client closed the connection between requests
            if not request.keep_alive or (parser.upgraded and not parser.ready):
                self.closing = True
            self.stats.requests += 1
            if request.too_large:
                declared = request.content_length
                await self._too_large(request, declared if declared > self.settings.max_message_bytes else None)
                return
            self.phase = _BUSY
            self.http_1_0 = request.http_1_0
            await self._route(request, request.body)

    # -- writing -------------------------------------------------------------------------------------

    async def _respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = _JSON,
        extra: list[tuple[bytes, bytes]] | None = None,
        head_only: bool = False,
    ) -> None:
        """One whole response with a known length (HEAD: the headers only)."""
        if status == 204:
            data = _STATUS_LINES[204]
            body = b""
        else:
            data = _STATUS_LINES[status] + b"content-type: " + content_type + b"\r\ncontent-length: %d\r\n" % len(body)
        if extra:
            for name, value in extra:
                data += name + b": " + value + b"\r\n"
        if self.closing:
            data += b"connection: close\r\n"
        data += b"\r\n"
        if body and not head_only:
            data += body
        await self.stream.send(data)

    async def _too_large(self, head: _Request, declared: int | None) -> None:
        limit = self.settings.max_message_bytes
        message = f"request body larger than max_message_bytes ({limit})"
        data: dict[str, Any] = {"limit": "max_message_bytes", "max_bytes": limit}
        if declared is not None:
            data["size"] = declared
        if head.path in (b"/rpc", b"/"):
            body = _rpc_error_body(message, "message_too_large", _INVALID_REQUEST, **data)
        else:
            body = _http_error_body(message, "message_too_large", _INVALID_REQUEST, **data)
        self.closing = True
        await self._respond(413, body)
        await self._linger()

    async def _linger(self) -> None:
        """Read and drop what the client is still sending, so that closing does not reset the
        connection before it has read our answer."""
        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            await self.stream.send_eof()
        dropped = 0
        with anyio.move_on_after(_LINGER_SECONDS):
            while dropped < _LINGER_BYTES:
                data = await self._read()
                if not data:
                    return
                dropped += len(data)

    async def _protocol_error(self, exc: _BadHttp) -> None:
        if self.phase not in (_IDLE, _HEAD, _BODY):
            return
        status = exc.status
        if status == 431:
            body = _http_error_body(exc.message, "message_too_large", limit="max_header_bytes", **exc.data)
        else:
            body = _http_error_body(exc.message, "invalid_http", status=status, **exc.data)
        self.closing = True
        with anyio.move_on_after(1.0), contextlib.suppress(OSError, anyio.BrokenResourceError):
            await self._respond(status, body)
        # The client may still be sending (an endless header): closing now could reset the
        # connection before it reads the answer.
        await self._linger()

    async def _timeout_response(self) -> None:
        limit = "header_timeout" if self.phase == _HEAD else "body_timeout"
        log.info("slow client: request timed out", extra={"peer": self.peer, "limit": limit})
        self.closing = True
        body = _http_error_body("the request was not received in time", "request_timeout", limit=limit)
        with anyio.move_on_after(1.0), contextlib.suppress(OSError, anyio.BrokenResourceError):
            await self._respond(408, body)

    # -- routing -------------------------------------------------------------------------------------

    async def _route(self, head: _Request, body: bytes) -> None:
        method = head.method
        path = head.path
        settings = self.settings
        head_only = method == b"HEAD"
        if path == b"/health":
            if method in (b"GET", b"HEAD"):
                await self._health(head_only)
            else:
                await self._not_allowed(b"GET, HEAD")
            return
        if settings.check_token is not None and not self._authorized(head):
            await self._unauthorized(path)
            return
        if path in (b"/rpc", b"/"):
            if method == b"POST":
                await self._rpc(head, body)
            else:
                await self._not_allowed(b"POST")
        elif path == b"/execute":
            if method == b"POST":
                await self._execute(body, head.arrived)
            else:
                await self._not_allowed(b"POST")
        elif path == b"/metrics" and settings.metrics is not None:
            if method in (b"GET", b"HEAD"):
                text, content_type = settings.metrics()
                await self._respond(200, text, content_type.encode(), head_only=head_only)
            else:
                await self._not_allowed(b"GET, HEAD")
        else:
            body = _http_error_body("Not Found", "not_found", path=path.decode("latin-1"))
            await self._respond(404, body, head_only=head_only)

    def _authorized(self, head: _Request) -> bool:
        check = self.settings.check_token
        value = head.authorization
        if check is None or value is None:
            return check is None
        scheme, _, token = value.decode("latin-1").partition(" ")
        return scheme.lower() == "bearer" and check(token.strip())

    async def _unauthorized(self, path: bytes) -> None:
        message = "Unauthorized: send Authorization: Bearer <token>"
        if path in (b"/rpc", b"/"):
            body = _rpc_error_body(message, "unauthorized", _UNAUTHORIZED)
        else:
            body = _http_error_body(message, "unauthorized", _UNAUTHORIZED)
        await self._respond(401, body, extra=[(b"www-authenticate", b"Bearer")])

    async def _not_allowed(self, allow: bytes) -> None:
        body = _http_error_body("Method Not Allowed", "method_not_allowed", allow=allow.decode())
        await self._respond(405, body, extra=[(b"allow", allow)])

    async def _health(self, head_only: bool) -> None:
        if self.lifecycle.stopping.is_set():
            await self._respond(503, b'{"status":"draining"}', head_only=head_only)
        else:
            await self._respond(200, b'{"status":"ok"}', head_only=head_only)

    # -- JSON-RPC --------------------------------------------------------------------------------------

    async def _rpc(self, head: _Request, body: bytes) -> None:
        body = body.strip()
        sse = head.accept_sse or _wants_stream(body)
        exchange, session = self._dispatch(body, sse, head.arrived)
        if session is None:
            if exchange.reply is None:
                await self._respond(204, b"")  # only notifications
            elif sse:
                await self._stream_events(exchange, None)
            else:
                await self._respond(200, exchange.reply)
        elif sse:
            await self._stream_events(exchange, session)
        else:
            await self._await_reply(exchange, session)
            if exchange.reply is not None:
                await self._respond(200, exchange.reply)

    def _dispatch(self, frame: bytes, sse: bool, arrived: float) -> tuple[_Exchange, _HttpSession | None]:
        """Hand ``frame`` to the connection's session. It comes back only when a reply is still to come."""
        exchange = _Exchange(Outbox(self.lifecycle.outbox_limit) if sse else None)
        session = self.session
        if session is None or session.active:
            # The first request, or the last one left work running (a notification): a new session.
            assert self.req_tg is not None
            session = self.session = _HttpSession(self.dispatcher, self.req_tg, peer=self.peer)
        session.exchange = exchange
        session.closed = False
        try:
            session.handle_frame(frame, arrived)
        except Exception:
            # A bug in dispatch must cost one request, not the connection.
            log.exception("failed to handle a message", extra={"peer": self.peer})
        if exchange.reply is not None or not session.active or not _expects_reply(frame):
            session.closed = True  # answered, or nothing will be: later notifications go nowhere
            return exchange, None
        exchange.done = anyio.Event()
        return exchange, session

    async def _await_reply(self, exchange: _Exchange, session: Session) -> None:
        """Wait for the reply; meanwhile a client that disconnects cancels its requests."""
        assert exchange.done is not None
        done = exchange.done
        self.timer.deadline = math.inf  # the request's own deadline bounds the wait
        await self._while_running(session, done.wait)
        self._write_deadline()

    async def _while_running(self, session: Session, work: Callable[[], Awaitable[object]]) -> None:
        """Run ``work`` (waiting for a request's reply, or relaying its events) while the client's
        close is watched; at shutdown it gets the drain timeout, then the request is cancelled and
        ``work`` has a second more to take the error reply."""
        self._watch()
        with anyio.CancelScope() as wait_scope:
            self.wait_scope = wait_scope
            if self.closing:
                wait_scope.deadline = anyio.current_time() + self.lifecycle.drain_timeout
            await work()
        self.wait_scope = None
        if wait_scope.cancelled_caught:
            session.cancel_all("the server stopped before the request finished (drain timeout)")
            with anyio.move_on_after(1.0):
                await work()
        session.closed = True

    def _write_deadline(self) -> None:
        """After a long wait: the response must be taken within the body timeout."""
        self.deadline_phase = ""
        self.timer.deadline = anyio.current_time() + self.settings.body_timeout

    async def _stream_events(self, exchange: _Exchange, session: Session | None) -> None:
        """Server-Sent Events: each notification of the request as it comes, then the reply.

        ``session`` is None when everything is already in the outbox."""
        events = exchange.events
        assert events is not None
        head = _STATUS_LINES[200] + b"content-type: text/event-stream\r\ncache-control: no-cache\r\n"
        chunked = not self.http_1_0
        if chunked:
            head += b"transfer-encoding: chunked\r\n"
        else:
            self.closing = True  # HTTP/1.0: the stream ends when the connection does
        if self.closing:
            head += b"connection: close\r\n"
        self.timer.deadline = math.inf
        stream_send = self.stream.send

        async def send(data: bytes) -> None:
            await stream_send(b"%x\r\n%b\r\n" % (len(data), data) if chunked else data)

        def overflow() -> None:
            # The writer may be stuck in a send that never ends: the connection goes, now.
            log.warning("SSE reader too slow: closing connection", extra={"peer": self.peer, "limit": "outbox_bytes"})
            self.closing = True
            if session is not None:
                session.cancel_all("the client did not read the event stream")
            self.timer.cancel()

        events.on_overflow = overflow
        try:
            await stream_send(head + b"\r\n")

            async def relay() -> None:
                while data := await events.get():
                    await send(data)

            if session is None:
                await relay()
            else:
                await self._while_running(session, relay)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            if session is not None:
                session.cancel_all("the client disconnected")
                session.closed = True
            raise _Closed from None
        if events.overflowed or exchange.reply is None:
            raise _Closed
        self._write_deadline()
        if chunked:
            await stream_send(b"0\r\n\r\n")

    # -- llm-connect -----------------------------------------------------------------------------------

    async def _execute(self, body: bytes, arrived: float) -> None:
        """llm-connect's ``POST /execute``: ``{prompt, config}`` in, ``{content, model, usage,
        finish_reason, metadata}`` out; 400 for a bad body, 500 when the call fails."""
        try:
            fields = _object_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
            await self._respond(400, _http_error_body("the body is not a JSON object", "parse_error", _PARSE_ERROR))
            return
        if "prompt" not in fields and "messages" not in fields:
            await self._respond(
                400,
                _http_error_body(
                    "prompt is required",
                    "invalid_params",
                    _INVALID_PARAMS,
                    path="params.prompt",
                    missing_field="prompt",
                ),
            )
            return
        # The body is one JSON object (just checked), so it cannot smuggle members into the envelope.
        frame = b'{"jsonrpc":"2.0","id":0,"method":"execute","params":' + body + b"}"
        exchange, session = self._dispatch(frame, False, arrived)
        if session is not None:
            await self._await_reply(exchange, session)
        if exchange.reply is None:  # the client left while the call ran
            self.closing = True
            return
        reply = _reply_decoder.decode(exchange.reply)
        if reply.error is not None:
            error = reply.error
            code = error.get("code")
            status = 400 if code in _CLIENT_ERRORS else 401 if code == _UNAUTHORIZED else 500
            message = str(error.get("message", "error"))
            await self._respond(status, _encoder.encode({"detail": message, "error": error}))
            return
        out = _execute_out_decoder.decode(reply.result)
        metadata = dict(out.metadata)
        for key, value in (
            ("provider", out.provider),
            ("backend", out.backend),
            ("latency_ms", out.latency_ms),
            ("cost_usd", out.cost_usd),
        ):
            metadata.setdefault(key, value)
        await self._respond(
            200,
            _encoder.encode(
                {
                    "content": out.content if out.content is not None else "",
                    "model": out.model,
                    "usage": out.usage,
                    "finish_reason": out.finish_reason,
                    "metadata": metadata,
                }
            ),
        )


# -- the listener ------------------------------------------------------------------------------------------


async def serve_http(
    dispatcher: Dispatcher,
    lifecycle: Lifecycle,
    task_group: anyio.abc.TaskGroup,
    *,
    host: str,
    port: int,
    settings: HttpSettings,
    stats: HttpStats | None = None,
    task_status: anyio.abc.TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Listen for HTTP on ``host:port`` (0: any free port, announced on stderr) until shutdown.

    Connections run in ``task_group`` (the server's), so they drain after the accept loop stops.
    """
    stats = stats if stats is not None else HttpStats()
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    sockname = listener.extra(anyio.abc.SocketAttribute.local_address)
    bound_host, bound_port = str(sockname[0]), int(sockname[1])
    announce({"event": "listening", "transport": "http", "host": bound_host, "port": bound_port})
    task_status.started((bound_host, bound_port))

    async def handle(stream: anyio.abc.SocketStream) -> None:
        try:
            addr = stream.extra(anyio.abc.SocketAttribute.remote_address)
            peer = f"http:{addr[0]}:{addr[1]}"
        except (OSError, anyio.TypedAttributeLookupError, IndexError, TypeError):
            peer = "http"
        await _Connection(stream, dispatcher, lifecycle, settings, stats, peer).run()

    async def accept_from(one: Any) -> None:
        while True:
            try:
                stream = await one.accept()
            except (OSError, anyio.BrokenResourceError) as exc:
                log.warning("accept failed", extra={"transport": "http", "error": type(exc).__name__})
                await anyio.sleep(0.05)
                continue
            if stats.connections >= settings.max_connections:
                stats.rejected += 1
                await _reject(stream, settings.max_connections)
                continue
            stats.connections += 1  # counted at once, so a burst of accepts cannot overshoot the cap
            stats.accepted += 1
            task_group.start_soon(handle, stream)

    async with listener:
        with anyio.CancelScope() as scope:
            lifecycle.register(scope)
            try:
                async with anyio.create_task_group() as tg:
                    for one in listener.listeners:
                        tg.start_soon(accept_from, one)
            finally:
                lifecycle.unregister(scope)


async def _reject(stream: anyio.abc.SocketStream, cap: int) -> None:
    """Over the connection cap: one 503 and close, bounded so the accept loop never waits long."""
    body = _http_error_body(
        "Server busy: too many open connections",
        "server_busy",
        _SERVER_BUSY,
        limit="max_connections",
        max_connections=cap,
    )
    head = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"retry-after: 1\r\nconnection: close\r\n\r\n" % len(body)
    )
    with anyio.move_on_after(0.1), contextlib.suppress(OSError, anyio.BrokenResourceError):
        await stream.send(head + body)
    with anyio.CancelScope(shield=True), contextlib.suppress(OSError, anyio.BrokenResourceError):
        await stream.aclose()
