"""Per-backend limits: calls in flight (``max_concurrent``) and requests or tokens per minute.

Both admit strictly in arrival order, and both can tell, before anyone waits, whether a request fits
now; the minute windows can also tell exactly how long it would wait. That lets the router prefer a
backend that is free, and refuse at once (``rate_limited``, ``scope: "local"``) a request whose wait
would outlast its deadline instead of queueing it only to time out.

The minute limits are sliding windows: at most ``limit`` units in any 60-second window, a unit coming
back 60 s after the request that spent it. That is stricter than a bucket refilled continuously, so it
also keeps within the limits of an upstream that counts per fixed minute or per continuous bucket.
"""

from __future__ import annotations

from collections import deque

import anyio

from llm_rpc.types import Message

__all__ = [
    "DEFAULT_COMPLETION_TOKENS",
    "PER_MESSAGE_TOKENS",
    "WINDOW_SECONDS",
    "MinuteWindow",
    "Slots",
    "estimate_tokens",
]

WINDOW_SECONDS = 60.0
#: Completion tokens assumed for the estimate when a call sets no ``max_tokens`` (corrected after the call).
DEFAULT_COMPLETION_TOKENS = 1024
#: Tokens a chat format adds per message (role markers), as OpenAI's cookbook counts them.
PER_MESSAGE_TOKENS = 4


def estimate_tokens(messages: list[Message], max_tokens: int | None) -> int:
    """Tokens a call may spend, before it is made: prompt chars / 4 + 4 per message + ``max_tokens``."""
    chars = 0
    for m in messages:
        content = m.content
        if isinstance(content, str):
            chars += len(content)
        elif content is not None:
            for part in content:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    chars += len(text)
    completion = max_tokens if max_tokens is not None else DEFAULT_COMPLETION_TOKENS
    return chars // 4 + PER_MESSAGE_TOKENS * len(messages) + completion


class Slots:
    """``max_concurrent`` as a FIFO semaphore: a released slot goes straight to the oldest waiter.

    Handing the slot over (rather than freeing it for whoever asks next) is what keeps the order
    FIFO: a newcomer can never take a slot that a waiter was promised.
    """

    __slots__ = ("_waiters", "limit", "used")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[anyio.Event] = deque()

    def free(self) -> bool:
        """A slot can be had without waiting."""
        return self.used < self.limit and not self._waiters

    def try_acquire(self) -> bool:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot in arrival order (the caller bounds the wait with its deadline)."""
        if self.try_acquire():
            return
        event = anyio.Event()
        self._waiters.append(event)
        try:
            await event.wait()
        except BaseException:
            if event.is_set():
                # The slot was handed over just as we were cancelled: pass it on.
                self.release()
            else:
                self._waiters.remove(event)
            raise

    def release(self) -> None:
        if self._waiters:
            self._waiters.popleft().set()
        else:
            self.used -= 1

    @property
    def waiting(self) -> int:
        return len(self._waiters)


class MinuteWindow:
    """At most ``limit`` units (requests or tokens) in any ``window``-second window, admitted FIFO.

    Each admission is an entry ``[time, amount]``; entries are kept in time order and a request that
    must wait reserves a future time, after every earlier reservation. So admission is FIFO, a wait is
    known the moment it is asked for, and nothing needs waking up: the waiter simply sleeps until its
    time. An entry's amount can be corrected later (tokens: the estimate becomes the real usage).
    """

    __slots__ = ("_entries", "limit", "used", "window")

    def __init__(self, limit: int, window: float = WINDOW_SECONDS) -> None:
        self.limit = limit
        self.window = window
        self.used = 0  # the sum of amounts in _entries (past and reserved)
        self._entries: deque[list[float]] = deque()

    def _prune(self, now: float) -> None:
        cutoff = now - self.window
        entries = self._entries
        while entries and entries[0][0] <= cutoff:
            self.used -= int(entries.popleft()[1])

    def fit_time(self, amount: int, now: float) -> float:
        """The earliest time (>= now) at which ``amount`` fits, after every earlier reservation."""
        self._prune(now)
        amount = min(amount, self.limit)  # a request bigger than the limit waits for an empty window
        entries = self._entries
        at = now
        if entries and entries[-1][0] > at:
            at = entries[-1][0]
        excess = self.used + amount - self.limit
        if excess <= 0:
            return at
        for when, spent in entries:
            excess -= int(spent)
            if excess <= 0:
                end = when + self.window
                return end if end > at else at
        return at  # unreachable: amount <= limit

    def fits_now(self, amount: int, now: float) -> bool:
        """``amount`` would be admitted at ``now`` (the cheap form of ``fit_time(amount, now) <= now``)."""
        self._prune(now)
        entries = self._entries
        if entries and entries[-1][0] > now:
            return False  # others are already waiting: FIFO
        return self.used + min(amount, self.limit) <= self.limit

    def reserve(self, amount: int, at: float) -> list[float]:
        """Admit ``amount`` at time ``at`` (a time ``fit_time`` gave, or later); returns the entry."""
        amount = min(amount, self.limit)
        entry = [at, float(amount)]
        self._entries.append(entry)
        self.used += amount
        return entry

    def correct(self, entry: list[float], amount: int, now: float) -> None:
        """Change what an admission counts (0 cancels it), unless it has already left the window."""
        self._prune(now)
        if entry[0] > now - self.window:
            amount = min(amount, self.limit)
            self.used += amount - int(entry[1])
            entry[1] = float(amount)
