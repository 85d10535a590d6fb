"""Plumbing shared by the HTTP providers: exception translation, status classification, retry hints.

Every call to the HTTP client runs inside ``map_transport_errors(backend)``, so nothing above the
providers ever sees an httpx type. Messages are built from our own fields: an upstream exception's
text (which may quote a URL or a header) never becomes part of an error.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import email.utils
import time
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any, Literal, cast

import anyio

from llm_rpc import errors
from llm_rpc._secret import redact
from llm_rpc.providers._client import httpx

__all__ = [
    "LineTooLongError",
    "classify_status",
    "discard_body",
    "error_from_status",
    "map_transport_errors",
    "ndjson_lines",
    "parse_duration",
    "retry_after_from_headers",
    "should_retry_from_headers",
    "sse_events",
]

_MAX_PROVIDER_MESSAGE = 500


class map_transport_errors:  # used as a function: ``with map_transport_errors(name):``
    """Translate the HTTP client's exceptions into ``ProviderError`` subclasses (most specific first).

    A class rather than a ``@contextmanager`` generator: it is entered on every upstream call."""

    __slots__ = ("backend",)

    def __init__(self, backend: str) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: object) -> Literal[False]:
        if exc is None:
            return False
        backend = self.backend
        if isinstance(exc, httpx.TimeoutException):
            raise errors.UpstreamTimeoutError(
                f"{backend}: upstream timed out ({type(exc).__name__})", backend=backend
            ) from None
        if isinstance(exc, (httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.CloseError)):
            raise errors.UpstreamConnectionError(
                f"{backend}: connection failed ({type(exc).__name__})", backend=backend
            ) from None
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.LocalProtocolError, httpx.DecodingError)):
            raise errors.UpstreamProtocolError(
                f"{backend}: invalid HTTP from upstream ({type(exc).__name__})", backend=backend
            ) from None
        if isinstance(exc, httpx.TransportError):
            raise errors.UpstreamConnectionError(
                f"{backend}: transport error ({type(exc).__name__})", backend=backend
            ) from None
        return False


def classify_status(status: int) -> type[errors.ProviderError]:
    """The error class for an HTTP status alone (providers refine it with the body)."""
    if status in (401, 403):
        return errors.AuthError
    if status == 402:
        return errors.BillingError
    if status == 429:
        return errors.RateLimitedError
    if status in (408, 504):
        return errors.UpstreamTimeoutError
    if status in (503, 529):
        return errors.OverloadedError
    if status in (400, 404, 405, 413, 415, 422):
        return errors.BadRequestError
    if status == 409 or status >= 500:
        return errors.ServerError
    return errors.BadRequestError


def parse_duration(text: str) -> float | None:
    """Seconds from ``"1.5"``, ``"37s"``, ``"12ms"`` or a Go-style ``"6m0s"``; None if unparseable."""
    text = text.strip()
    if not text:
        return None
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    total = 0.0
    number = ""
    i = 0
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = text[i : i + 2] if text[i : i + 2] in units else ch
        if unit not in units or not number:
            return None
        total += float(number) * units[unit]
        number = ""
        i += len(unit)
    if number:
        return None
    return total


def retry_after_from_headers(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait, from ``retry-after-ms`` then ``retry-after`` (seconds or an HTTP date)."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        with contextlib.suppress(ValueError):
            return max(0.0, float(ms) / 1000)
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = parse_duration(value)
    if seconds is not None:
        return seconds
    with contextlib.suppress(TypeError, ValueError):
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - (now if now is not None else time.time()))
    return None


def should_retry_from_headers(headers: Mapping[str, str]) -> bool | None:
    """The provider's ``x-should-retry`` verdict, when it sent one."""
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    return True if value == "true" else False if value == "false" else None


def error_from_status(
    cls: type[errors.ProviderError],
    *,
    backend: str,
    status: int | None,
    provider_message: str | None,
    headers: Mapping[str, str] | None = None,
    retry_after: float | None = None,
    **data: Any,
) -> errors.ProviderError:
    """A ``ProviderError`` with our own message; the provider's text goes in ``data``, scrubbed and capped."""
    if provider_message is not None:
        provider_message = redact(provider_message)[:_MAX_PROVIDER_MESSAGE]
    hdrs = headers or {}
    if retry_after is None:
        retry_after = retry_after_from_headers(hdrs)
    what = f"HTTP {status}" if status is not None else "error"
    return cls(
        f"{backend}: {cls.type} ({what})",
        backend=backend,
        status=status,
        retry_after=retry_after,
        provider_message=provider_message,
        should_retry=should_retry_from_headers(hdrs),
        **data,
    )


