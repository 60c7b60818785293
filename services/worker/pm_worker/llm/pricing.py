"""What model calls cost: a per-model price table and the token usage that adds up to a cost."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

PER_MILLION = 1_000_000
# A model id with a date suffix: claude-haiku-4-5-20251001, or claude-opus-4-5@20251101 on Vertex.
_SNAPSHOT = re.compile(r"(.+?)[-@]\d{8}")


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per million tokens: fresh input, output, cache writes and cache reads."""

    input: float
    output: float
    cache_write: float
    cache_read: float

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> ModelPrice:
        """A price from {"input", "output", "cache_write", "cache_read"}; missing cache prices
        follow Anthropic's rule of thumb (writes 1.25x input, reads 0.1x input)."""
        input_price = float(value["input"])
        return cls(
            input=input_price,
            output=float(value["output"]),
            cache_write=float(value.get("cache_write", input_price * 1.25)),
            cache_read=float(value.get("cache_read", input_price * 0.1)),
        )


# List prices (USD per million tokens; cache writes at the 5-minute TTL) as published by Anthropic
# when this table was written. They are defaults to be checked against the current price list, not
# a source of truth: deployments pass their own mapping to PriceTable when prices change. Haiku 5.5
# is listed at its price for prompts up to 100k tokens; its dearer long-prompt tier is not modelled.
DEFAULT_PRICES: Mapping[str, ModelPrice] = {
    "claude-opus-5-5": ModelPrice(input=4.0, output=20.0, cache_write=5.0, cache_read=0.20),
    "claude-opus-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-8": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-7": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-6": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-opus-4-5": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.50),
    "claude-sonnet-5-5": ModelPrice(input=2.0, output=10.0, cache_write=2.50, cache_read=0.10),
    "claude-sonnet-5": ModelPrice(input=2.0, output=10.0, cache_write=2.50, cache_read=0.20),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-sonnet-4-5": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.30),
    "claude-haiku-5-5": ModelPrice(input=0.10, output=0.50, cache_write=0.125, cache_read=0.01),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.10),
}


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens and their cost, summed over any number of model calls.

    `input_tokens` are the input tokens neither written to nor read from the prompt cache (the
    Anthropic convention); a call's whole prompt is the sum of the three input figures.
    `unpriced_models` names the models the price table did not know: their tokens are counted
    but cost nothing here, so a non-empty set means `cost_usd` is a lower bound.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    calls: int = 0
    unpriced_models: frozenset[str] = field(default_factory=frozenset)

    @property
    def prompt_tokens(self) -> int:
        """Every input token: fresh, written to the cache and read from it."""
        return self.input_tokens + self.cache_creation_input_tokens + self.cache_read_input_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
            calls=self.calls + other.calls,
            unpriced_models=self.unpriced_models | other.unpriced_models,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for traces and step outputs)."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_creation_input_tokens": self.cache_creation_input_tokens,
            "cache_read_input_tokens": self.cache_read_input_tokens,
            "cost_usd": round(self.cost_usd, 6),
            "calls": self.calls,
            "unpriced_models": sorted(self.unpriced_models),
        }


class PriceTable:
    """Prices by model id. A dated snapshot (claude-haiku-4-5-20251001) is priced as its model,
    so the table need not list every snapshot; any other unknown id is unpriced rather than
    guessed from a similar name."""

    def __init__(self, prices: Mapping[str, ModelPrice | Mapping[str, Any]] | None = None) -> None:
        source = DEFAULT_PRICES if prices is None else prices
        self._prices = {
            model: price if isinstance(price, ModelPrice) else ModelPrice.from_mapping(price)
            for model, price in source.items()
        }

    def price(self, model: str) -> ModelPrice | None:
        """The price of `model`, or None when the table does not know it."""
        snapshot = _SNAPSHOT.fullmatch(model)
        return self._prices.get(model) or (self._prices.get(snapshot.group(1)) if snapshot else None)

    def priced(self, model: str, usage: Usage) -> Usage:
        """`usage` of one model with its cost filled in (or the model marked unpriced)."""
        price = self.price(model)
        if price is None:
            return replace(usage, cost_usd=0.0, unpriced_models=usage.unpriced_models | {model})
        cost = (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_creation_input_tokens * price.cache_write
            + usage.cache_read_input_tokens * price.cache_read
        ) / PER_MILLION
        return replace(usage, cost_usd=cost)
