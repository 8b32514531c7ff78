"""1-hour cache writes end to end: spans through a real `nexus-otel serve` (with a price
overrides file) into PostgreSQL, each row with its `cache_write_1h_tokens` and a cost that
prices them apart; `reprice` (linear prices in SQL, and the Python way) pricing the column the
same way, so repricing never undoes it; and migration 017 on a database that already holds calls
and calls set aside as duplicates.

Expected costs are worked out by hand: claude-sonnet-4-5 at $3 input, $15 output, $0.30 cache
read, $3.75 5-minute and $6 1-hour cache write per million tokens; the override below."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.core.db import migrate
from exporter.ingest.pricing import PriceBook
from exporter.usage import reprice as reprice_module
from exporter.usage.reprice import RepriceRequest, reprice
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import (
    ExporterProcess,
    column_names,
    database_before,
    exporter_pricing_with,
    query,
    store_one_and_set_one_aside,
    write_prices_file,
)

DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
OVERRIDES = """models:
  - model: acme-split-*
    input_mtok: 2
    output_mtok: 10
    cache_read_mtok: 0.2
    cache_write_mtok: 2.5
    cache_write_1h_mtok: 4
"""
WRITE_1H = "nexus.usage.cache_write_1h.input_tokens"
# (minute, provider, model, (input, output, cache read, cache write, 1-hour writes on the span),
#  stored 1-hour writes, cost, source)
CALLS = [
    # 10,000 * 6 = 60,000 per million (as 5-minute writes: 37,500)
    (0, "anthropic", "claude-sonnet-4-5", (10_000, 0, 0, 10_000, 10_000), 10_000,
     Decimal("0.06"), "genai-prices"),
    # 5,000 * 3 + 3,000 * 0.3 + 2,000 * 3.75 + 10,000 * 6 + 1,000 * 15 = 98,400 per million
    (1, "anthropic", "claude-sonnet-4-5", (20_000, 1_000, 3_000, 12_000, 10_000), 10_000,
     Decimal("0.0984"), "genai-prices"),
    # no 1-hour writes: what it always cost, 10,000 * 3.75
    (2, "anthropic", "claude-sonnet-4-5", (10_000, 0, 0, 10_000, None), 0,
     Decimal("0.0375"), "genai-prices"),
    # more 1-hour writes than writes (bad data): cut to the writes
    (3, "anthropic", "claude-sonnet-4-5", (10_000, 0, 0, 10_000, 15_000), 10_000,
     Decimal("0.06"), "genai-prices"),
    # override: 5,000 * 2 + 3,000 * 0.2 + 2,000 * 2.5 + 10,000 * 4 + 1,000 * 10 = 65,600
    (4, "openai", "acme-split-1", (20_000, 1_000, 3_000, 12_000, 10_000), 10_000,
     Decimal("0.0656"), "override"),
]  # fmt: skip
REQUEST = RepriceRequest(since=DAY, until=DAY + timedelta(days=1))


def spec(minute: int, provider: str, model: str, usage: tuple[Any, ...]) -> dict[str, Any]:
    inp, out, read, write, write_1h = usage
    attributes = {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": inp,
        "gen_ai.usage.output_tokens": out,
        "gen_ai.usage.cache_read.input_tokens": read,
        "gen_ai.usage.cache_creation.input_tokens": write,
    }
    if write_1h is not None:
        attributes[WRITE_1H] = write_1h
    return {"start": DAY + timedelta(minutes=minute), "attributes": attributes}


def rows(url: str) -> list[tuple[Any, ...]]:
    return query(
        url,
        "SELECT cache_write_tokens, cache_write_1h_tokens, cost_usd, cost_source,"
        f" attributes ? '{WRITE_1H}' FROM api_calls ORDER BY \"timestamp\"",
    )


EXPECTED = [(c[3][3], c[4], c[5], c[6], False) for c in CALLS]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prices_file(tmp_path_factory, OVERRIDES)


@pytest.fixture(scope="module")
def stored(
    database_url: str, overrides: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    with exporter_pricing_with(database_url, overrides, tmp_path_factory) as process:
        specs = [spec(*c[:4]) for c in CALLS]
        # Answered 200 once its rows are committed: nothing to wait for.
        process.post_traces(protobuf_body(make_spans(specs, "cache-1h")))
        yield process


def test_each_row_keeps_its_one_hour_writes_and_is_priced_by_them(
    stored: ExporterProcess, database_url: str
) -> None:
    assert rows(database_url) == EXPECTED


@pytest.mark.parametrize("way", ["linear", "python"])
def test_reprice_prices_one_hour_writes_as_ingest_does(
    stored: ExporterProcess,
    database_url: str,
    overrides: Path,
    way: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Repricing changes nothing; given the costs the 1-hour writes had before they were told
    apart (every write at the cache write price), it restores the right ones."""
    if way == "python":  # no linear price: every call priced by PriceBook, group by group
        monkeypatch.setattr(reprice_module, "linear_price", lambda *args: None)
    with psycopg.connect(database_url) as conn:
        assert reprice(conn, PriceBook(overrides), REQUEST).calls_changed == 0
    assert rows(database_url) == EXPECTED
    with psycopg.connect(database_url, autocommit=True) as conn:
        # 10,000 1-hour writes at $3.75 (sonnet) and $2.5 (override) a million: 2.25 c and 1.5 c
        # less than they cost.
        conn.execute(
            "UPDATE api_calls SET cost_usd = cost_usd - CASE WHEN cost_source = 'override'"
            " THEN 0.015 ELSE 0.0225 END WHERE cache_write_1h_tokens > 0"
        )
    with psycopg.connect(database_url) as conn:
        plan = reprice(conn, PriceBook(overrides), REQUEST)
    assert plan.calls_changed == 4
    assert rows(database_url) == EXPECTED


