"""The HTTP client every provider uses: httpx's API, from the httpx2 distribution, over aiohttp on asyncio.

httpx 0.28 over httpcore 1.0.9 collapses under concurrency: its pool does work quadratic in its
connections, so against a local upstream it gives 16-49 req/s at 256 calls in flight and 200 ms
(ideal 1,280) and 84-130 req/s at 64 in flight with no latency. httpx2 keeps httpx's API, runs on
asyncio and trio, and gives 98-99% of the ideal at 64 in flight and 200 ms on both (the issue 3
target is 85%), about 800 req/s at 256. The pool is wide and all kept alive: httpx's default
Limits (100 connections, 20 kept alive) cap 256 in flight at 200 ms near 480 req/s.
Its transport still costs about 0.9 ms of CPU per call, so on asyncio the bytes go through
aiohttp instead (``_aiohttp.AiohttpTransport``, behind the same httpx API); on trio through
httpx2's own pool, split in up to 32 filled in order (``ShardedTransport``). ``UpstreamTransport`` picks per call.
contracts/decisions.md has the numbers (``bench/http_clients.py``).
Imported only when a real provider is built: the mock path never pays for it.
"""

from __future__ import annotations

import asyncio
import functools
import math
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx2 as httpx

if TYPE_CHECKING:
    from llm_rpc.providers._aiohttp import AiohttpTransport

__all__ = ["ShardedTransport", "UpstreamClient", "UpstreamTransport", "httpx", "new_client"]

#: How many independent connection pools one backend's client spreads its requests over.
POOL_SHARDS = 32
#: Requests in flight on one pool before the next pool is used.
SHARD_FILL = 8


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """One verifying TLS context for every pool: loading the CA bundle costs ~20 ms each time."""
    return httpx.create_ssl_context(trust_env=False)


