"""Repricing that writes partitions anew (exporter.usage.cost_writes): calls stored in two
monthly partitions through a real `nexus-otel serve`, then repriced with the rewrite threshold
lowered so both partitions are copied, indexed and swapped in. Every column but the price stays
byte for byte, the partitions keep their names, bounds, index names and definitions, the unique
key still turns a replay away, the exporter goes on storing, a call sent while the reprice
writes waits and is stored once, and the in-place path gives the same costs.

Expected costs are worked out from the override's per-million-token prices, not by the code
under test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from exporter.ingest.pricing import PriceBook
from exporter.usage import cost_writes
from exporter.usage.reprice import RepricePlan, RepriceRequest, reprice
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, query

TODAY = datetime.now(UTC).date()
LAST_MONTH = TODAY.replace(day=1) - timedelta(days=2)
MODEL = "acme-rewrite-1"
# A request sent while a partition is rewritten waits for the reprice to commit.
SEND_SECONDS = 120
REQUEST = RepriceRequest(
    since=datetime.combine(LAST_MONTH - timedelta(days=1), datetime.min.time(), UTC),
    until=datetime.combine(TODAY + timedelta(days=1), datetime.min.time(), UTC),
)


def prices(input_mtok: int) -> str:
    return (
        f"models:\n  - model: acme-rewrite-*\n    input_mtok: {input_mtok}\n    output_mtok: 15\n"
    )


def at(day: date, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, 0, minute, tzinfo=UTC)


def spec(start: datetime, model: str, tokens: tuple[int, int], **extra: Any) -> dict[str, Any]:
    attributes = {
        "gen_ai.provider.name": "openai",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
        "nexus.operation": "caption",
        **extra,
    }
    return {"start": start, "attributes": attributes, "duration_ms": 250}


# Per day: five calls of the unpriced model (one with a correlation id, one failed), and one of
# a model genai-prices prices, which no override touches.
TOKENS = ((1000, 200), (2500, 700), (1234, 567), (40, 9), (99_999, 1))
SPECS = [
    spec(at(day, minute), MODEL, tokens, **extra)
    for day in (LAST_MONTH, TODAY)
    for minute, (tokens, extra) in enumerate(
        zip(
            TOKENS,
            ({"nexus.correlation_id": "carousel-9"}, {"error.type": "timeout"}, {}, {}, {}),
            strict=True,
        )
    )
] + [spec(at(day, 30), "gpt-4o-mini", (100, 50)) for day in (LAST_MONTH, TODAY)]


def expected_cost(tokens: tuple[int, int], input_mtok: int) -> Decimal:
    return (Decimal(tokens[0]) * input_mtok + Decimal(tokens[1]) * 15) / 1_000_000


def body(specs: list[dict[str, Any]]) -> bytes:
    return protobuf_body(make_spans(specs, "rewrite-bot"))


def rows_but_prices(database_url: str) -> list[tuple[Any, ...]]:
    """Every stored column but cost_usd, cost_source and price_ref, of every call."""
    with psycopg.connect(database_url) as conn:
        cursor = conn.execute("SELECT * FROM api_calls ORDER BY trace_id, span_id")
        names = [c.name for c in cursor.description or ()]
        kept = [i for i, n in enumerate(names) if n not in ("cost_usd", "cost_source", "price_ref")]
        return [tuple(row[i] for i in kept) for row in cursor.fetchall()]


def costs(database_url: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        'SELECT "timestamp", model, input_tokens, cost_usd, cost_source FROM api_calls'
        ' ORDER BY "timestamp", model',
    )


def partitions(database_url: str) -> dict[str, Any]:
    """The partitions' names, bounds and oids, their indexes, and the index attachments."""
    return {
        "bounds": query(
            database_url,
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid), c.oid FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'api_calls'::regclass ORDER BY 1",
        ),
        "indexes": query(
            database_url,
            "SELECT tablename, indexname, indexdef FROM pg_indexes"
            " WHERE tablename LIKE 'api\\_calls\\_%' ORDER BY 1, 2",
        ),
        "attached": query(
            database_url,
            "SELECT p.relname, c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " JOIN pg_class p ON p.oid = i.inhparent WHERE c.relkind = 'i' ORDER BY 1, 2",
        ),
    }


