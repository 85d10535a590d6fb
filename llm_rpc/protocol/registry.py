"""The method table: for each method its name, params Struct, result type and handler.

One explicit instance (never a module global) is the single source of truth: dispatch decodes
params with the Decoder built here once per method, and ``rpc.discover`` / contracts/openrpc.json
are generated from the same entries.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from llm_rpc.protocol.dispatch import Session

__all__ = ["NOT_INLINE", "Method", "MethodTable", "RequestContext"]


class RequestContext:
    """What a handler may know of the request it serves: its id, its connection, a way to notify,
    and when it arrived (``time.perf_counter()`` when the transport read its bytes; for
    ``overhead_us``)."""

    __slots__ = ("arrived", "request_id", "session")

    def __init__(self, session: Session, request_id: Any, arrived: float | None = None) -> None:
        self.session = session
        self.request_id = request_id
        self.arrived = time.perf_counter() if arrived is None else arrived

    def notify(self, method: str, params: Any) -> None:
        """Send a notification to this request's client (e.g. stream deltas), in order, never interleaved."""
        self.session.send_notification(method, params)

    @property
    def peer(self) -> str:
        return self.session.peer


Handler = Callable[[Any, RequestContext], Awaitable[Any]]
InlineHandler = Callable[[Any, RequestContext], Any]


class _NotInline:
    """Returned by a ``try_inline`` hook that cannot answer without waiting."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NOT_INLINE"


NOT_INLINE = _NotInline()


@dataclass(slots=True)
class Method:
    """One registered method."""

    name: str
    params_type: Any
    result_type: Any
    handler: Handler | InlineHandler
    inline: bool
    summary: str
    description: str
    errors: tuple[str, ...]
    notification: bool
    try_inline: InlineHandler | None = None
    decoder: msgspec.json.Decoder[Any] | None = field(default=None, repr=False)
    by_name: bool = False

    def __post_init__(self) -> None:
        if self.params_type is not None:
            self.decoder = msgspec.json.Decoder(self.params_type)
        self.by_name = isinstance(self.params_type, type) and issubclass(self.params_type, msgspec.Struct)


class MethodTable:
    """Name → Method. Handlers are ``async def`` unless registered ``inline`` (then plain ``def``
    that must not block: they run inside the connection's read loop, saving a task per call).

    ``try_inline`` (optional, with an async handler) may answer a call on the spot when it can do
    so without waiting, returning ``NOT_INLINE`` otherwise; the async handler then runs in a task.
    A result that needs no I/O (the mock with no latency) then costs no task at all.

    ``params`` is normally a Struct (by-name params; a positional array is mapped onto its fields
    in order), but may be any msgspec type, e.g. ``list[int]`` for a variadic method."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(
        self,
        name: str,
        handler: Handler | InlineHandler,
        *,
        params: Any,
        result: Any,
        summary: str = "",
        description: str = "",
        inline: bool = False,
        errors: tuple[str, ...] = (),
        notification: bool = False,
        try_inline: InlineHandler | None = None,
    ) -> None:
        if name in self._methods:
            raise ValueError(f"method {name!r} registered twice")
        self._methods[name] = Method(
            name=name,
            params_type=params,
            result_type=result,
            handler=handler,
            inline=inline,
            summary=summary,
            description=description or (handler.__doc__ or "").strip(),
            errors=errors,
            notification=notification,
            try_inline=try_inline,
        )

    def get(self, name: str) -> Method | None:
        return self._methods.get(name)

    def __iter__(self) -> Any:
        return iter(self._methods.values())

    def __contains__(self, name: object) -> bool:
        return name in self._methods

    def names(self) -> list[str]:
        return sorted(self._methods)
