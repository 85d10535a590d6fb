"""The HTTP client every provider uses: httpx's API, from the httpx2 distribution.

httpx 0.28 over httpcore 1.0.9 collapses under concurrency: its pool does work quadratic in its
connections, so against a local upstream it gives 16-49 req/s at 256 calls in flight and 200 ms
(ideal 1,280) and 84-130 req/s at 64 in flight with no latency. httpx2 keeps httpx's API, runs on
asyncio and trio, and gives 98-99% of the ideal at 64 in flight and 200 ms on both (the issue 3
target is 85%), about 800 req/s at 256. The pool is wide and all kept alive: httpx's default
Limits (100 connections, 20 kept alive) cap 256 in flight at 200 ms near 480 req/s.
contracts/decisions.md has the numbers (``bench/http_clients.py``).
Imported only when a real provider is built: the mock path never pays for it.
"""

from __future__ import annotations

from typing import Any

import httpx2 as httpx

__all__ = ["httpx", "new_client"]


def new_client(
    *,
    base_url: str,
    headers: dict[str, str] | None = None,
    timeout: float | None = 120.0,
    max_connections: int | None = None,
    **kwargs: Any,
) -> httpx.AsyncClient:
    """One pooled keep-alive client per backend, closed by the backend's ``aclose``."""
    limits = httpx.Limits(
        max_connections=max_connections or 1000,
        max_keepalive_connections=max_connections or 1000,
        keepalive_expiry=30.0,
    )
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout or 10.0, 10.0)),
        limits=limits,
        trust_env=False,
        **kwargs,
    )
