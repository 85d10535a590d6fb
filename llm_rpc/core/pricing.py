"""Prices and ``cost_usd``: the shipped, dated table (``prices.toml``) overridden by the config's ``[[models]]``.

Prices are USD per 1M tokens, input and output, as providers publish them (contracts/config.md,
Units). A model is looked up by the id it was sent as, then by the id the provider reported
(decisions.md #5): ``gpt-4o`` answered as ``gpt-4o-2024-08-06`` is priced as ``gpt-4o``.

Who pays what:

* the ``mock`` costs 0, always;
* a ``local = true`` backend costs 0 unless the config's ``[[models]]`` prices the model (the shipped
  table is about hosted APIs, not a model on this machine);
* any other backend: the price found, else ``cost_usd`` is None and one warning is logged per model
  (never an error: an unpriced call still answers).

The shipped table is read on first use, not at import: most ``llm-rpc`` commands never need it.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from llm_rpc.config import ModelPrice
from llm_rpc.types import Usage

__all__ = ["Price", "PriceTable", "blended_per_1k", "round_usd", "shipped_as_of", "shipped_prices"]

log = logging.getLogger("llm_rpc.pricing")

_PRICES_FILE = Path(__file__).with_name("prices.toml")


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M input and output tokens, and where the numbers came from."""

    input: float
    output: float
    source: str = "config"


class _Row(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: str
    provider: str
    input: float
    output: float
    source: str
    read: str


class _Table(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    as_of: str
    models: list[_Row]


@functools.cache
def _shipped() -> tuple[str, dict[str, Price]]:
    table = msgspec.toml.decode(_PRICES_FILE.read_bytes(), type=_Table)
    rows = {row.name: Price(row.input, row.output, f"shipped ({row.source}; read {row.read})") for row in table.models}
    return table.as_of, rows


def shipped_prices() -> dict[str, Price]:
    """The shipped table by model id (read once per process)."""
    return _shipped()[1]


def shipped_as_of() -> str:
    """The date of the shipped table (its ``as_of``)."""
    return _shipped()[0]


def round_usd(value: float) -> float:
    """USD to the nano-dollar, so sums of many calls do not drift in the last digits."""
    return math.floor(value * 1e9 + 0.5) / 1e9


def blended_per_1k(price: Price, ratio: float) -> float:
    """USD per 1,000 tokens of a call with ``ratio`` input tokens per output token.

    ``(ratio * input + output) / (ratio + 1)`` per 1M, divided by 1,000: with the default ratio 3,
    ``gpt-4o`` (2.50 / 10.00) costs (7.50 + 10.00) / 4 = 4.375 per 1M, 0.004375 per 1k.
    """
    return (ratio * price.input + price.output) / (ratio + 1.0) / 1000.0


class PriceTable:
    """The prices one config sees: its ``[[models]]`` first, then the shipped table."""

    __slots__ = ("_config", "_shipped", "_warned")

    def __init__(self, overrides: Iterable[ModelPrice] = (), *, shipped: bool = True) -> None:
        self._config = {m.name: Price(m.input, m.output) for m in overrides}
        self._shipped = shipped
        self._warned: set[str] = set()

    def get(self, model: str, *, shipped: bool = True) -> Price | None:
        """The price of ``model``: the config's, else (when ``shipped``) the shipped table's."""
        price = self._config.get(model)
        if price is None and shipped and self._shipped:
            price = shipped_prices().get(model)
        return price

    def lookup(self, given: str | None, reported: str | None = None, *, shipped: bool = True) -> Price | None:
        """The price by the id the model was sent as, then by the id the provider reported."""
        price = self.get(given, shipped=shipped) if given else None
        if price is None and reported and reported != given:
            price = self.get(reported, shipped=shipped)
        return price

    def option_price(self, model: str, *, provider: str, local: bool) -> Price | None:
        """What a backend of ``provider`` charges for ``model``: 0 for the mock, and for a local model the
        config has no price for; else the price found, or None."""
        if provider == "mock":
            return _FREE
        if local:
            return self.get(model, shipped=False) or _FREE
        return self.get(model)

    def cost_usd(
        self, usage: Usage, given: str | None, reported: str | None, *, provider: str, local: bool = False
    ) -> float | None:
        """USD for one call's usage; None (and one warning per model) when the model has no price."""
        if provider == "mock":
            return 0.0
        price = self.lookup(given, reported, shipped=not local)
        if price is None:
            if local:
                return 0.0
            self.warn_unpriced(given or reported or "")
            return None
        return round_usd((usage.prompt_tokens * price.input + usage.completion_tokens * price.output) / 1_000_000)

    def warn_unpriced(self, model: str) -> None:
        """Log once per model that it has no price (so ``cost_usd`` is null)."""
        if model in self._warned:
            return
        self._warned.add(model)
        log.warning(
            "model %r has no price: cost_usd is null for its calls; add a [[models]] entry (USD per 1M tokens)",
            model,
            extra={"model": model},
        )


_FREE = Price(0.0, 0.0, "free")