class ShardedTransport(httpx.AsyncBaseTransport):
    """httpx2's own transport, several times over, filled in order.

    httpcore2's pool re-examines every connection it holds on each request and on each response
    (for an idle one that means probing its socket), so its cost per call grows with the number
    of connections: at 64 calls in flight one pool spends about a millisecond per call there.
    Several small pools divide that work by their number, with the same total connections. A call
    goes to the first pool with fewer than ``SHARD_FILL`` calls holding or awaiting a connection
    (else to the least busy), so light traffic keeps reusing the first pool's few connections (kept
    alive, one TLS handshake each) and only concurrency spreads over the others.
    """

    def __init__(self, *, limits: httpx.Limits, shards: int = POOL_SHARDS, fill: int = SHARD_FILL) -> None:
        total = limits.max_connections or 1000
        shards = max(1, min(shards, total))  # never more connections than the limit
        per_shard = max(1, math.ceil(total / shards))
        keepalive = limits.max_keepalive_connections
        shard_limits = httpx.Limits(
            max_connections=per_shard,
            max_keepalive_connections=per_shard if keepalive is None else max(1, math.ceil(keepalive / shards)),
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._limits = shard_limits
        self._pools: list[httpx.AsyncHTTPTransport | None] = [None] * shards
        self._busy = [0] * shards
        self._fill = max(1, min(fill, per_shard))  # a pool never queues while another has room

    def _pick(self) -> int:
        busy = self._busy
        fill = self._fill
        for index, count in enumerate(busy):
            if count < fill:
                return index
        return busy.index(min(busy))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = self._pick()
        pool = self._pools[index]
        if pool is None:  # built on first use: light traffic never pays for the rest
            pool = self._pools[index] = httpx.AsyncHTTPTransport(
                verify=_ssl_context(), limits=self._limits, trust_env=False
            )
        self._busy[index] += 1
        try:
            response = await pool.handle_async_request(request)
        except BaseException:
            self._busy[index] -= 1
            raise
        # The call holds its connection until its body is read or closed: count it until then.
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _Held(response.stream, self._busy, index)
        return response

    async def aclose(self) -> None:
        for pool in self._pools:
            if pool is not None:
                await pool.aclose()


class _Held(httpx.AsyncByteStream):
    """A response body that uncounts its call from its pool once, when closed."""

    __slots__ = ("_busy", "_index", "_stream")

    def __init__(self, stream: httpx.AsyncByteStream, busy: list[int], index: int) -> None:
        self._stream = stream
        self._busy = busy
        self._index = index

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._stream.__aiter__()

    async def aclose(self) -> None:
        if self._index >= 0:
            self._busy[self._index] -= 1
            self._index = -1
        await self._stream.aclose()


class UpstreamTransport(httpx.AsyncBaseTransport):
    """The transport for the event loop a call runs on, chosen per call and built on first use.

    asyncio: ``AiohttpTransport`` (about a third of httpx2's CPU per call; aiohttp is asyncio
    only), one per event loop: a client kept across ``asyncio.run`` calls gets a fresh session on
    the new loop. trio (any loop but asyncio's): ``ShardedTransport``. ``use_aiohttp=False``
    keeps httpx2's transport on asyncio too (for comparisons).
    """

    def __init__(self, *, limits: httpx.Limits, use_aiohttp: bool = True) -> None:
        self._limits = limits
        self._use_aiohttp = use_aiohttp
        self._aiohttp: AiohttpTransport | None = None
        self._httpx: ShardedTransport | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._use_aiohttp:
            loop = asyncio.events._get_running_loop()  # None under trio: no asyncio loop in this thread
            if loop is not None:
                transport = self._aiohttp
                if transport is None or transport.loop is not loop:
                    transport = self._new_aiohttp(transport)
                return await transport.handle_async_request(request)
        pool = self._httpx
        if pool is None:
            pool = self._httpx = ShardedTransport(limits=self._limits)
        return await pool.handle_async_request(request)

    def _new_aiohttp(self, old: AiohttpTransport | None) -> AiohttpTransport:
        from llm_rpc.providers._aiohttp import AiohttpTransport

        if old is not None:
            old.abandon()
        self._aiohttp = AiohttpTransport(limits=self._limits, ssl_context=_ssl_context())
        return self._aiohttp

    async def aclose(self) -> None:
        aio, self._aiohttp = self._aiohttp, None
        pool, self._httpx = self._httpx, None
        if aio is not None:
            if asyncio.events._get_running_loop() is aio.loop:
                await aio.aclose()
            else:
                aio.abandon()
        if pool is not None:
            await pool.aclose()


class UpstreamClient(httpx.AsyncClient):
    """httpx's ``AsyncClient`` with one shortcut for the providers' hot path: ``post_bytes``.

    ``AsyncClient.post`` spends about a third of a call's CPU above the transport (merging headers
    into new ``Headers``, the auth and redirect loops, wrapping the response stream), none of which a
    plain POST to an API needs. ``post_bytes`` builds the same ``Request`` from the client's own
    headers and timeout, hands it to the transport and reads the whole body; whenever the client's
    extra machinery could matter (a cookie, an auth flow, event hooks, a header of the call that
    replaces one of the client's), it takes ``post`` instead, so the result is the same either way.
    """

    async def post_bytes(self, url: httpx.URL, content: bytes, headers: Mapping[str, str]) -> httpx.Response:
        """POST ``content`` to ``url`` (absolute, e.g. from ``build_request``), the response read whole."""
        defaults = self.headers
        if self.cookies or self.auth is not None or self._has_hooks or any(name in defaults for name in headers):
            return await self.post(url, content=content, headers=headers)
        raw = defaults.raw
        for name, value in headers.items():
            raw.append((name.encode("ascii"), value.encode("ascii")))
        request = httpx.Request(
            "POST", url, headers=raw, content=content, extensions={"timeout": self.timeout.as_dict()}
        )
        response = await self._transport_for_url(url).handle_async_request(request)
        response.request = request
        response.default_encoding = self._default_encoding
        try:
            await response.aread()
        finally:
            await response.aclose()
        if "set-cookie" in response.headers:
            self.cookies.extract_cookies(response)
        return response

    @property
    def _has_hooks(self) -> bool:
        hooks = self.event_hooks
        return bool(hooks["request"] or hooks["response"])


def new_client(
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    timeout: float | None = 120.0,
    max_connections: int | None = None,
    use_aiohttp: bool = True,
    **kwargs: Any,
) -> UpstreamClient:
    """One pooled keep-alive client per backend, closed by the backend's ``aclose``; ``use_aiohttp``
    as for ``UpstreamTransport``."""
    limits = httpx.Limits(
        max_connections=max_connections or 1000,
        max_keepalive_connections=max_connections or 1000,
        keepalive_expiry=30.0,
    )
    kwargs.setdefault("transport", UpstreamTransport(limits=limits, use_aiohttp=use_aiohttp))
    return UpstreamClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout or 10.0, 10.0)),
        limits=limits,
        trust_env=False,
        **kwargs,
    )
