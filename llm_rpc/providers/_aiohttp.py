"""httpx's transport interface over aiohttp, for the asyncio backend (issue 9 item 2).

httpx2's own transport costs about 0.9 ms of CPU per call (its pool re-examines every connection
on each request and response), which caps one core near 800 calls a second at 256 in flight.
aiohttp's connector does the same job for a fraction of that, but only on asyncio. So on asyncio
the providers keep httpx's API (``httpx.AsyncClient``, its request building, its decoders and
``Response``), and only the bytes go through this transport; on trio they go through httpx2's
(``_client.UpstreamTransport`` chooses per call). Everything a caller can see is kept as httpx2
gives it: its exception types for each timeout and failure, streamed bodies that release their
connection on close, cancellation, content-encoding decoded by httpx (aiohttp decodes nothing
here), no cookies, no proxies, no redirects, the request's headers as they are.

Imported only when a call runs on asyncio, so the mock path and the start-up never load aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from yarl import URL

from llm_rpc.providers._client import httpx

__all__ = ["AiohttpTransport"]

#: A bytes body up to this size goes to aiohttp as it is: its one write never waits on the socket
#: (aiohttp drains only past 64 KiB), so no write timeout can apply. Larger and streamed bodies are
#: written piece by piece, each write under the request's write timeout, as httpx2 does.
_SMALL_BODY = 64 * 1024
#: Pieces a large bytes body is written in.
_PIECE = 64 * 1024
#: Header lines aiohttp accepts from an upstream (its default, 8 KiB, is below what h11 accepts).
_MAX_HEADER_LINE = 64 * 1024
#: What aiohttp would add to a request on its own: httpx's client already decided these headers.
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

_OPERATIONAL = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class _WriteTimedOut(Exception):
    """Raised inside aiohttp's body writer; aiohttp wraps it, ``_request_error`` finds it."""


class AiohttpTransport(httpx.AsyncBaseTransport):
    """One ``aiohttp.ClientSession`` on one ``TCPConnector``, bound to the event loop it was made on.

    The pool: ``limits.max_connections`` requests hold a connection at once; a request that waits
    longer than its ``pool`` timeout for one raises ``PoolTimeout`` (aiohttp's own ``connect``
    timeout would cover the wait and the connect together). Idle connections are kept for
    ``limits.keepalive_expiry`` seconds.
    """

    def __init__(self, *, limits: httpx.Limits, ssl_context: ssl.SSLContext) -> None:
        self.loop = asyncio.get_running_loop()
        size = limits.max_connections or 1000
        self._slots = asyncio.Semaphore(size)
        connector = aiohttp.TCPConnector(
            limit=size,
            limit_per_host=0,
            keepalive_timeout=limits.keepalive_expiry,
            ssl=ssl_context,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_connect=None, sock_read=None),
            auto_decompress=False,
            trust_env=False,
            skip_auto_headers=_NO_AUTO_HEADERS,
            max_line_size=_MAX_HEADER_LINE,
            max_field_size=_MAX_HEADER_LINE,
        )
        self._timeouts: dict[tuple[float | None, float | None], aiohttp.ClientTimeout] = {}

    def _timeout(self, connect: float | None, read: float | None) -> aiohttp.ClientTimeout:
        """aiohttp's timeout for httpx's connect and read ones (cached: a few distinct values per backend)."""
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = aiohttp.ClientTimeout(total=None, connect=None, sock_connect=connect, sock_read=read)
            if len(self._timeouts) < 64:
                self._timeouts[key] = timeout
        return timeout

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout") or {}
        await self._acquire(request, timeouts.get("pool"))
        payload: _TimedBody | None = None
        try:
            # As pairs, in order, names as written: aiohttp copies them into its own multidict.
            headers = [
                (name.decode("latin-1"), value.decode("latin-1"))
                for name, value in request.headers.raw
                if name.lower() != b"transfer-encoding"  # aiohttp adds its own for a body of unknown size
            ]
            data: Any
            if isinstance(request.stream, httpx.ByteStream):
                body = request.content
                if len(body) > _SMALL_BODY:
                    data = payload = _TimedBody(_pieces(body), len(body), timeouts.get("write"))
                else:
                    data = body or None
            else:
                data = payload = _TimedBody(request.stream, None, timeouts.get("write"))
            response = await self._session.request(
                request.method,
                URL(str(request.url), encoded=True),
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout(timeouts.get("connect"), timeouts.get("read")),
                proxy=None,
            )
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, _OPERATIONAL):
                raise _request_error(exc, request, payload) from exc
            raise
        extensions = {"http_version": b"HTTP/1.1", "reason_phrase": (response.reason or "").encode("latin-1")}
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_ResponseBody(response, request, self._slots),
            extensions=extensions,
        )

    async def _acquire(self, request: httpx.Request, pool: float | None) -> None:
        """A connection slot; waits at most ``pool`` seconds when every slot is taken.

        Raises:
            httpx.PoolTimeout: no slot came free in time.
        """
        if not self._slots.locked():
            await self._slots.acquire()  # returns at once: no suspension, no timer
            return
        try:
            async with asyncio.timeout(pool):
                await self._slots.acquire()
        except TimeoutError:
            raise httpx.PoolTimeout("timed out waiting for a connection from the pool", request=request) from None

    async def aclose(self) -> None:
        await self._session.close()

    def abandon(self) -> None:
        """Drop the session without awaiting: its loop is not the running one (a client kept across
        ``asyncio.run`` calls, or closed under trio). Its connections are closed now, so nothing is
        left for the garbage collector to report."""
        connector = self._session.connector
        self._session._connector = None
        if connector is None:
            return
        if not self.loop.is_closed():
            connector._close()  # the synchronous half of ``close()``; awaiting it needs that loop
            return
        protocols = [proto for idle in connector._conns.values() for proto, _ in idle]
        protocols += connector._acquired
        connector._close()  # on a closed loop this only marks it closed
        for proto in protocols:
            _close_on_closed_loop(proto.transport)


