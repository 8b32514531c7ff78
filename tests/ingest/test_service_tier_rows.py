"""OpenAI service tiers end to end: spans naming the tier that served them
(`openai.response.service_tier`) through a real `nexus-otel serve` into PostgreSQL, each row
with its `service_tier` and a cost at that tier's prices; `reprice` (linear prices in SQL, and
the Python way) pricing by the stored tier, so repricing never undoes it; and migration 018 on a
database that already holds calls and calls set aside as duplicates.

Expected costs are worked out by hand from gpt-5's prices (genai-prices 0.2.5, from 2026-10-12):
$1.25 input, $0.125 cached input, $10 output per million tokens; flex half, priority twice."""

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
    query,
    store_one_and_set_one_aside,
)

DAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
TIER = "openai.response.service_tier"
# 10,000 input (2,000 cached), 1,000 output: 10,000 + 250 + 10,000 = 20,250 per million
# (tier on the span, tier stored, cost)
CALLS = [
    (None, None, Decimal("0.02025")),
    ("default", "default", Decimal("0.02025")),
    ("flex", "flex", Decimal("0.010125")),
    ("priority", "priority", Decimal("0.0405")),
    ("scale", "scale", Decimal("0.02025")),  # no price of its own
    ("x" * 40, None, Decimal("0.02025")),  # not a tier name: not stored, not kept
]
REQUEST = RepriceRequest(since=DAY, until=DAY + timedelta(days=1))


def spec(minute: int, tier: str | None) -> dict[str, Any]:
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-5",
        "gen_ai.usage.input_tokens": 10_000,
        "gen_ai.usage.output_tokens": 1_000,
        "gen_ai.usage.cache_read.input_tokens": 2_000,
    }
    if tier is not None:
        attributes[TIER] = tier
    return {"start": DAY + timedelta(minutes=minute), "attributes": attributes}


def rows(url: str) -> list[tuple[Any, ...]]:
    return query(
        url,
        f"SELECT service_tier, cost_usd, attributes ? '{TIER}' FROM api_calls"
        ' ORDER BY "timestamp"',
    )


EXPECTED = [(stored, cost, False) for _, stored, cost in CALLS]


@pytest.fixture(scope="module")
def stored(exporter: ExporterProcess) -> ExporterProcess:
    # Answered 200 once its rows are committed: nothing to wait for.
    exporter.post_traces(protobuf_body(make_spans([spec(m, c[0]) for m, c in enumerate(CALLS)])))
    return exporter


def test_each_row_keeps_its_tier_and_is_priced_at_it(
    stored: ExporterProcess, database_url: str
) -> None:
    assert rows(database_url) == EXPECTED


@pytest.mark.parametrize("way", ["linear", "python"])
def test_reprice_prices_each_call_at_its_stored_tier(
    stored: ExporterProcess, database_url: str, way: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Repricing changes nothing; given the standard-price costs flex and priority calls had
    before their tier was told, it restores the tier's."""
    if way == "python":  # no linear price: every call priced by PriceBook, group by group
        monkeypatch.setattr(reprice_module, "linear_price", lambda *args: None)
    with psycopg.connect(database_url) as conn:
        assert reprice(conn, PriceBook(), REQUEST).calls_changed == 0
    assert rows(database_url) == EXPECTED
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE api_calls SET cost_usd = 0.02025 WHERE service_tier IN ('flex', 'priority')"
        )
    with psycopg.connect(database_url) as conn:
        assert reprice(conn, PriceBook(), REQUEST).calls_changed == 2
    assert rows(database_url) == EXPECTED


@pytest.fixture
def database_before_018(postgres_server: str, tmp_path: Path) -> Iterator[str]:
    with database_before(postgres_server, 18, tmp_path / "migrations") as url:
        yield url


def test_migration_018_on_a_database_with_calls(database_before_018: str) -> None:
    """Calls stored before 018 have no tier (and keep their standard-price cost, also when
    repriced); a call set aside keeps its set_aside_at, and api_call_duplicates api_calls'
    columns in their order."""
    url = database_before_018
    set_aside_at = datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC)
    insert = (
        'INSERT INTO api_calls (trace_id, span_id, "timestamp", service_name, provider, model,'
        " gen_ai_operation, success, input_tokens, output_tokens, cache_read_tokens, cost_usd,"
        " cost_source) VALUES (%s, %s, %s, 's', 'openai', 'gpt-5', 'chat', true, 10000, 1000,"
        " 2000, 0.02025, 'genai-prices')"
    )
    store_one_and_set_one_aside(url, insert, DAY, set_aside_at)
    migrate(url)
    assert query(url, "SELECT span_id, service_tier, cost_usd FROM api_calls") == [
        ("s2", None, Decimal("0.020250000000"))
    ]
    assert query(url, "SELECT span_id, set_aside_at, service_tier FROM api_call_duplicates") == [
        ("s1", set_aside_at, None)
    ]
    calls = column_names(url, "api_calls")
    assert calls[-1] == "service_tier"
    assert column_names(url, "api_call_duplicates") == [*calls, "set_aside_at"]
    with psycopg.connect(url) as conn:
        assert reprice(conn, PriceBook(), REQUEST).calls_changed == 0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE api_calls SET service_tier = 'flex'")
    with psycopg.connect(url) as conn:  # the tier told later: its call priced at flex prices
        assert reprice(conn, PriceBook(), REQUEST).calls_changed == 1
    assert query(url, "SELECT cost_usd FROM api_calls") == [(Decimal("0.010125000000"),)]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "WITH gone AS (DELETE FROM api_calls RETURNING *)"
            " INSERT INTO api_call_duplicates SELECT * FROM gone"
        )
    assert query(url, "SELECT span_id, service_tier FROM api_call_duplicates ORDER BY 1") == [
        ("s1", None),
        ("s2", "flex"),
    ]
