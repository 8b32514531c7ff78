"""OpenAI service tiers, priced apart: by PriceBook (the stored row's price), by the app side's
list price (`op.cost_usd`) and by repricing's linear prices, all alike and equal to
genai-prices' calc_price with the tier as its price context. Expected costs are worked out by
hand from gpt-5's per-million-token prices (genai-prices 0.2.5, from 2026-10-12): standard
(default, scale) $1.25 input, $0.125 cached input, $10 output; flex half of them; priority
twice."""

from __future__ import annotations

import random
import warnings
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price, data_snapshot

from exporter.ingest.pricing import Price, PriceBook
from exporter.usage.linear_prices import linear_price
from nexus_otel._pricing import list_price

TS = datetime(2026, 11, 1, 12, tzinfo=UTC)
USAGE = (1_000_000, 100_000, 200_000, 0, 0)  # input (200,000 cached), output


def book_cost(book: PriceBook, provider: str, model: str, tier: str | None, *usage: int) -> Price:
    inp, out, read, write, write_1h = usage
    return book.price(
        provider=provider, model=model, response_model=None, timestamp=TS, input_tokens=inp,
        output_tokens=out, cache_read_tokens=read, cache_write_tokens=write,
        cache_write_1h_tokens=write_1h, service_tier=tier,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("tier", "expected"),
    [
        # 800,000 * 1.25 + 200,000 * 0.125 + 100,000 * 10 = 2,025,000 per million
        (None, Decimal("2.025")),
        ("default", Decimal("2.025")),
        ("scale", Decimal("2.025")),  # no price of its own: the standard prices
        ("flex", Decimal("1.0125")),  # half
        ("priority", Decimal("4.05")),  # twice
        ("no-such-tier", Decimal("2.025")),
    ],
)
def test_the_tier_that_served_a_call_prices_it(tier: str | None, expected: Decimal) -> None:
    price = book_cost(PriceBook(), "openai", "gpt-5", tier, *USAGE)
    assert price == Price(expected, "genai-prices")
    assert list_price("openai", "gpt-5", None, TS, *USAGE, tier) == expected
    context = {"service_tier": tier} if tier else None
    usage = Usage(input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=200_000)
    library = calc_price(usage, "gpt-5", provider_id="openai", genai_request_timestamp=TS,
                         price_context=context)  # fmt: skip
    assert library.total_price == expected


def test_before_tier_prices_existed_every_tier_costs_the_standard_price() -> None:
    before = datetime(2026, 10, 11, 12, tzinfo=UTC)
    book = PriceBook()
    for tier in ("flex", "priority"):
        price = book.price(
            provider="openai", model="gpt-5", response_model=None, timestamp=before,
            input_tokens=1_000_000, output_tokens=100_000, cache_read_tokens=200_000,
            cache_write_tokens=0, service_tier=tier,
        )  # fmt: skip
        assert price.cost_usd == Decimal("2.025")


def test_every_bundled_model_prices_tiers_as_calc_price() -> None:
    book, rng, checked = PriceBook(), random.Random(23), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in data_snapshot.get_snapshot().providers:
            for model in provider.models:
                if not any("service_tier" in v.when for v in model.price_variants or ()):
                    continue
                tier = rng.choice(["flex", "priority", "default", "fast"])
                inp = rng.randint(0, 400_000)
                usage = (inp, rng.randint(0, 9_000), rng.randint(0, inp // 2), 0, 0)
                price = book_cost(book, provider.id, model.id, tier, *usage)
                counts = Usage(input_tokens=usage[0], output_tokens=usage[1],
                               cache_read_tokens=usage[2], cache_write_tokens=0)  # fmt: skip
                try:
                    expected = calc_price(
                        counts, model.id, provider_id=provider.id, genai_request_timestamp=TS,
                        price_context={"service_tier": tier},
                    ).total_price  # fmt: skip
                except (LookupError, ValueError):
                    assert price == Price(None, None), (provider.id, model.id)
                    continue
                assert price == Price(expected, "genai-prices"), (provider.id, model.id, tier)
                checked += 1
    assert checked > 30


def test_an_override_prices_every_tier_alike(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("models:\n  - model: gpt-5\n    input_mtok: 1\n    output_mtok: 2\n")
    book = PriceBook(path)
    # 1,000,000 * 1 (cache reads at the input price) + 100,000 * 2 = 1,200,000 per million
    for tier in (None, "flex", "priority"):
        assert book_cost(book, "openai", "gpt-5", tier, *USAGE).cost_usd == Decimal("1.2")


@pytest.mark.parametrize(
    ("tier", "input_mtok"),
    [(None, Decimal("1.25")), ("flex", Decimal("0.625")), ("priority", Decimal("2.5"))],
)
def test_linear_prices_for_repricing_are_the_tiers(tier: str | None, input_mtok: Decimal) -> None:
    pieces = linear_price(PriceBook(), "openai", "gpt-5", None, TS, tier)
    assert pieces is not None
    assert [p.input_mtok for p in pieces] == [input_mtok]
