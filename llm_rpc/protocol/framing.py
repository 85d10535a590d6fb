"""Framing: bytes in, whole messages (or frame errors) out. Push parsers, no I/O.

Two framings, chosen per connection by the first non-whitespace byte (``detect_framer``):
newline-delimited JSON (``{`` or ``[``) and LSP's ``Content-Length`` headers (``C``). Both
enforce ``max_bytes`` per message and resynchronise after an oversized one, so one bad message
never costs the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from llm_rpc import _codes

__all__ = ["FrameError", "Framer", "LspFramer", "NdjsonFramer", "detect_framer"]

_WHITESPACE = b" \t\r\n"
_MAX_HEADER_BYTES = 8192


@dataclass(frozen=True, slots=True)
class FrameError:
    """A message that could not be framed; answered with ``code`` and id null."""

    code: int
    message: str
    data: dict[str, Any] = field(default_factory=dict)


def too_large(limit: int, size: int | None = None) -> FrameError:
    data: dict[str, Any] = {"type": "message_too_large", "limit": "max_message_bytes", "max_bytes": limit}
    if size is not None:
        data["size"] = size
    return FrameError(_codes.INVALID_REQUEST, "Message too large", data)


class Framer(Protocol):
    """Turns received bytes into messages; ``encode`` frames a reply the same way."""

    def feed(self, data: bytes) -> list[bytes | FrameError]: ...

    def encode(self, body: bytes) -> bytes: ...


class NdjsonFramer:
    """One JSON value per line; ``\\r\\n`` tolerated, blank lines ignored."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._discarding = False  # inside an oversized line: drop bytes up to the next newline

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return out
            self._discarding = False
            data = data[nl + 1 :]
        if not self._buf:
            # Fast path: whole lines straight from the received chunk, no copy into the buffer.
            start = 0
            find = data.find
            while True:
                nl = find(b"\n", start)
                if nl < 0:
                    break
                self._emit(data[start:nl], out)
                start = nl + 1
            rest = data[start:]
        else:
            buf = self._buf
            buf += data
            start = 0
            nl = buf.find(b"\n", self._scanned)
            while nl >= 0:
                self._emit(bytes(buf[start:nl]), out)
                start = nl + 1
                nl = buf.find(b"\n", start)
            rest = bytes(buf[start:])
            buf.clear()
        if len(rest) > self.max_bytes:
            out.append(too_large(self.max_bytes))
            self._discarding = True
            self._scanned = 0
        elif rest:
            self._buf += rest
            self._scanned = len(self._buf)
        else:
            self._scanned = 0
        return out

    def _emit(self, line: bytes, out: list[bytes | FrameError]) -> None:
        if len(line) > self.max_bytes:
            out.append(too_large(self.max_bytes, len(line)))
            return
        line = line.strip(_WHITESPACE)
        if line:
            out.append(line)

    def encode(self, body: bytes) -> bytes:
        return body + b"\n"


class LspFramer:
    """LSP base protocol: ``Content-Length: N`` (other headers ignored), a blank line, N bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._buf = bytearray()
        self._body_len: int | None = None  # set while reading a body
        self._discard = 0  # bytes of an oversized body still to drop

    def feed(self, data: bytes) -> list[bytes | FrameError]:
        out: list[bytes | FrameError] = []
        buf = self._buf
        buf += data
        while True:
            if self._discard:
                n = min(self._discard, len(buf))
                del buf[:n]
                self._discard -= n
                if self._discard:
                    break
            if self._body_len is not None:
                if len(buf) < self._body_len:
                    break
                body = bytes(buf[: self._body_len])
                del buf[: self._body_len]
                self._body_len = None
                out.append(body)
                continue
            # Skip whitespace between messages (some clients send a trailing newline).
            i = 0
            while i < len(buf) and buf[i] in _WHITESPACE:
                i += 1
            if i:
                del buf[:i]
            end, sep = _find_header_end(buf)
            if end < 0:
                if len(buf) > _MAX_HEADER_BYTES:
                    out.append(
                        FrameError(
                            _codes.INVALID_REQUEST,
                            "Header block too large",
                            {
                                "type": "invalid_framing",
                                "limit": "max_header_bytes",
                                "max_bytes": _MAX_HEADER_BYTES,
                            },
                        )
                    )
                    buf.clear()
                break
            header = bytes(buf[:end])
            del buf[: end + sep]
            length = _content_length(header)
            if isinstance(length, FrameError):
                out.append(length)
                continue
            if length > self.max_bytes:
                out.append(too_large(self.max_bytes, length))
                self._discard = length
                continue
            self._body_len = length
        return out

    def encode(self, body: bytes) -> bytes:
        return b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def _find_header_end(buf: bytearray) -> tuple[int, int]:
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        return crlf, 4
    if lf >= 0:
        return lf, 2
    return -1, 0


def _content_length(header: bytes) -> int | FrameError:
    for line in header.splitlines():
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"content-length":
            value = value.strip()
            if value.isdigit() and len(value) <= 18:
                return int(value)
            return FrameError(
                _codes.INVALID_REQUEST,
                "Invalid Content-Length header",
                {"type": "invalid_framing", "header": "Content-Length"},
            )
    return FrameError(
        _codes.INVALID_REQUEST,
        "Missing Content-Length header",
        {"type": "invalid_framing", "header": "Content-Length"},
    )


def detect_framer(first: bytes, max_bytes: int) -> Framer | None:
    """The framer for a connection whose received bytes begin with ``first``; None while only whitespace."""
    stripped = first.lstrip(_WHITESPACE)
    if not stripped:
        return None
    if stripped[:1] in (b"C", b"c"):
        return LspFramer(max_bytes)
    return NdjsonFramer(max_bytes)
