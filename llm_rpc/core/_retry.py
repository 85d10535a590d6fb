"""Retry rules: which errors are worth another attempt, how long to wait, and which error a failed
call answers with (contracts/decisions.md #1).

The deadline itself is one ``CancelScope`` in the router; here only the pure parts live, so that
they can be tested (and replayed) without a clock.
"""

from __future__ import annotations

import random
from typing import Any

from llm_rpc import errors

__all__ = ["Attempt", "backoff_delay", "final_error"]

_MAX_DOUBLINGS = 60  # 2.0 ** 1024 overflows; no sane delay needs more than this


def backoff_delay(n: int, base: float, cap: float, rng: random.Random) -> float:
    """The ``n``-th backoff (1, 2, ...): uniform between ``base`` and ``min(cap, base * 2**n)``.

    Full jitter spreads the retries of many callers hit by one fault; the lower bound ``base`` keeps a
    retry from coming sooner than the operator asked (``retry_base_delay``).
    """
    high = min(cap, base * 2.0 ** min(n, _MAX_DOUBLINGS))
    if high <= base:
        return high
    return rng.uniform(base, high)


class Attempt:
    """One failed upstream attempt, as ``data.attempts`` lists it."""

    __slots__ = ("backend", "elapsed_ms", "error", "type")

    def __init__(self, backend: str, error: errors.LLMError, elapsed_ms: float) -> None:
        self.backend = backend
        self.error = error
        self.type = error.type
        self.elapsed_ms = elapsed_ms

    def to_data(self) -> dict[str, Any]:
        error = self.error
        status = error.data.get("status")
        retry_after = error.data.get("retry_after")
        return {
            "backend": self.backend,
            "type": self.type,
            "status": status,
            "elapsed_ms": round(self.elapsed_ms, 3),
            "retry_after": retry_after,
        }


def final_error(attempts: list[Attempt]) -> errors.LLMError:
    """The error a call answers when it stops retrying: one attempt → its own error; more → ``backend_error``."""
    if len(attempts) == 1:
        return attempts[0].error
    last = attempts[-1]
    return errors.BackendError(
        f"all {len(attempts)} attempts failed (last: {last.type} from {last.backend})",
        attempts=[a.to_data() for a in attempts],
        last_type=last.type,
    )
