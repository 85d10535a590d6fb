"""A scriptable loopback HTTP/1.1 server for provider tests.

It runs in its own thread (so it serves whichever anyio backend the test uses) and answers each
request with a ``Reply`` chosen by a handler: a plain body, a chunked stream (SSE or NDJSON) with
optional delays, a stream cut off in the middle, a hang, or a connection reset. It records every
request and counts how many were in flight at once, and notices when a client closes early.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class UpstreamRequest:
    """One request as the upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Reply:
    """What the upstream answers.

    ``chunks`` makes a chunked streaming response (each chunk written after ``chunk_delay``);
    ``cut_after`` closes the connection abruptly after that many chunks; ``hang`` holds the request
    without answering until the server stops (or ``hang`` seconds); ``reset`` closes the socket
    without any response; ``delay`` waits before answering.
    """

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b""
    headers: dict[str, str] = field(default_factory=dict)
    chunks: list[bytes | str] | None = None
    chunk_delay: float = 0.0
    cut_after: int | None = None
    hang: float | None = None
    reset: bool = False
    delay: float = 0.0
    content_type: str | None = None

    @classmethod
    def json(cls, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Reply:
        return cls(status=status, body=body, headers=headers or {})

    @classmethod
    def sse(cls, events: list[str], **kwargs: Any) -> Reply:
        """``events`` are whole SSE events (e.g. ``"data: {...}"``); each gets its blank line."""
        return cls(chunks=[e.rstrip("\n") + "\n\n" for e in events], content_type="text/event-stream", **kwargs)

    @classmethod
    def ndjson(cls, lines: list[Any], **kwargs: Any) -> Reply:
        chunks: list[bytes | str] = [json.dumps(line) + "\n" for line in lines]
        return cls(chunks=chunks, content_type="application/x-ndjson", **kwargs)


Handler = Callable[[UpstreamRequest], Reply]


class Upstream:
    """``with Upstream(handler) as up: ... up.url ...``; ``handler`` may be replaced at any time."""

    def __init__(self, handler: Handler | None = None) -> None:
        self.handler: Handler = handler or (lambda req: Reply.json({}))
        self.requests: list[UpstreamRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.client_disconnects = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Upstream:
        upstream = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = UpstreamRequest(
                    method=self.command,
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with upstream._lock:
                    upstream.requests.append(request)
                    upstream.in_flight += 1
                    upstream.max_in_flight = max(upstream.max_in_flight, upstream.in_flight)
                try:
                    upstream._answer(self, upstream.handler(request))
                except (BrokenPipeError, ConnectionResetError):
                    with upstream._lock:
                        upstream.client_disconnects += 1
                    self.close_connection = True
                finally:
                    with upstream._lock:
                        upstream.in_flight -= 1

            do_POST = _serve
            do_GET = _serve

        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.request_queue_size = 1024
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping.set()
        assert self._server is not None
        assert self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _wait_or_stop(self, seconds: float) -> bool:
        """Sleep; True if the server is stopping."""
        return self._stopping.wait(seconds)

    def _answer(self, h: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.delay and self._wait_or_stop(reply.delay):
            return
        if reply.reset:
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            h.connection.close()
            h.close_connection = True
            return
        if reply.hang is not None:
            deadline = time.monotonic() + reply.hang
            while time.monotonic() < deadline and not self._stopping.is_set():
                if _peer_closed(h.connection):
                    with self._lock:
                        self.client_disconnects += 1
                    h.close_connection = True
                    return
                time.sleep(0.01)
            h.close_connection = True
            return
        h.send_response(reply.status)
        headers = {k.lower(): v for k, v in reply.headers.items()}
        if reply.chunks is None:
            body = reply.body
            if isinstance(body, dict | list):
                data = json.dumps(body).encode()
                headers.setdefault("content-type", "application/json")
            else:
                data = body.encode() if isinstance(body, str) else body
            if reply.content_type:
                headers["content-type"] = reply.content_type
            headers["content-length"] = str(len(data))
            for k, v in headers.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
            return
        headers["transfer-encoding"] = "chunked"
        headers.setdefault("content-type", reply.content_type or "text/event-stream")
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.flush()
        for i, chunk in enumerate(reply.chunks):
            if reply.cut_after is not None and i >= reply.cut_after:
                h.wfile.flush()
                h.connection.shutdown(socket.SHUT_RDWR)
                h.close_connection = True
                return
            if reply.chunk_delay and self._wait_or_stop(reply.chunk_delay):
                return
            data = chunk.encode() if isinstance(chunk, str) else chunk
            h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            h.wfile.flush()
        if reply.cut_after is not None and reply.cut_after >= len(reply.chunks):
            h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        h.wfile.write(b"0\r\n\r\n")
        h.wfile.flush()


def _peer_closed(sock: socket.socket) -> bool:
    """True when the client has closed its end (a zero-byte peek)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


@contextmanager
def upstream(handler: Handler | None = None) -> Iterator[Upstream]:
    with Upstream(handler) as up:
        yield up
