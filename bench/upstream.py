"""A fast local OpenAI-compatible upstream for benchmarks.

``POST /v1/chat/completions`` answers a small valid ``chat.completion`` (or, when the body has
``"stream": true``, an SSE stream of ``chat.completion.chunk`` events ending with a usage chunk
and ``data: [DONE]``), after an optional fixed latency. ``GET /v1/models`` and ``GET /health``
answer too; anything else gets an OpenAI-style 404 or 405.

It is a raw asyncio ``Protocol`` with a minimal HTTP/1.1 keep-alive parser (Content-Length
bodies; pipelined requests are answered in order), on uvloop when it is installed: the point is
that the upstream is never what a benchmark measures. It binds loopback addresses only and
prints ``{"event":"listening","port":N}`` as one JSON line on stdout once it accepts
connections. Run it in its own process::

    python bench/upstream.py --port 0 --latency-ms 200

Only the standard library is required (uvloop is optional), so any venv can run it.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ipaddress
import json
import os
import signal
import sys
import time
from typing import Any, cast

_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_CACHE_LIMIT = 256
_CREATED = int(time.time())
_CONTENT = "Hello from the benchmark upstream."


def _response(status: str, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + content_type
        + b"\r\ncontent-length: " + str(len(body)).encode()
        + (b"\r\nconnection: close" if close else b"")
        + b"\r\n\r\n"
    )  # fmt: skip
    return head + body


def _error(status: str, message: str, kind: str, close: bool = False) -> bytes:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return _response(status, json.dumps(body, separators=(",", ":")).encode(), close=close)


def _usage() -> dict[str, Any]:
    return {
        "prompt_tokens": 9,
        "completion_tokens": 7,
        "total_tokens": 16,
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def completion_body(model: str) -> bytes:
    """A small valid ``chat.completion`` object."""
    body = {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": _CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": _CONTENT, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(),
        "system_fingerprint": "fp_bench",
    }
    return json.dumps(body, separators=(",", ":")).encode()


def stream_events(model: str) -> list[bytes]:
    """The SSE events of a streamed completion: role, content deltas, finish, usage, ``[DONE]``."""

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
        obj = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": _CREATED,
            "model": model,
            "system_fingerprint": "fp_bench",
            "choices": choices,
            "usage": usage,
        }
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    words = _CONTENT.split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    events = [chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])]
    events += [chunk([{"index": 0, "delta": {"content": p}, "finish_reason": None}]) for p in pieces]
    events.append(chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    events.append(chunk([], _usage()))
    events.append(b"data: [DONE]\n\n")
    return events


def _stream_response(model: str) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache"
        b"\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    chunks = [f"{len(e):x}".encode() + b"\r\n" + e + b"\r\n" for e in stream_events(model)]
    return head + b"".join(chunks) + b"0\r\n\r\n"


_MODELS = _response(
    "200 OK",
    json.dumps(
        {"object": "list", "data": [{"id": "bench-model", "object": "model", "created": _CREATED, "owned_by": "x"}]},
        separators=(",", ":"),
    ).encode(),
)
_HEALTH = _response("200 OK", b'{"status":"ok"}')


class Upstream:
    """The answers, with a cache keyed by request body (benchmark bodies repeat)."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.requests = 0
        self._cache: dict[bytes, bytes] = {}

    def answer(self, method: bytes, target: bytes, body: bytes) -> bytes:
        self.requests += 1
        path = target.split(b"?", 1)[0]
        if path in {b"/v1/chat/completions", b"/chat/completions"}:
            if method != b"POST":
                return _error("405 Method Not Allowed", "Use POST.", "invalid_request_error")
            cached = self._cache.get(body)
            if cached is not None:
                return cached
            try:
                request = json.loads(body)
            except ValueError:
                return _error("400 Bad Request", "We could not parse the JSON body.", "invalid_request_error")
            if not isinstance(request, dict):
                return _error("400 Bad Request", "The body must be a JSON object.", "invalid_request_error")
            model = request.get("model")
            model = model if isinstance(model, str) else "bench-model"
            if request.get("stream") is True:
                out = _stream_response(model)
            else:
                out = _response("200 OK", completion_body(model))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[body] = out
            return out
        if path == b"/v1/models" and method == b"GET":
            return _MODELS
        if path == b"/health" and method == b"GET":
            return _HEALTH
        return _error("404 Not Found", "Unknown path.", "invalid_request_error")


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection: parse heads and Content-Length bodies, answer in order."""

    __slots__ = ("_buf", "_closing", "_loop", "_transport", "_upstream")

    def __init__(self, upstream: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        self._upstream = upstream
        self._loop = loop
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while not self._closing:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._reject("431 Request Header Fields Too Large", "Head too large.")
                return
            raw = bytes(buf[:end])
            head = raw.lower()
            line_end = raw.find(b"\r\n")
            parts = (raw if line_end < 0 else raw[:line_end]).split(b" ")
            if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                self._reject("400 Bad Request", "Malformed request line.")
                return
            if b"\r\ntransfer-encoding:" in head:
                self._reject("411 Length Required", "Send a Content-Length body.")
                return
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                value_end = head.find(b"\r\n", at + 17)
                try:
                    length = int(head[at + 17 : value_end if value_end >= 0 else None])
                except ValueError:
                    length = -1
                if length < 0 or length > _MAX_BODY:
                    self._reject("400 Bad Request", "Bad Content-Length.")
                    return
            total = end + 4 + length
            if len(buf) < total:
                return
            body = bytes(buf[end + 4 : total])
            del buf[:total]
            close = b"\r\nconnection: close" in head or parts[2] == b"HTTP/1.0"
            answer = self._upstream.answer(parts[0], parts[1], body)
            latency = self._upstream.latency
            if latency > 0:
                self._loop.call_later(latency, self._send, answer, close)
            else:
                self._send(answer, close)
            if close:
                self._closing = True

    def _reject(self, status: str, message: str) -> None:
        self._closing = True
        self._send(_error(status, message, "invalid_request_error", close=True), True)

    def _send(self, answer: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if close:
            transport.close()


def _check_loopback(host: str) -> None:
    address = "127.0.0.1" if host == "localhost" else host
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise SystemExit(f"upstream: refusing to bind {host!r}: loopback addresses only")


async def start(
    host: str = "127.0.0.1", port: int = 0, latency: float = 0.0
) -> tuple[asyncio.AbstractServer, int, Upstream]:
    """Start the upstream on the running asyncio loop; returns the server, its port and its state."""
    _check_loopback(host)
    loop = asyncio.get_running_loop()
    upstream = Upstream(latency)
    server = await loop.create_server(lambda: _Connection(upstream, loop), host, port, backlog=1024)
    bound = server.sockets[0].getsockname()[1]
    return server, int(bound), upstream


async def _main(args: argparse.Namespace) -> None:
    server, port, _ = await start(args.host, args.port, args.latency_ms / 1000)
    sys.stdout.write(json.dumps({"event": "listening", "port": port}, separators=(",", ":")) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.max_seconds > 0:
        loop.call_later(args.max_seconds, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before each answer")
    parser.add_argument(
        "--loop", choices=("auto", "uvloop", "asyncio"), default="auto", help="auto: uvloop if installed"
    )
    parser.add_argument("--max-seconds", type=float, default=0.0, help="exit by itself after this long (0: never)")
    args = parser.parse_args(argv)
    _check_loopback(args.host)
    uvloop: Any = None
    if args.loop != "asyncio":
        try:
            # Through importlib: uvloop is optional and absent from the package's own venv.
            uvloop = importlib.import_module("uvloop")
        except ImportError:
            if args.loop == "uvloop":
                raise
    if uvloop is not None:
        uvloop.run(_main(args))
    else:
        asyncio.run(_main(args))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
