from __future__ import annotations

import random
import time
import warnings
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from genai_prices import Usage, calc_price, data_snapshot
from rich.console import Console

from exporter.ingest.price_overrides import PriceOverridesError
from exporter.ingest.pricing import ModelPriceInfo, Price, PriceBook, render_price_table
from nexus_otel._pricing import list_price

TS = datetime(2026, 5, 1, 12, tzinfo=UTC)


def library_cost(provider_id: str | None, model: str, ts: datetime, *usage: int) -> Decimal:
    inp, out, read, write = usage
    return calc_price(
        Usage(
            input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
        ),
        model,
        provider_id=provider_id,
        genai_request_timestamp=ts,
    ).total_price


def book_cost(book: PriceBook, provider: str, model: str, ts: datetime, *usage: int) -> Price:
    inp, out, read, write = usage
    return book.price(
        provider=provider,
        model=model,
        response_model=None,
        timestamp=ts,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=write,
    )


def random_usage(rng: random.Random, tier_edges: tuple[int, ...] = (200_000,)) -> tuple[int, ...]:
    edge = rng.choice(tier_edges)
    inp = rng.choice(
        [rng.randint(0, 5_000), rng.randint(0, 1_500_000), edge - 1, edge, edge + 1, 0]
    )
    read = rng.randint(0, inp) if rng.random() < 0.7 else 0
    write = rng.randint(0, inp - read) if rng.random() < 0.5 else 0
    out = rng.choice([0, rng.randint(0, 2_000), rng.randint(0, 200_000)])
    return inp, out, read, write


def random_ts(rng: random.Random, around: tuple[date, ...] = ()) -> datetime:
    if around and rng.random() < 0.6:
        day = datetime.combine(rng.choice(around), datetime.min.time(), tzinfo=UTC)
        return day + timedelta(seconds=rng.randint(-90_000, 90_000))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    return start + timedelta(seconds=rng.randint(0, 3 * 365 * 86_400))


# (semconv provider, genai-prices id, model, days when its price changes)
EXACT_CASES = [
    ("groq", "groq", "llama-3.3-70b-versatile", ()),
    ("anthropic", "anthropic", "claude-sonnet-4-5", ()),
    ("anthropic", "anthropic", "claude-sonnet-4-6", (date(2026, 3, 13),)),  # tiers dropped
    ("gcp.gemini", "google", "gemini-2.5-flash", ()),
    ("gcp.gemini", "google", "gemini-2.5-pro", ()),  # >200K input tier
    ("gcp.vertex_ai", "google", "claude-sonnet-4-5@20250929", ()),  # google → anthropic
    ("openai", "openai", "gpt-4o", ()),
    ("openai", "openai", "o3", (date(2025, 6, 10),)),  # price cut
    ("azure.ai.openai", "azure", "gpt-4o", ()),
    ("aws.bedrock", "aws", "us.anthropic.claude-sonnet-4-5-20250929-v1:0", ()),
    ("deepseek", "deepseek", "deepseek-chat", ()),  # off-peak prices by time of day
    ("perplexity", "perplexity", "sonar", ()),  # a per-request fee on top of tokens
    ("x_ai", "x-ai", "grok-4", ()),
    ("mistral_ai", "mistral", "mistral-large-latest", ()),
]


@pytest.mark.parametrize(("provider", "provider_id", "model", "changes"), EXACT_CASES)
def test_cost_equals_calc_price_exactly(
    provider: str, provider_id: str, model: str, changes: tuple[date, ...]
) -> None:
    book = PriceBook()
    rng = random.Random(f"{provider}/{model}")
    for _ in range(400):
        usage, ts = random_usage(rng), random_ts(rng, changes)
        price = book_cost(book, provider, model, ts, *usage)
        assert price == Price(library_cost(provider_id, model, ts, *usage), "genai-prices"), (
            usage,
            ts,
        )


