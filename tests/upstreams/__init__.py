"""Loopback HTTP servers that speak providers' real wire formats, with faults on command."""

from tests.upstreams._server import Reply, Upstream, UpstreamRequest

__all__ = ["Reply", "Upstream", "UpstreamRequest"]
