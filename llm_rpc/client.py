"""An async JSON-RPC client for llm-rpc: spawn the server as a stdio child, or connect over TCP/Unix.

```python
async with Client.spawn() as client:           # or Client.connect_tcp("127.0.0.1", port)
    result = await client.call("execute", {"prompt": "Hello"})
```

Errors come back as exceptions chosen by code: protocol errors as ``RpcError`` subclasses
(``InvalidParamsError``, ``ServerBusyError``, ...), domain errors as the matching ``LLMError``
subclass (``RateLimitedError``, ``LLMBudgetExceededError``, ...), each with ``.code`` and ``.data``.
Works on asyncio and trio.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import anyio.abc
import msgspec
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from anyio.streams.stapled import StapledByteStream

from llm_rpc import _codes, errors
from llm_rpc.protocol.errors import PROTOCOL_ERRORS, RpcError
from llm_rpc.protocol.framing import NdjsonFramer

__all__ = ["Client", "StreamingCall", "error_from_wire"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_CLIENT_MAX_BYTES = 1 << 30


def error_from_wire(error: dict[str, Any]) -> Exception:
    """The exception for a JSON-RPC error object."""
    code = int(error.get("code", _codes.INTERNAL_ERROR))
    message = str(error.get("message", ""))
    data = error.get("data")
    data = dict(data) if isinstance(data, dict) else {}
    cls = PROTOCOL_ERRORS.get(code)
    if cls is not None:
        return cls(code, message, data)
    type_ = str(data.get("type", ""))
    llm_cls = errors.error_class_for_type(type_, upstream="backend" in data)
    if llm_cls is not None:
        fields = {k: v for k, v in data.items() if k != "type"}
        try:
            exc: Exception = llm_cls(message, **fields)
        except TypeError:
            exc = llm_cls(message)
            exc.data = fields
        exc.code = code  # type: ignore[attr-defined]
        return exc
    return RpcError(code, message, data)


class _Pending:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.reply: dict[str, Any] | None = None


class StreamingCall:
    """A streamed call in progress: iterate for the deltas, then read ``result``."""

    def __init__(
        self,
        client: Client,
        request_id: int,
        pending: _Pending,
        deltas: MemoryObjectReceiveStream[dict[str, Any]],
    ) -> None:
        self._client = client
        self._id = request_id
        self._pending = pending
        self._deltas = deltas

    def __aiter__(self) -> StreamingCall:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            return await self._deltas.receive()
        except anyio.EndOfStream:
            self._deltas.close()
            raise StopAsyncIteration from None

    @property
    def result(self) -> Any:
        """The whole result (after the deltas); raises the typed exception if the call failed."""
        reply = self._pending.reply
        if reply is None:
            raise RuntimeError("the call has not finished: read every delta first")
        self._client._pending.pop(self._id, None)
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply.get("result")


class Client:
    """A JSON-RPC 2.0 client over one byte stream (newline-delimited JSON)."""

    def __init__(self, stream: anyio.abc.ByteStream) -> None:
        self._stream = stream
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._send_lock = anyio.Lock()
        self._closed = False
        self._streams: dict[int, MemoryObjectSendStream[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def connect_tcp(cls, host: str, port: int) -> AsyncIterator[Client]:
        stream = await anyio.connect_tcp(host, port)
        async with cls._running(stream) as client:
            yield client

    @classmethod
    @contextlib.asynccontextmanager
    async def connect_unix(cls, path: str) -> AsyncIterator[Client]:
        stream = await anyio.connect_unix(path)
        async with cls._running(stream) as client:
            yield client

    @classmethod
    @contextlib.asynccontextmanager
    async def spawn(
        cls, argv: Sequence[str] | None = None, *, env: dict[str, str] | None = None
    ) -> AsyncIterator[Client]:
        """Start ``llm-rpc serve --stdio`` (or ``argv``) as a child and talk to it over its pipes.

        On exit stdin is closed, so the server drains and exits 0.
        """
        command = list(argv) if argv is not None else [sys.executable, "-m", "llm_rpc", "serve", "--stdio"]
        process = await anyio.open_process(command, env=env, stderr=None)
        assert process.stdin is not None
        assert process.stdout is not None
        stream = StapledByteStream(process.stdin, process.stdout)
        try:
            async with cls._running(stream) as client:
                yield client
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(30):
                await process.wait()
            if process.returncode is None:
                process.kill()
                with anyio.CancelScope(shield=True):
                    await process.wait()

    @classmethod
    @contextlib.asynccontextmanager
    async def _running(cls, stream: anyio.abc.ByteStream) -> AsyncIterator[Client]:
        client = cls(stream)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(client._read_loop)
                try:
                    yield client
                finally:
                    client._closed = True
                    with anyio.CancelScope(shield=True):
                        with contextlib.suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                            await stream.send_eof()
                    tg.cancel_scope.cancel()
                    with anyio.CancelScope(shield=True):
                        await stream.aclose()
        except BaseExceptionGroup as group:
            # The caller's own exception, not a group: the task group is an implementation detail.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise

    # -- calls -----------------------------------------------------------------------------------

    async def call(self, method: str, params: Any = None, *, stream: bool = False) -> Any:
        """Call ``method`` and return its result; raise the typed exception on error.

        With ``stream=True`` (for ``execute``), ``"stream": true`` is set in the params and the
        return value is a ``StreamingCall``: ``async for delta in it`` yields each
        ``execute.delta``'s ``delta`` as it arrives, then ``it.result`` holds the whole result.
        """
        if stream:
            return await self._start_stream(method, params)
        request_id = next(self._ids)
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            message["params"] = params
        pending = self._pending[request_id] = _Pending()
        try:
            await self._send(_encoder.encode(message))
            await pending.event.wait()
        finally:
            self._pending.pop(request_id, None)
        reply = pending.reply
        assert reply is not None
        if "error" in reply:
            raise error_from_wire(reply["error"])
        return reply.get("result")

    async def _start_stream(self, method: str, params: Any) -> StreamingCall:
        request_id = next(self._ids)
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](math.inf)
        pending = self._pending[request_id] = _Pending()
        self._streams[request_id] = send
        message = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "stream": True}}
        await self._send(_encoder.encode(message))
        return StreamingCall(self, request_id, pending, receive)

    async def notify(self, method: str, params: Any = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        await self._send(_encoder.encode(message))

    async def batch(self, calls: Sequence[tuple[str, Any]]) -> list[Any]:
        """Send one batch array; results in order, each a value or the exception for its error."""
        ids = [next(self._ids) for _ in calls]
        pendings = [_Pending() for _ in calls]
        body = []
        for request_id, pending, (method, params) in zip(ids, pendings, calls, strict=True):
            self._pending[request_id] = pending
            message: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
            if params is not None:
                message["params"] = params
            body.append(message)
        try:
            await self._send(_encoder.encode(body))
            for pending in pendings:
                await pending.event.wait()
        finally:
            for request_id in ids:
                self._pending.pop(request_id, None)
        out: list[Any] = []
        for pending in pendings:
            reply = pending.reply or {}
            out.append(error_from_wire(reply["error"]) if "error" in reply else reply.get("result"))
        return out

    async def _send(self, body: bytes) -> None:
        async with self._send_lock:
            await self._stream.send(body + b"\n")

    async def _read_loop(self) -> None:
        framer = NdjsonFramer(_CLIENT_MAX_BYTES)
        try:
            while True:
                try:
                    data = await self._stream.receive(65536)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    break
                for frame in framer.feed(data):
                    if isinstance(frame, bytes):
                        self._dispatch(_decoder.decode(frame))
        finally:
            lost = {
                "code": _codes.INTERNAL_ERROR,
                "message": "connection closed",
                "data": {"type": "connection_closed"},
            }
            for pending in list(self._pending.values()):
                if pending.reply is None:
                    pending.reply = {"error": lost}
                    pending.event.set()
            for sink in self._streams.values():
                sink.close()
            self._streams.clear()

    def _dispatch(self, message: Any) -> None:
        if isinstance(message, list):
            for item in message:
                self._dispatch(item)
            return
        if not isinstance(message, dict):
            return
        if "method" in message:
            params = message.get("params")
            if message["method"] == "execute.delta" and isinstance(params, dict):
                sink = self._streams.get(params.get("request_id"))  # type: ignore[arg-type]
                if sink is not None:
                    sink.send_nowait(params.get("delta", {}))
                    return
            self.notifications.append(message)
            return
        request_id = message.get("id")
        pending = self._pending.get(request_id)  # type: ignore[arg-type]
        if pending is not None:
            pending.reply = message
            pending.event.set()
        sink = self._streams.pop(request_id, None)  # type: ignore[arg-type]
        if sink is not None:
            sink.close()