def test_price_history_and_tiers_are_really_exercised() -> None:
    book = PriceBook()
    before, after = datetime(2025, 6, 9, 23, 59, tzinfo=UTC), datetime(2025, 6, 10, tzinfo=UTC)
    o3_before = book_cost(book, "openai", "o3", before, 1_000_000, 0, 0, 0).cost_usd
    o3_after = book_cost(book, "openai", "o3", after, 1_000_000, 0, 0, 0).cost_usd
    assert (o3_before, o3_after) == (Decimal(10), Decimal(2))
    pro = [
        book_cost(book, "gcp.gemini", "gemini-2.5-pro", TS, n, 0, 0, 0).cost_usd
        for n in (200_000, 200_001)
    ]
    assert pro == [Decimal("0.25"), Decimal("2.5") * Decimal("0.200001")]
    # a naive timestamp is UTC, as in the library; an offset is converted to UTC
    eastern = datetime(2025, 6, 10, 1, tzinfo=datetime.now().astimezone().tzinfo or UTC)
    naive = book_cost(book, "openai", "o3", after.replace(tzinfo=None), 1_000_000, 0, 0, 0)
    assert naive.cost_usd == Decimal(2)
    assert book_cost(book, "openai", "o3", eastern, 10, 0, 0, 0).cost_usd == library_cost(
        "openai", "o3", eastern, 10, 0, 0, 0
    )


def test_every_bundled_model_matches_calc_price() -> None:
    """Each genai-prices model, priced by its own id under its own provider."""
    book = PriceBook()
    rng = random.Random(7)
    checked = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for provider in data_snapshot.get_snapshot().providers:
            for model in provider.models:
                usage, ts = random_usage(rng, (128_000, 200_000, 272_000)), random_ts(rng)
                price = book_cost(book, provider.id, model.id, ts, *usage)
                try:
                    expected = library_cost(provider.id, model.id, ts, *usage)
                except (LookupError, ValueError):
                    assert price == Price(None, None), (provider.id, model.id)
                    continue
                if price.cost_usd is None:  # priced per hour, page or character only
                    prices = vars(book._lookup(provider.id, model.id)[1].get_prices(ts))  # type: ignore[index]
                    assert not any(k.endswith("_mtok") and v for k, v in prices.items())
                    continue
                assert price == Price(expected, "genai-prices"), (provider.id, model.id, usage, ts)
                checked += 1
    assert checked > 2_000


def test_response_model_is_tried_first_then_request_model() -> None:
    book = PriceBook()
    usage = dict(input_tokens=1000, output_tokens=100, cache_read_tokens=0, cache_write_tokens=0)
    call = dict(provider="openai", model="gpt-4o", timestamp=TS, **usage)
    dated = book.price(response_model="gpt-4o-2024-05-13", **call)  # type: ignore[arg-type]
    assert dated.cost_usd == library_cost("openai", "gpt-4o-2024-05-13", TS, 1000, 100, 0, 0)
    assert dated.cost_usd != library_cost("openai", "gpt-4o", TS, 1000, 100, 0, 0)
    fallback = book.price(response_model="gpt-4o-nonexistent-9", **call)  # type: ignore[arg-type]
    assert fallback.cost_usd == library_cost("openai", "gpt-4o", TS, 1000, 100, 0, 0)


def test_unknown_model_is_unpriced_never_free() -> None:
    book = PriceBook()
    assert book_cost(book, "openai", "no-such-model-xyz", TS, 100, 10, 0, 0) == Price(None, None)
    reported = book.price(
        provider="openai",
        model="no-such-model-xyz",
        response_model=None,
        timestamp=TS,
        input_tokens=100,
        output_tokens=10,
        cache_read_tokens=0,
        cache_write_tokens=0,
        reported_cost_usd=Decimal("0.0042"),
    )
    assert reported == Price(Decimal("0.0042"), "span")


def test_provider_rules() -> None:
    book = PriceBook()
    # known provider without the model: not priced at another provider's rates
    assert book_cost(book, "groq", "gpt-4o", TS, 100, 10, 0, 0) == Price(None, None)
    # unknown provider: the model alone picks its maker
    gateway = book_cost(book, "my-gateway", "claude-sonnet-4-5", TS, 100, 10, 0, 0)
    assert gateway == Price(
        library_cost(None, "claude-sonnet-4-5", TS, 100, 10, 0, 0), "genai-prices"
    )
    assert book_cost(book, "", "llama-3.3-70b-versatile", TS, 100, 10, 0, 0) == Price(None, None)


