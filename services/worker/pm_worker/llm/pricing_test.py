"""Prices and usage: what a step's model calls cost."""

from __future__ import annotations

import pytest

from pm_worker.llm.pricing import ModelPrice, PriceTable, Usage


def test_cost_counts_each_kind_of_token_at_its_own_price() -> None:
    table = PriceTable({"m": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30)})
    usage = Usage(
        input_tokens=200_000,
        output_tokens=10_000,
        cache_creation_input_tokens=50_000,
        cache_read_input_tokens=1_000_000,
        calls=3,
    )

    priced = table.priced("m", usage)

    assert priced.cost_usd == pytest.approx(0.6 + 0.15 + 0.1875 + 0.30)
    assert priced.unpriced_models == frozenset()
    assert priced.prompt_tokens == 1_250_000


def test_a_dated_snapshot_is_priced_as_its_model_but_other_names_are_not_guessed() -> None:
    table = PriceTable()

    assert table.price("claude-haiku-4-5-20251001") == table.price("claude-haiku-4-5")
    assert table.price("claude-opus-4-5@20251101") == table.price("claude-opus-4-5")
    assert table.price("claude-sonnet-5-5") != table.price("claude-sonnet-5")
    assert table.price("claude-sonnet-5-7") is None


def test_an_unknown_model_is_counted_but_marked_unpriced() -> None:
    priced = PriceTable().priced("llama-3-70b", Usage(input_tokens=1_000, output_tokens=500, calls=1))

    assert priced.cost_usd == 0.0
    assert priced.unpriced_models == {"llama-3-70b"}
    assert (priced.input_tokens, priced.output_tokens) == (1_000, 500)


def test_a_table_from_plain_mappings_derives_missing_cache_prices() -> None:
    table = PriceTable({"local": {"input": 2, "output": 6}})

    assert table.price("local") == ModelPrice(input=2.0, output=6.0, cache_write=2.5, cache_read=0.2)
    assert table.price("claude-haiku-4-5") is None


def test_usage_adds_up_tokens_cost_and_unpriced_models() -> None:
    first = Usage(input_tokens=10, output_tokens=1, cache_creation_input_tokens=100, cost_usd=0.5, calls=1)
    second = Usage(
        input_tokens=5, output_tokens=2, cache_read_input_tokens=100, calls=1, unpriced_models=frozenset({"x"})
    )

    total = first + second

    assert total == Usage(
        input_tokens=15,
        output_tokens=3,
        cache_creation_input_tokens=100,
        cache_read_input_tokens=100,
        cost_usd=0.5,
        calls=2,
        unpriced_models=frozenset({"x"}),
    )
    assert total.as_dict()["unpriced_models"] == ["x"]
