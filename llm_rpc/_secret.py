"""Secrets as a type: an API key never prints, and every known key is scrubbed from text on the way out."""

from __future__ import annotations

import threading
from typing import Final

__all__ = ["Secret", "redact"]

_MASK: Final = "***"
_known: set[str] = set()
_lock = threading.Lock()


class Secret:
    """Holds a secret value. ``repr``/``str`` are masked; ``reveal()`` is for building a header only."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        # Short values would mask ordinary words; real keys are far longer.
        if len(value) >= 8:
            with _lock:
                _known.add(value)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str) -> str:
    """Replace every known secret value in ``text`` with ``***``."""
    if not _known:
        return text
    for value in _known:
        if value in text:
            text = text.replace(value, _MASK)
    return text