@pytest.mark.parametrize(
    ("provider", "model", "provider_id", "priced_as"),
    [
        ("gcp.gemini", "models/gemini-2.5-flash", "google", "gemini-2.5-flash"),
        ("gcp.vertex_ai", "publishers/google/models/gemini-2.5-pro", "google", "gemini-2.5-pro"),
        ("openai", "openai/gpt-4o-mini", "openai", "gpt-4o-mini"),
        ("litellm", "anthropic/claude-sonnet-4-5", "anthropic", "claude-sonnet-4-5"),
        ("litellm", "groq/llama-3.3-70b-versatile", "groq", "llama-3.3-70b-versatile"),
    ],
)  # fmt: skip
def test_a_model_name_with_a_path_is_priced_as_the_model_it_names(
    provider: str, model: str, provider_id: str, priced_as: str
) -> None:
    """LiteLLM and gateways name a model after its provider, the Gemini API and Vertex AI by
    their resource names: such names were unpriced (cost NULL) whenever genai-prices does not
    list them as they are, which it does for some models (models/gemini-2.0-flash) only."""
    usage = (120_000, 3_000, 20_000, 0)
    expected = library_cost(provider_id, priced_as, TS, *usage)
    assert expected > 0
    assert book_cost(PriceBook(), provider, model, TS, *usage) == Price(expected, "genai-prices")
    assert list_price(provider, model, None, TS, *usage) == expected  # the app's own handle


def test_a_path_does_not_price_a_model_its_provider_does_not_serve() -> None:
    # groq serves no gpt-4o: "openai/gpt-4o" through groq stays unpriced, as "gpt-4o" does
    assert book_cost(PriceBook(), "groq", "openai/gpt-4o", TS, 100, 10, 0, 0) == Price(None, None)


def test_inconsistent_usage_is_not_priced_from_tokens() -> None:
    book = PriceBook()
    # cache counts are subsets of input_tokens; more cache than input is broken data
    assert book_cost(book, "anthropic", "claude-sonnet-4-5", TS, 10, 5, 8, 8) == Price(None, None)


def test_a_total_without_input_or_output_is_not_priced_from_tokens() -> None:
    book = PriceBook()
    common: dict[str, Any] = {
        "provider": "openai", "model": "gpt-4o", "response_model": None, "timestamp": TS,
        "input_tokens": 0, "output_tokens": 0, "cache_read_tokens": 0, "cache_write_tokens": 0,
    }  # fmt: skip
    assert book.price(**common, total_tokens=500) == Price(None, None)
    assert book.price(**common, total_tokens=500, reported_cost_usd=Decimal("0.003")) == Price(
        Decimal("0.003"), "span"
    )
    # No tokens at all is a call that used none: the table's $0 stands.
    assert book.price(**common).cost_usd == 0
    assert book.price(**{**common, "input_tokens": 400}, total_tokens=500).cost_usd == Decimal(
        "0.001"
    )


def test_follows_a_replaced_price_snapshot() -> None:
    book = PriceBook()
    assert book_cost(book, "groq", "llama-3.3-70b-versatile", TS, 100, 10, 0, 0).cost_usd
    data_snapshot.set_custom_snapshot(data_snapshot.DataSnapshot([], from_auto_update=True))
    try:
        assert (
            book_cost(book, "groq", "llama-3.3-70b-versatile", TS, 100, 10, 0, 0).cost_usd is None
        )
    finally:
        data_snapshot.set_custom_snapshot(None)
    assert book_cost(book, "groq", "llama-3.3-70b-versatile", TS, 100, 10, 0, 0).cost_usd


def test_cached_pricing_is_fast() -> None:
    book = PriceBook()
    rng = random.Random(3)
    calls = [
        (random_usage(rng), TS + timedelta(seconds=rng.randint(0, 86_400 * 3)))
        for _ in range(2_000)
    ]
    for usage, ts in calls[:10]:
        book_cost(book, "anthropic", "claude-sonnet-4-5", ts, *usage)
    start = time.perf_counter()
    for usage, ts in calls:
        book_cost(book, "anthropic", "claude-sonnet-4-5", ts, *usage)
    cached = (time.perf_counter() - start) / len(calls)
    start = time.perf_counter()
    for usage, ts in calls[:200]:
        library_cost("anthropic", "claude-sonnet-4-5", ts, *usage)
    library = (time.perf_counter() - start) / 200
    print(f"cached {cached * 1e6:.1f} µs/call, calc_price {library * 1e6:.1f} µs/call")
    assert cached * 5 < library