@pytest.fixture
def database_before_017(postgres_server: str, tmp_path: Path) -> Iterator[str]:
    with database_before(postgres_server, 17, tmp_path / "migrations") as url:
        yield url


def test_migration_017_on_a_database_with_calls(database_before_017: str) -> None:
    """Calls stored before 017 get 0 1-hour writes (and keep their cost, also when repriced);
    a call set aside before keeps its set_aside_at; api_call_duplicates keeps api_calls'
    columns in their order, so a span set aside after 017 moves with INSERT ... SELECT *."""
    url = database_before_017
    set_aside_at = datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC)
    insert = (
        'INSERT INTO api_calls (trace_id, span_id, "timestamp", service_name, provider, model,'
        " gen_ai_operation, success, input_tokens, cache_write_tokens, cost_usd, cost_source)"
        " VALUES (%s, %s, %s, 's', 'anthropic', 'claude-sonnet-4-5', 'chat', true, 10000,"
        " 10000, 0.0375, 'genai-prices')"
    )
    store_one_and_set_one_aside(url, insert, DAY, set_aside_at)
    migrate(url)
    assert query(url, "SELECT span_id, cache_write_1h_tokens, cost_usd FROM api_calls") == [
        ("s2", 0, Decimal("0.037500000000"))
    ]
    assert query(
        url, "SELECT span_id, set_aside_at, cache_write_1h_tokens FROM api_call_duplicates"
    ) == [("s1", set_aside_at, 0)]
    calls = column_names(url, "api_calls")
    assert calls[-3:] == ["price_ref", "cache_write_1h_tokens", "service_tier"]  # 018 after
    assert column_names(url, "api_call_duplicates") == [*calls, "set_aside_at"]
    with psycopg.connect(url) as conn:
        assert reprice(conn, PriceBook(), REQUEST).calls_changed == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE api_calls SET cache_write_1h_tokens = 4000 WHERE span_id = 's2'")
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute("UPDATE api_calls SET cache_write_1h_tokens = 10001")
        conn.execute(
            "WITH gone AS (DELETE FROM api_calls RETURNING *)"
            " INSERT INTO api_call_duplicates SELECT * FROM gone"
        )
    assert query(
        url, "SELECT span_id, cache_write_1h_tokens FROM api_call_duplicates ORDER BY 1"
    ) == [("s1", 0), ("s2", 4000)]
