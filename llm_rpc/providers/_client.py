"""The HTTP client every provider uses: httpx's API, from the httpx2 distribution.

httpx 0.28 over httpcore 1.0.9 tops out near 60 req/s at 64 calls in flight against a 200 ms
upstream (its pool assignment is quadratic in connections); httpx2 keeps httpx's API, runs on
asyncio and trio, and reaches ~90% of the ideal there. contracts/decisions.md has the numbers.
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
