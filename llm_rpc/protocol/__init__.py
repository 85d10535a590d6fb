"""JSON-RPC 2.0: framing, envelope and dispatch. Deliberately not LLM-aware.

Method names are strings; params are decoded into whatever Struct the MethodTable names; domain
errors reach the wire only through the ``error_mapper`` the methods layer supplies.
"""

from llm_rpc.protocol.dispatch import Dispatcher, Session
from llm_rpc.protocol.errors import RpcError
from llm_rpc.protocol.framing import FrameError, Framer, LspFramer, NdjsonFramer, detect_framer
from llm_rpc.protocol.registry import MethodTable, RequestContext

__all__ = [
    "Dispatcher",
    "FrameError",
    "Framer",
    "LspFramer",
    "MethodTable",
    "NdjsonFramer",
    "RequestContext",
    "RpcError",
    "Session",
    "detect_framer",
]
