"""Where each stored call's price comes from, precisely enough to reproduce it (`price_ref`, beside
`cost_source`), through a real `nexus-otel serve` with a price overrides file into PostgreSQL:
the genai-prices version and data, the overrides entry with its valid_from (and genai-prices
before that date), the span attribute a reported cost was read from, nothing for an unpriced
call. And migration 013 on a database that already holds rows set aside as duplicates.

The expected references are written out here from genai_prices.__version__ and the overrides
file, and the override costs worked out by hand from its per-million-token prices."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import httpx
import psycopg
import pytest

from exporter.core.db import migrate
from exporter.core.files import bundled_dir
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import (
    ExporterProcess,
    exporter_pricing_with,
    fresh_database,
    list_price,
    query,
    write_prices_file,
)

TODAY = datetime.now(UTC).date()
BEFORE, VALID_FROM = TODAY - timedelta(days=3), TODAY - timedelta(days=1)
OVERRIDES = f"""models:
  - model: gpt-4o-mini
    provider: openai
    valid_from: {VALID_FROM}
    input_mtok: 1
    output_mtok: 2
  - model: acme-*
    input_mtok: 3
    output_mtok: 15
"""
GENAI_PRICES = f"genai-prices {genai_prices.__version__} (bundled data)"


def at(day: Any, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def call(start: datetime, model: str, **extra: Any) -> dict[str, Any]:
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 1000,
        "gen_ai.usage.output_tokens": 200,
        **extra,
    }
    return {"start": start, "attributes": attributes, "duration_ms": 300}


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prices_file(tmp_path_factory, OVERRIDES)


@pytest.fixture(scope="module")
def priced_exporter(
    database_url: str, overrides: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    with exporter_pricing_with(database_url, overrides, tmp_path_factory) as process:
        yield process


def test_each_row_says_where_its_price_comes_from(
    priced_exporter: ExporterProcess, database_url: str, overrides: Path
) -> None:
    listed = call(at(BEFORE, 10), "gpt-4o-mini")
    specs = [
        listed,
        call(at(VALID_FROM, 10), "gpt-4o-mini"),
        call(at(VALID_FROM, 11), "acme-large-1"),
        call(at(VALID_FROM, 12), "acme-large-1", **{
            "gen_ai.usage.cost.amount": 0.0042, "gen_ai.usage.cost.source": "provider"}),
        call(at(VALID_FROM, 13), "house-model-7", **{"gen_ai.usage.cost": 0.0031}),
        call(at(VALID_FROM, 14), "house-model-8"),
    ]  # fmt: skip
    response = httpx.post(
        f"{priced_exporter.base_url}/v1/traces",
        content=protobuf_body(make_spans(specs, "price-ref")),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    rows = query(
        database_url,
        'SELECT "timestamp", model, cost_usd, cost_source, price_ref FROM api_calls'
        ' ORDER BY "timestamp"',
    )
    assert rows == [
        (at(BEFORE, 10), "gpt-4o-mini", list_price(listed["attributes"], at(BEFORE, 10)),
         "genai-prices", GENAI_PRICES),
        # 1000 * 1 + 200 * 2 = 1400 per million
        (at(VALID_FROM, 10), "gpt-4o-mini", Decimal("0.0014"), "override",
         f"{overrides} models[0] (gpt-4o-mini, provider openai) valid_from {VALID_FROM}"),
        # 1000 * 3 + 200 * 15 = 6000 per million
        (at(VALID_FROM, 11), "acme-large-1", Decimal("0.006"), "override",
         f"{overrides} models[1] (acme-*)"),
        (at(VALID_FROM, 12), "acme-large-1", Decimal("0.0042"), "provider",
         "gen_ai.usage.cost.amount"),
        (at(VALID_FROM, 13), "house-model-7", Decimal("0.0031"), "span", "gen_ai.usage.cost"),
        (at(VALID_FROM, 14), "house-model-8", None, None, None),
    ]  # fmt: skip


@pytest.fixture
def database_before_013(postgres_server: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    older = tmp_path / "migrations"
    older.mkdir()
    for path in sorted(bundled_dir("migrations").glob("*.sql")):
        if int(path.name.split("_")[0]) < 13:
            shutil.copy(path, older / path.name)
    with fresh_database(postgres_server) as url:  # migrated to the newest: start over before 013
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        migrate(url, older)
        yield url, older


def test_migration_keeps_the_duplicates_and_their_column_order(
    database_before_013: tuple[str, Path],
) -> None:
    """A span set aside before 013 keeps its set_aside_at; after 013 a span set aside moves with
    INSERT ... SELECT * (as exporter.ingest.duplicates moves it), its price_ref with it."""
    url, _ = database_before_013
    set_aside_at = datetime(2026, 11, 2, 3, 4, 5, tzinfo=UTC)
    started = datetime.now(UTC).replace(microsecond=0)
    insert = (
        'INSERT INTO api_calls (trace_id, span_id, "timestamp", service_name, provider, model,'
        " gen_ai_operation, success) VALUES (%s, %s, %s, 's', 'openai', 'm', 'chat', true)"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("t1", "s1", started))
        conn.execute(
            "WITH gone AS (DELETE FROM api_calls RETURNING *)"
            " INSERT INTO api_call_duplicates SELECT *, %s FROM gone",
            (set_aside_at,),
        )
    migrate(url)
    assert query(url, "SELECT span_id, set_aside_at, price_ref FROM api_call_duplicates") == [
        ("s1", set_aside_at, None)
    ]
    columns = (
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped ORDER BY attnum"
    )
    calls = [c for (c,) in query(url, columns, ("api_calls",))]
    assert calls[-3:] == ["price_ref", "cache_write_1h_tokens", "service_tier"]  # 017, 018 after
    assert [c for (c,) in query(url, columns, ("api_call_duplicates",))] == [
        *calls,
        "set_aside_at",
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(insert, ("t2", "s2", started))
        conn.execute("UPDATE api_calls SET price_ref = 'gen_ai.usage.cost' WHERE span_id = 's2'")
        conn.execute(
            "WITH gone AS (DELETE FROM api_calls RETURNING *)"
            " INSERT INTO api_call_duplicates SELECT * FROM gone"
        )
    assert query(url, "SELECT span_id, price_ref FROM api_call_duplicates ORDER BY 1") == [
        ("s1", None),
        ("s2", "gen_ai.usage.cost"),
    ]
