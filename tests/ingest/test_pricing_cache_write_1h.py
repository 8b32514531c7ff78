"""Anthropic's 1-hour cache writes, priced apart from the other cache writes: by PriceBook (the
stored row's price), by the app side's list price (`op.cost_usd`), by an overrides entry, and by
repricing's linear prices (exporter.usage.linear_prices), all alike and equal to genai-prices.
The expected costs are worked out by hand from claude-sonnet-4-5's per-million-token prices:
input $3, output $15, cache read $0.30, 5-minute cache write $3.75, 1-hour cache write $6 (all
doubled above 200,000 input tokens)."""

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

TS = datetime(2026, 5, 1, 12, tzinfo=UTC)
SONNET = "claude-sonnet-4-5"
GENAI = "genai-prices"


def book_cost(book: PriceBook, provider: str, model: str, *usage: int) -> Price:
    inp, out, read, write, write_1h = usage
    return book.price(
        provider=provider, model=model, response_model=None, timestamp=TS, input_tokens=inp,
        output_tokens=out, cache_read_tokens=read, cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
    )  # fmt: skip


def library_cost(provider_id: str, model: str, *usage: int) -> Decimal:
    inp, out, read, write, write_1h = usage
    counts = Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
    )
    if write_1h:
        counts.cache_write_1h_tokens = write_1h
    price = calc_price(counts, model, provider_id=provider_id, genai_request_timestamp=TS)
    return price.total_price


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # 10,000 tokens written to the cache: at $3.75 as 5-minute writes, at $6 as 1-hour ones
        ((10_000, 0, 0, 10_000, 0), Decimal("0.0375")),
        ((10_000, 0, 0, 10_000, 10_000), Decimal("0.06")),
        # 5,000 uncached * 3 + 3,000 read * 0.3 + 2,000 5-minute * 3.75 + 10,000 1-hour * 6
        # + 1,000 output * 15 = 98,400 per million
        ((20_000, 1_000, 3_000, 12_000, 10_000), Decimal("0.0984")),
        # above 200,000 input: 200,000 uncached * 6 + 30,000 5-minute * 7.5 + 20,000 1-hour * 12
        # = 1,665,000 per million
        ((250_000, 0, 0, 50_000, 20_000), Decimal("1.665")),
    ],
)
def test_one_hour_writes_cost_their_own_price(
    usage: tuple[int, int, int, int, int], expected: Decimal
) -> None:
    assert book_cost(PriceBook(), "anthropic", SONNET, *usage) == Price(expected, GENAI)
    assert list_price("anthropic", SONNET, None, TS, *usage) == expected
    assert library_cost("anthropic", SONNET, *usage) == expected


def test_a_price_set_without_a_one_hour_price_prices_them_as_cache_writes() -> None:
    model = "global.anthropic.claude-sonnet-4-20250514-v1:0"  # Bedrock: $3.75 for any write
    book = PriceBook()
    for write_1h in (0, 10_000):
        usage = (10_000, 0, 0, 10_000, write_1h)
        assert book_cost(book, "aws.bedrock", model, *usage) == Price(Decimal("0.0375"), GENAI)
        assert list_price("aws.bedrock", model, None, TS, *usage) == Decimal("0.0375")


def test_more_one_hour_writes_than_writes_is_unpriced() -> None:
    usage = (10_000, 0, 0, 5_000, 5_001)
    assert book_cost(PriceBook(), "anthropic", SONNET, *usage) == Price(None, None)
    assert list_price("anthropic", SONNET, None, TS, *usage) is None


def test_every_bundled_model_prices_one_hour_writes_as_calc_price() -> None:
    """Each genai-prices model, by PriceBook and by the app side, with 1-hour writes."""
    book, rng, checked = PriceBook(), random.Random(17), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in data_snapshot.get_snapshot().providers:
            for model in provider.models:
                inp = rng.choice([rng.randint(0, 5_000), rng.randint(0, 400_000), 200_001])
                read = rng.randint(0, inp // 3)
                write = rng.randint(0, inp - read)
                usage = (inp, rng.randint(0, 9_000), read, write, rng.randint(0, write))
                price = book_cost(book, provider.id, model.id, *usage)
                try:
                    expected = library_cost(provider.id, model.id, *usage)
                except (LookupError, ValueError):
                    assert price == Price(None, None), (provider.id, model.id)
                    continue
                if price.cost_usd is None:  # priced per hour, page or character only
                    continue
                assert price == Price(expected, GENAI), (provider.id, model.id, usage)
                checked += 1
    assert checked > 2_000


OVERRIDES = """models:
  - model: acme-split-*
    input_mtok: 2
    output_mtok: 10
    cache_read_mtok: 0.2
    cache_write_mtok: 2.5
    cache_write_1h_mtok: 4
  - model: acme-plain-*
    input_mtok: 2
    output_mtok: 10
    cache_write_mtok: 2.5
"""


@pytest.fixture
def book(tmp_path: Path) -> PriceBook:
    path = tmp_path / "prices.yaml"
    path.write_text(OVERRIDES)
    return PriceBook(path)


def test_an_override_prices_one_hour_writes_at_its_own_price_or_the_write_price(
    book: PriceBook,
) -> None:
    usage = (20_000, 1_000, 3_000, 12_000, 10_000)
    # 5,000 * 2 + 3,000 * 0.2 + 2,000 * 2.5 + 10,000 * 4 + 1,000 * 10 = 65,600 per million
    split = book_cost(book, "openai", "acme-split-1", *usage)
    assert (split.cost_usd, split.source) == (Decimal("0.0656"), "override")
    # cache_write_1h_mtok defaults to cache_write_mtok; cache_read_mtok to input_mtok:
    # 5,000 * 2 + 3,000 * 2 + 12,000 * 2.5 + 1,000 * 10 = 56,000 per million
    plain = book_cost(book, "openai", "acme-plain-1", *usage)
    assert (plain.cost_usd, plain.source) == (Decimal("0.056"), "override")
    without = book_cost(book, "openai", "acme-plain-1", *usage[:4], 0)
    assert without.cost_usd == Decimal("0.056")


@pytest.mark.parametrize(
    ("provider", "model", "write_1h_mtok"),
    [("anthropic", SONNET, [Decimal(6), Decimal(12)]), ("openai", "acme-split-1", [Decimal(4)])],
)
def test_linear_prices_for_repricing_carry_the_one_hour_price(
    book: PriceBook, provider: str, model: str, write_1h_mtok: list[Decimal]
) -> None:
    pieces = linear_price(book, provider, model, None, TS)
    assert pieces is not None  # checked against PriceBook on probes with 1-hour writes
    assert [p.cache_write_1h_mtok for p in pieces] == write_1h_mtok
    assert all(p.split_1h for p in pieces)
    assert pieces[0].cost(20_000, 1_000, 3_000, 12_000, 10_000) == (
        Decimal("0.0984") if provider == "anthropic" else Decimal("0.0656")
    )
