"""Prices: the shipped dated table, ``[[models]]`` overrides, lookup by the id sent then the id reported,
and an unpriced model giving ``cost_usd: null`` with one warning, never a crash."""

from __future__ import annotations

import logging

import pytest

from llm_rpc.config import BackendConfig, Config, ModelPrice
from llm_rpc.core.pricing import Price, PriceTable, blended_per_1k, shipped_as_of, shipped_prices
from llm_rpc.core.router import Router
from llm_rpc.types import Usage
from tests.core._scripted import Scripted

USAGE = Usage(prompt_tokens=1000, completion_tokens=500, total_tokens=1500)


def test_the_shipped_table_is_dated_and_every_row_names_its_source() -> None:
    assert shipped_as_of() == "2026-11-28"
    prices = shipped_prices()
    assert prices["gpt-4o"] == Price(2.50, 10.00, prices["gpt-4o"].source)
    assert prices["claude-haiku-5-5"].input == 0.10
    assert all(p.source.startswith("shipped (") and "read " in p.source for p in prices.values())


def test_a_config_price_replaces_the_shipped_one() -> None:
    table = PriceTable([ModelPrice(name="gpt-4o", input=1.0, output=2.0)])
    assert table.get("gpt-4o") == Price(1.0, 2.0)
    assert table.cost_usd(USAGE, "gpt-4o", "gpt-4o", provider="openai") == pytest.approx((1000 + 1000) / 1e6)


def test_the_id_sent_is_looked_up_before_the_id_reported() -> None:
    table = PriceTable([ModelPrice(name="snapshot-1", input=100.0, output=100.0)])
    # sent as gpt-4o, reported as a dated snapshot that has no row: the sent id prices it
    assert table.cost_usd(USAGE, "gpt-4o", "gpt-4o-2024-08-06", provider="openai") == pytest.approx(0.0075)
    # sent as an alias nobody prices, reported as a priced id
    assert table.cost_usd(USAGE, "my-alias", "snapshot-1", provider="openai") == pytest.approx(0.15)


def test_an_unpriced_model_costs_null_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable()
    with caplog.at_level(logging.WARNING, logger="llm_rpc.pricing"):
        assert table.cost_usd(USAGE, "nobody-prices-this", None, provider="openai") is None
        assert table.cost_usd(USAGE, "nobody-prices-this", None, provider="openai") is None
    assert len([r for r in caplog.records if "nobody-prices-this" in r.getMessage()]) == 1


def test_the_mock_is_free_and_a_local_model_is_free_unless_the_config_prices_it() -> None:
    table = PriceTable([ModelPrice(name="qwen-local", input=0.5, output=0.5)])
    assert table.cost_usd(USAGE, "gpt-4o", None, provider="mock") == 0.0
    assert table.cost_usd(USAGE, "gpt-4o", None, provider="ollama", local=True) == 0.0  # shipped rows not applied
    assert table.cost_usd(USAGE, "qwen-local", None, provider="ollama", local=True) == pytest.approx(7.5e-4)


def test_blended_price_per_1k_weights_input_by_the_ratio() -> None:
    assert blended_per_1k(Price(2.5, 10.0), 3.0) == pytest.approx(0.004375)
    assert blended_per_1k(Price(2.5, 10.0), 1.0) == pytest.approx(0.00625)


@pytest.mark.anyio
async def test_router_results_carry_cost_from_the_shipped_table_and_null_when_unpriced() -> None:
    config = Config(
        backends=[BackendConfig(provider="ollama", name="a", models=["gpt-4o", "unpriced-model"])],
    )
    router = Router(config, providers={"a": Scripted("a", usage=USAGE)})
    priced = await router.execute(prompt="x", model="gpt-4o")
    assert priced.cost_usd == pytest.approx((1000 * 2.5 + 500 * 10.0) / 1e6)
    unpriced = await router.execute(prompt="x", model="unpriced-model")
    assert unpriced.cost_usd is None