# -- reading streamed bodies ---------------------------------------------------------------------------------
# Stopping a stream early (an error event, a caller that stops reading) must not leave async generators
# to the garbage collector, which trio reports as a ResourceWarning (an error under the test suite's
# filterwarnings). httpx2's ``EventSource``, ``aiter_text`` and ``aiter_lines``, and the transport's
# layers below ``aiter_raw``, do not close the generators they iterate. So these readers take their
# bytes from ``aiter_bytes()`` through plain iterators, and ``discard_body`` ends every layer under it
# by an exception raised at the bottom (a cancelled read), which finishes each generator.


@contextlib.asynccontextmanager
async def sse_events(response: httpx.Response) -> AsyncIterator[AsyncIterator[httpx.ServerSentEvent]]:
    """``async with sse_events(response) as events: async for event in events: ...``, httpx's parser,
    with nothing left behind however the loop ends."""
    parts = response.aiter_bytes()
    view = cast("httpx.Response", _TextView(response, _Utf8Chunks(parts)))
    events = cast("AsyncGenerator[httpx.ServerSentEvent, None]", httpx.EventSource(view).__aiter__())
    try:
        yield events
    finally:
        await events.aclose()
        await discard_body(parts)


@contextlib.asynccontextmanager
async def ndjson_lines(
    response: httpx.Response, max_line: int = 16 * 1024 * 1024
) -> AsyncIterator[AsyncIterator[bytes]]:
    """The body's lines as bytes (without the newline), with nothing left behind however the loop ends.

    A line longer than ``max_line`` raises ``LineTooLongError``.
    """
    parts = response.aiter_bytes()
    try:
        yield _Lines(parts, max_line)
    finally:
        await discard_body(parts)


async def discard_body(parts: AsyncGenerator[bytes, None]) -> None:
    """Stop reading a body: the next read is cancelled, so every generator under ``parts`` ends now."""
    with anyio.CancelScope() as scope:
        scope.cancel()
        with contextlib.suppress(Exception):
            async for _ in parts:
                pass
    await parts.aclose()


class LineTooLongError(Exception):
    """A line longer than any the provider sends: a misbehaving server, not a stream."""


class _Utf8Chunks:
    """Text from byte chunks, as ``aiter_text`` gives it, but a plain iterator (nothing for the GC to close)."""

    def __init__(self, parts: AsyncIterator[bytes]) -> None:
        self._parts = parts
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._ended = False

    def __aiter__(self) -> _Utf8Chunks:
        return self

    async def __anext__(self) -> str:
        while not self._ended:
            try:
                part = await anext(self._parts)
            except StopAsyncIteration:
                self._ended = True
                if tail := self._decoder.decode(b"", final=True):
                    return tail
                break
            if text := self._decoder.decode(part):
                return text
        raise StopAsyncIteration


class _TextView:
    """What ``EventSource`` reads of a response: its headers, its request and ``aiter_text()``."""

    def __init__(self, response: httpx.Response, text: _Utf8Chunks) -> None:
        self.headers = response.headers
        self.request = response.request
        self._text = text

    def aiter_text(self) -> _Utf8Chunks:
        return self._text


class _Lines:
    """Lines (bytes, without the newline) from byte chunks; a plain iterator, nothing for the GC to close."""

    def __init__(self, parts: AsyncIterator[bytes], max_line: int) -> None:
        self._parts = parts
        self._max_line = max_line
        self._buffer = b""
        self._ready: collections.deque[bytes] = collections.deque()
        self._ended = False

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        while not self._ready:
            if self._ended:
                raise StopAsyncIteration
            try:
                part = await anext(self._parts)
            except StopAsyncIteration:
                self._ended = True
                if self._buffer:
                    self._ready.append(self._buffer)
                    self._buffer = b""
                continue
            *lines, self._buffer = (self._buffer + part).split(b"\n")
            self._ready.extend(lines)
            if len(self._buffer) > self._max_line:
                raise LineTooLongError
        return self._ready.popleft()