def _close_on_closed_loop(transport: asyncio.BaseTransport | None) -> None:
    """Close an asyncio transport whose loop is closed: ``abort()`` cannot schedule its last step
    (closing the socket), so it is taken here."""
    if transport is None:
        return
    with contextlib.suppress(Exception):
        transport.abort()  # type: ignore[attr-defined]
    finish = getattr(transport, "_call_connection_lost", None)
    if finish is not None:
        with contextlib.suppress(Exception):
            finish(None)


def _pieces(body: bytes) -> AsyncIterator[bytes]:
    """A large bytes body in pieces, each one its own timed write."""
    return _Pieces(memoryview(body))


class _Pieces:
    """A plain async iterator (nothing for the garbage collector to finalise)."""

    def __init__(self, body: memoryview) -> None:
        self._body = body
        self._at = 0

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> bytes:
        if self._at >= len(self._body):
            raise StopAsyncIteration
        piece = bytes(self._body[self._at : self._at + _PIECE])
        self._at += _PIECE
        return piece


class _TimedBody(aiohttp.payload.Payload):
    """A request body written piece by piece, each write (including its wait for the socket to take
    it) under httpx's write timeout; a write that times out marks ``timed_out`` and fails the request.

    ``size``: the body's length, or None when unknown (then aiohttp sends it chunked, unless the
    request carries its own Content-Length).
    """

    def __init__(self, pieces: Any, size: int | None, write_timeout: float | None) -> None:
        super().__init__(pieces)  # its Content-Type is never sent: the session skips aiohttp's own
        self._size = size
        self._write_timeout = write_timeout
        self.timed_out = False

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed request body cannot be decoded")

    async def write(self, writer: aiohttp.abc.AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(self, writer: aiohttp.abc.AbstractStreamWriter, content_length: int | None) -> None:
        async for piece in self._value:
            try:
                async with asyncio.timeout(self._write_timeout):
                    await writer.write(piece)
            except TimeoutError:
                self.timed_out = True
                raise _WriteTimedOut from None


class _ResponseBody(httpx.AsyncByteStream):
    """A response's body as httpx reads it: a plain async iterator over aiohttp's reads (nothing for the
    garbage collector to finalise when a reader stops early).

    ``aclose`` gives the connection back (to the pool when the body was read to its end, else it
    is closed, as httpx2 does) and frees the request's slot, once.
    """

    def __init__(self, response: aiohttp.ClientResponse, request: httpx.Request, slots: asyncio.Semaphore) -> None:
        self._response = response
        self._request = request
        self._slots: asyncio.Semaphore | None = slots

    def __aiter__(self) -> _ResponseBody:
        return self

    async def __anext__(self) -> bytes:
        content = self._response.content
        while True:
            try:
                # One piece per HTTP chunk, as h11 gives them to httpx2 (``readany`` would join chunks
                # that arrived together).
                chunk, chunk_end = await content.readchunk()
            except _OPERATIONAL as exc:
                raise _read_error(exc, self._request) from exc
            if chunk:
                return chunk
            if not chunk_end:  # (b"", False): the end of the body
                raise StopAsyncIteration

    async def aclose(self) -> None:
        slots, self._slots = self._slots, None
        if slots is None:
            return
        try:
            if self._response.content.at_eof():
                self._response.release()
            else:
                self._response.close()
        finally:
            slots.release()


def _request_error(exc: BaseException, request: httpx.Request, payload: _TimedBody | None) -> httpx.TransportError:
    """httpx2's exception for a failure before the response's head arrived."""
    if payload is not None and payload.timed_out:
        return httpx.WriteTimeout("timed out writing the request", request=request)
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout("timed out connecting", request=request)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return httpx.ConnectError("could not connect", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return httpx.WriteError("connection closed while writing the request", request=request)
    if isinstance(exc, aiohttp.InvalidURL):
        return httpx.UnsupportedProtocol("request URL not supported", request=request)
    return _read_error(exc, request)


def _read_error(exc: BaseException, request: httpx.Request) -> httpx.TransportError:
    """httpx2's exception for a failure while reading a response (its head or its body)."""
    if isinstance(exc, asyncio.TimeoutError):  # aiohttp's SocketTimeoutError included
        return httpx.ReadTimeout("timed out reading the response", request=request)
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        if _caused_by_os_error(exc):
            return httpx.ReadError("connection reset while reading the response", request=request)
        return httpx.RemoteProtocolError("incomplete or invalid response from upstream", request=request)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return httpx.RemoteProtocolError("server disconnected without sending a response", request=request)
    return httpx.ReadError("connection failed while reading the response", request=request)


def _caused_by_os_error(exc: BaseException) -> bool:
    """True when a payload error comes from the socket (a reset), not from the HTTP it carried."""
    seen = 0
    cause = exc.__cause__ or exc.__context__
    while cause is not None and seen < 8:
        if isinstance(cause, OSError) and not isinstance(cause, asyncio.TimeoutError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False
