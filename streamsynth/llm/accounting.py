"""Tokens and money per stage and model, from the usage the servers report.

Prices are per million tokens (``llm.prices`` in the config), looked up by the
requested model name; a model without a price costs 0 and is counted all the same.
Cache hits are counted as hits and never billed: the answer was paid for once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from streamsynth.llm.types import Usage

if TYPE_CHECKING:  # config imports this package: no runtime import back
    from streamsynth.config import ModelPrice


@dataclass(slots=True)
class UsageTotals:
    requests: int = 0
    errors: int = 0
    cache_hits: int = 0
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "cache_hits": self.cache_hits,
            "attempts": self.attempts,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    def add(self, other: UsageTotals) -> None:
        self.requests += other.requests
        self.errors += other.errors
        self.cache_hits += other.cache_hits
        self.attempts += other.attempts
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cost_usd += other.cost_usd


@dataclass(frozen=True)
class AccountingSnapshot:
    """A copy of the counters: ``by_key[(stage, model)]`` and the ``total``."""

    by_key: dict[tuple[str, str], UsageTotals]
    total: UsageTotals = field(default_factory=UsageTotals)

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total.as_dict(),
            "by_stage_model": [
                {"stage": stage, "model": model, **totals.as_dict()}
                for (stage, model), totals in sorted(self.by_key.items())
            ],
        }


class Accounting:
    def __init__(self, prices: Mapping[str, ModelPrice] | None = None) -> None:
        self._prices = dict(prices or {})
        self._totals: dict[tuple[str, str], UsageTotals] = {}

    def cost_usd(self, model: str, usage: Usage) -> float:
        price = self._prices.get(model)
        if price is None:
            return 0.0
        return (
            usage.prompt_tokens * price.input_per_million
            + usage.completion_tokens * price.output_per_million
        ) / 1_000_000

    def _entry(self, stage: str, model: str) -> UsageTotals:
        key = (stage, model)
        entry = self._totals.get(key)
        if entry is None:
            entry = self._totals[key] = UsageTotals()
        return entry

    def record_success(self, stage: str, model: str, usage: Usage, attempts: int) -> float:
        """Count one answered request; returns its cost in USD."""
        usd = self.cost_usd(model, usage)
        entry = self._entry(stage, model)
        entry.requests += 1
        entry.attempts += attempts
        entry.prompt_tokens += usage.prompt_tokens
        entry.completion_tokens += usage.completion_tokens
        entry.cost_usd += usd
        return usd

    def record_error(self, stage: str, model: str, attempts: int) -> None:
        entry = self._entry(stage, model)
        entry.requests += 1
        entry.errors += 1
        entry.attempts += attempts

    def record_cache_hit(self, stage: str, model: str) -> None:
        entry = self._entry(stage, model)
        entry.requests += 1
        entry.cache_hits += 1

    def snapshot(self) -> AccountingSnapshot:
        by_key: dict[tuple[str, str], UsageTotals] = {}
        total = UsageTotals()
        for key, entry in self._totals.items():
            copy = UsageTotals()
            copy.add(entry)
            by_key[key] = copy
            total.add(entry)
        return AccountingSnapshot(by_key, total)