# -- overrides --------------------------------------------------------------------------------

OVERRIDES = """\
# USD per million tokens
models:
  - model: my-finetuned-llama
    provider: groq
    input_mtok: 0.50
    output_mtok: 1.00
    cache_read_mtok: 0.05
    cache_write_mtok: 0.60
  - model: my-finetuned-llama
    input_mtok: 0.7
    output_mtok: 1.1
  - model: "acme-*"
    input_mtok: "0.1"
    output_mtok: 0.3
  - model: claude-sonnet-4-5
    provider: anthropic
    input_mtok: 2
    output_mtok: 10
    cache_read_mtok: 0
    valid_from: 2026-01-01
"""


@pytest.fixture
def book(tmp_path: Path) -> PriceBook:
    path = tmp_path / "prices.yaml"
    path.write_text(OVERRIDES)
    return PriceBook(path)


def expected_override(inp: int, out: int, read: int, write: int, *prices: str) -> Decimal:
    p_in, p_out, p_read, p_write = (Decimal(p) for p in prices)
    total = (inp - read - write) * p_in + read * p_read + write * p_write + out * p_out
    return total / Decimal(1_000_000)


def test_override_exact_and_provider_specific(book: PriceBook) -> None:
    usage = (10_000, 2_000, 3_000, 1_000)
    groq = book_cost(book, "groq", "my-finetuned-llama", TS, *usage)
    assert groq == Price(expected_override(*usage, "0.5", "1", "0.05", "0.6"), "override")
    assert groq.cost_usd == Decimal("0.00575")
    other = book_cost(book, "together", "my-finetuned-llama", TS, *usage)
    # cache prices default to the input price
    assert other == Price(expected_override(*usage, "0.7", "1.1", "0.7", "0.7"), "override")


def test_override_glob_and_decimal_exactness(book: PriceBook) -> None:
    price = book_cost(book, "openai", "acme-large-2", TS, 3, 3, 0, 0)
    assert price == Price(Decimal("0.0000012"), "override")  # 0.1 and 0.3 are not floats here
    assert book_cost(book, "openai", "ACME-Large-2", TS, 3, 3, 0, 0).source == "override"
    assert book_cost(book, "openai", "xacme-large", TS, 3, 3, 0, 0) == Price(None, None)


def test_override_matches_response_model(book: PriceBook) -> None:
    price = book.price(
        provider="openai",
        model="router-default",
        response_model="acme-small",
        timestamp=TS,
        input_tokens=1_000_000,
        output_tokens=0,
        cache_read_tokens=0,
        cache_write_tokens=0,
    )
    assert price == Price(Decimal("0.1"), "override")


