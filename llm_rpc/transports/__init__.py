"""Transports: bytes ↔ frames ↔ the protocol layer's Session. They know nothing of methods."""

from llm_rpc.transports._connection import ByteChannel, Lifecycle, serve_connection

__all__ = ["ByteChannel", "Lifecycle", "serve_connection"]