def run_reprice(database_url: str, prices_file: Path, before_apply: Any = None) -> RepricePlan:
    with psycopg.connect(database_url) as conn:
        return reprice(conn, PriceBook(prices_file), REQUEST, before_apply=before_apply)


@pytest.fixture(scope="module")
def sent() -> bytes:
    return body(SPECS)


@pytest.fixture(scope="module")
def stored(exporter: ExporterProcess, database_url: str, sent: bytes) -> list[tuple[Any, ...]]:
    exporter.post_traces(sent, SEND_SECONDS)
    rows = rows_but_prices(database_url)
    assert len(rows) == len(SPECS)
    return rows


@pytest.fixture
def rewrite_every_partition(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Partitions of a few rows rewritten as a big one would be."""
    monkeypatch.setattr(cost_writes, "REWRITE_MIN_ROWS", 0)
    yield


def test_a_rewritten_partition_keeps_every_call_its_name_bounds_and_indexes(
    stored: list[tuple[Any, ...]],
    database_url: str,
    exporter: ExporterProcess,
    tmp_path: Path,
    rewrite_every_partition: None,
    sent: bytes,
) -> None:
    before = partitions(database_url)
    rows_before = rows_but_prices(database_url)
    listed = [r for r in costs(database_url) if r[1] == "gpt-4o-mini"]
    [(of_model,)] = query(database_url, "SELECT count(*) FROM api_calls WHERE model = %s", (MODEL,))
    path = tmp_path / "prices.yaml"
    path.write_text(prices(3))  # no other test uses this price: every call of MODEL changes

    plan = run_reprice(database_url, path)

    assert plan.writes == {"updated in place": 0, "partitions rewritten": 2}
    assert plan.calls_changed == of_model
    after = partitions(database_url)
    assert [b[:2] for b in after["bounds"]] == [b[:2] for b in before["bounds"]]
    swapped = {b[0] for b, a in zip(before["bounds"], after["bounds"], strict=True) if b[2] != a[2]}
    assert swapped == {f"api_calls_{d:%Y_%m}" for d in (LAST_MONTH, TODAY)}
    assert after["indexes"] == before["indexes"]
    assert after["attached"] == before["attached"]
    assert rows_but_prices(database_url) == rows_before
    now = costs(database_url)
    assert [r for r in now if r[1] == "gpt-4o-mini"] == listed
    by_start = {r[0]: r for r in now if r[1] == MODEL}
    for start, tokens in _unpriced():
        assert by_start[start][3:] == (expected_cost(tokens, 3), "override")
    # The unique key of the new partitions still turns a replay away; new calls are stored.
    exporter.post_traces(sent, SEND_SECONDS)
    assert rows_but_prices(database_url) == rows_before
    exporter.post_traces(body([spec(at(TODAY, 45), MODEL, (10, 10))]), SEND_SECONDS)
    assert len(rows_but_prices(database_url)) == len(rows_before) + 1


def test_a_call_sent_while_a_partition_is_rewritten_waits_and_is_stored_once(
    stored: list[tuple[Any, ...]],
    database_url: str,
    exporter: ExporterProcess,
    tmp_path: Path,
    rewrite_every_partition: None,
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices(4))
    late = spec(at(TODAY, 50), MODEL, (20, 20))
    sender = threading.Thread(target=exporter.post_traces, args=(body([late]), SEND_SECONDS))

    def send_and_wait_until_it_waits(plan: RepricePlan) -> None:
        sender.start()
        deadline = time.monotonic() + 90
        while not _waiting_on_a_lock(database_url):
            assert time.monotonic() < deadline, "the exporter's write never waited"
            time.sleep(0.05)

    plan = run_reprice(database_url, path, before_apply=send_and_wait_until_it_waits)
    sender.join(timeout=120)
    assert not sender.is_alive()

    assert plan.writes["partitions rewritten"] == 2
    assert query(
        database_url,
        'SELECT count(*), min(cost_usd) FROM api_calls WHERE "timestamp" = %s',
        (late["start"],),
    ) == [(1, None)]  # stored once, as the exporter priced it (no override there)
    assert query(
        database_url,
        'SELECT count(*) FROM price_revision_calls WHERE "timestamp" = %s',
        (late["start"],),
    ) == [(0,)]


def test_updating_in_place_gives_the_same_costs(
    stored: list[tuple[Any, ...]], database_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "prices.yaml"
    path.write_text(prices(5))
    references = dict(query(database_url, "SELECT span_id, price_ref FROM api_calls"))

    plan = run_reprice(database_url, path)

    assert plan.writes["partitions rewritten"] == 0
    assert plan.writes["updated in place"] == plan.calls_changed >= 10
    by_start = {r[0]: r for r in costs(database_url) if r[1] == MODEL}
    for start, tokens in _unpriced():
        assert by_start[start][3:] == (expected_cost(tokens, 5), "override")
    # Each changed call's record keeps the reference its previous cost came from.
    recorded = query(
        database_url,
        "SELECT span_id, previous_price_ref, price_ref FROM price_revision_calls"
        " WHERE revision_id = %s",
        (plan.revision_id,),
    )
    assert len(recorded) == plan.calls_changed
    assert all(previous == references[span] for span, previous, _ in recorded)
    assert {new for *_, new in recorded} == {f"{path} models[0] (acme-rewrite-*)"}


def _unpriced() -> list[tuple[datetime, tuple[int, int]]]:
    return [
        (s["start"], (s["attributes"]["gen_ai.usage.input_tokens"],
                      s["attributes"]["gen_ai.usage.output_tokens"]))
        for s in SPECS if s["attributes"]["gen_ai.request.model"] == MODEL
    ]  # fmt: skip


def _waiting_on_a_lock(database_url: str) -> bool:
    return bool(
        query(
            database_url,
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query ILIKE '%api_calls%' AND pid <> pg_backend_pid()",
        )[0][0]
    )


def test_a_partition_with_a_trigger_of_its_own_is_updated_in_place(
    stored: list[tuple[Any, ...]],
    database_url: str,
    tmp_path: Path,
    rewrite_every_partition: None,
) -> None:
    """A copy of the partition would lose its trigger: it is updated in place, trigger kept."""
    part = f"api_calls_{TODAY:%Y_%m}"
    path = tmp_path / "prices.yaml"
    path.write_text(prices(6))
    [(in_part,)] = query(database_url, f"SELECT count(*) FROM {part} WHERE model = %s", (MODEL,))
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION nexus_test_unchanged() RETURNS trigger LANGUAGE plpgsql"
            " AS $$ BEGIN RETURN NEW; END $$"
        )
        conn.execute(
            f"CREATE TRIGGER nexus_test_kept BEFORE UPDATE ON {part}"
            " FOR EACH ROW EXECUTE FUNCTION nexus_test_unchanged()"
        )
    try:
        plan = run_reprice(database_url, path)
        kept = query(
            database_url, "SELECT count(*) FROM pg_trigger WHERE tgname = 'nexus_test_kept'"
        )
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute("DROP FUNCTION nexus_test_unchanged() CASCADE")
    assert plan.writes == {"updated in place": in_part, "partitions rewritten": 1}
    assert kept == [(1,)]
    by_start = {r[0]: r for r in costs(database_url) if r[1] == MODEL}
    for start, tokens in _unpriced():
        assert by_start[start][3:] == (expected_cost(tokens, 6), "override")