def test_override_valid_from_and_precedence(book: PriceBook) -> None:
    usage = (300_000, 1_000, 100_000, 0)
    before = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    after = datetime(2026, 1, 1, tzinfo=UTC)
    assert book_cost(book, "anthropic", "claude-sonnet-4-5", before, *usage) == Price(
        library_cost("anthropic", "claude-sonnet-4-5", before, *usage), "genai-prices"
    )
    # an explicit cache price of 0 is honoured, not replaced by the input price
    assert book_cost(book, "anthropic", "claude-sonnet-4-5", after, *usage) == Price(
        expected_override(*usage, "2", "10", "0", "2"), "override"
    )
    vertex = book_cost(book, "gcp.vertex_ai", "claude-sonnet-4-5", after, *usage)
    assert vertex.source == "genai-prices"  # the override is for provider anthropic only


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ("- model: x\n  input_mtok: 1\n  output_mtok: 1\n  colour: red", "'colour'"),
        ("- model: x\n  input_mtok: -1\n  output_mtok: 1", "got -1"),
        ("- model: x\n  input_mtok: cheap\n  output_mtok: 1", "got 'cheap'"),
        ("- model: x\n  input_mtok: .nan\n  output_mtok: 1", "got nan"),
        ("- model: x\n  input_mtok: true\n  output_mtok: 1", "got True"),
        ("- input_mtok: 1\n  output_mtok: 1", "'model'"),
        ("- model: ''\n  input_mtok: 1\n  output_mtok: 1", "got ''"),
        (
            "- model: x\n  output_mtok: 1",
            "'input_mtok' must be a non-negative number",
        ),
        ("- model: x\n  input_mtok: 1\n  output_mtok: 1\n  valid_from: soon", "got 'soon'"),
        ("- model: x\n  provider: 3\n  input_mtok: 1\n  output_mtok: 1", "got 3"),
        ("- just a string", "got 'just a string'"),
    ],
)
def test_bad_override_entries_name_file_entry_and_value(
    tmp_path: Path, entry: str, fragment: str
) -> None:
    path = tmp_path / "prices.yaml"
    good = "- model: ok\n  input_mtok: 1\n  output_mtok: 2\n"
    path.write_text(
        "models:\n" + "".join("  " + line + "\n" for line in (good + entry).splitlines())
    )
    with pytest.raises(PriceOverridesError) as caught:
        PriceBook(path)
    message = str(caught.value)
    assert str(path) in message and "models[1]" in message and fragment in message, message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [("models: {a: 1}", "'models'"), ("prices: []", "'models'"), ("models: [\n", "cannot read")],
)
def test_bad_override_files(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    with pytest.raises(PriceOverridesError, match=fragment):
        PriceBook(path)
    with pytest.raises(PriceOverridesError, match=r"missing\.yaml"):
        PriceBook(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    "content",
    [b"models:\n  - model: acme-\xff\n", b"models: " + b"[" * 5000 + b"]" * 5000],
    ids=["not UTF-8", "nested 5,000 deep"],
)
def test_unreadable_override_files_are_refused_by_name(tmp_path: Path, content: bytes) -> None:
    """What a careless save can leave: refused like any bad file (the exporter keeps its
    prices, the CLI names the file), never an error of another kind."""
    path = tmp_path / "prices.yaml"
    path.write_bytes(content)
    with pytest.raises(PriceOverridesError, match=r"prices\.yaml: cannot read price overrides"):
        PriceBook(path)


def test_empty_override_file_is_no_overrides(tmp_path: Path) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text("# nothing yet\n")
    assert PriceBook(path).overrides == ()


# -- describe and the CLI table ---------------------------------------------------------------


def test_describe_genai_prices_model() -> None:
    info = PriceBook().describe("claude-sonnet-4-5", provider="anthropic", at=TS)
    assert (info.model_id, info.model_name, info.provider) == (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "anthropic",
    )
    assert info.source.startswith("genai-prices 0.2")
    prices = (info.input_mtok, info.output_mtok, info.cache_read_mtok, info.cache_write_mtok)
    assert prices == (Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"))
    assert info.tiered and ("input_mtok", 200_000, Decimal(6)) in info.tiers


def test_describe_without_provider_and_absent_prices() -> None:
    book = PriceBook()
    llama = book.describe("llama-3.3-70b-versatile", at=TS)
    assert llama.provider == "groq" and llama.cache_read_mtok is None and not llama.tiered
    assert book.describe("o3", at=datetime(2025, 1, 1, tzinfo=UTC)).input_mtok == Decimal(10)
    assert book.describe("o3", at=datetime(2025, 7, 1, tzinfo=UTC)).input_mtok == Decimal(2)


def test_describe_override(book: PriceBook) -> None:
    info = book.describe("acme-mini", at=TS)
    assert info.source.startswith("override: ") and "prices.yaml" in info.source
    assert (info.input_mtok, info.cache_read_mtok) == (Decimal("0.1"), Decimal("0.1"))


def test_describe_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(LookupError, match="claude-sonnet-4-5") as caught:
        PriceBook().describe("claude-sonet-4-5")
    assert "NEXUS_PRICES_FILE" in str(caught.value)
    with pytest.raises(LookupError, match="'groq'") as caught:
        PriceBook().describe("gpt-4o", provider="groq")
    assert "It is priced for: " in str(caught.value) and "openai" in str(caught.value)


def test_render_price_table() -> None:
    info = PriceBook().describe("gemini-2.5-pro", provider="gcp.gemini", at=TS)
    assert isinstance(info, ModelPriceInfo)
    console = Console(width=120, record=True)
    console.print(render_price_table(info))
    text = console.export_text()
    for expected in ("gemini-2.5-pro", "google", "$1.25", "$10", "$0.125", "input > 200,000", "—"):
        assert expected in text, text
