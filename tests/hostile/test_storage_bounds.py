"""Bad values cost only themselves: over-long text, counts and times out of range, far-off
partitions, the same span with a moved start time. Through a real `nexus-otel serve` and a real
PostgreSQL, each one beside valid spans that must be stored."""

from __future__ import annotations

import asyncio
import base64
import os
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from exporter.core.db import migrate
from exporter.core.files import bundled_dir
from exporter.ingest import storage
from exporter.ingest.metrics import ExporterMetrics
from exporter.ingest.normalize import (
    MAX_CORRELATION_ID,
    MAX_MODEL,
    MAX_OPERATION,
    MAX_PROVIDER,
    MAX_SERVICE_NAME,
    MAX_SPAN_NAME,
    MAX_TOKENS_PER_CALL,
    TRUNCATED_MARKER,
    to_llm_call,
)
from exporter.ingest.otlp import iter_raw_spans
from exporter.ingest.rows import ATTRIBUTES_CUT, MAX_ATTRIBUTES_JSON_BYTES, CallBatch
from exporter.ingest.storage import ISOLATION_MAX_WRITES, StorageUnavailable
from exporter.ingest.writer import CallWriter
from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import llm_attributes, new_span, post, rejected_spans, request
from tests.support import ExporterProcess, fresh_database, metric_value, query, start_exporter

pytestmark = pytest.mark.e2e

# Several kB that do not compress: a btree entry of it is over PostgreSQL's 2,704-byte limit.
LONG = base64.b64encode(random.Random(17).randbytes(4500)).decode()


def _valid(count: int = 2) -> list[Span]:
    return [new_span(llm_attributes(input_tokens=500, output_tokens=50)) for _ in range(count)]


def _ids(spans: list[Span]) -> set[str]:
    return {s.span_id.hex() for s in spans}


def _at(span: Span, start: datetime, duration_ns: int = 250_000_000) -> Span:
    nanos = int(start.timestamp()) * 10**9 + start.microsecond * 1000
    span.start_time_unix_nano = nanos
    span.end_time_unix_nano = nanos + duration_ns
    return span


def _storage_up(exporter: ExporterProcess) -> float:
    text = httpx.get(f"{exporter.base_url}/metrics", timeout=30).text
    return metric_value(text, "nexus_exporter_storage_up")


# Finding 1: one over-long value poisons a whole write group.


@pytest.mark.parametrize(
    ("where", "limit"),
    [
        ("gen_ai.request.model", MAX_MODEL),
        ("service.name", MAX_SERVICE_NAME),
        ("nexus.operation", MAX_OPERATION),
        ("gen_ai.provider.name", MAX_PROVIDER),
    ],
)
def test_an_over_long_name_is_stored_cut_beside_its_neighbours(
    exporter: ExporterProcess, database_url: str, where: str, limit: int
) -> None:
    def send(_: int) -> tuple[httpx.Response, list[Span], Span]:
        service = "svc-long"
        if where == "service.name":
            hostile = new_span(llm_attributes())
            service = LONG
        else:
            hostile = new_span(llm_attributes(**{where: LONG}))
        valid = _valid(3)
        body = request([valid[0], hostile, *valid[1:]], service)
        return post(exporter.base_url, body.SerializeToString()), valid, hostile

    with ThreadPoolExecutor(2) as pool:  # two senders whose requests share write groups
        results = list(pool.map(send, range(2)))
    for response, valid, hostile in results:
        assert response.status_code == 200, response.text
        assert rejected_spans(response) == 0
        assert stored_span_ids(database_url, [*valid, hostile]) == _ids([*valid, hostile])
        column = {
            "gen_ai.request.model": "model",
            "service.name": "service_name",
            "nexus.operation": "operation",
            "gen_ai.provider.name": "provider",
        }[where]
        [(stored,)] = query(
            database_url,
            f"SELECT {column} FROM api_calls WHERE span_id = %s",  # type: ignore[arg-type]
            (hostile.span_id.hex(),),
        )
        sent = LONG.lower() if where == "gen_ai.provider.name" else LONG  # normalized
        assert stored == sent[: limit - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER
    assert _storage_up(exporter) == 1


def test_an_over_long_correlation_id_rejects_its_span_alone(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(llm_attributes(**{"nexus.correlation_id": "c" * (MAX_CORRELATION_ID + 1)}))
    at_bound = new_span(llm_attributes(**{"nexus.correlation_id": "c" * MAX_CORRELATION_ID}))
    valid = _valid()
    response = post(exporter.base_url, request([hostile, at_bound, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert f"nexus.correlation_id of 201 characters is longer than {MAX_CORRELATION_ID}" in (
        response.content.decode(errors="replace")
    )
    assert stored_span_ids(database_url, [hostile, at_bound, *valid]) == _ids([at_bound, *valid])
    assert _storage_up(exporter) == 1


async def test_a_row_error_raised_as_operational_error_is_refused_alone(database_url: str) -> None:
    """The writer tells row errors from an unreachable database by SQLSTATE: PostgreSQL's
    54000 (index row too large) comes as OperationalError, like a lost connection."""
    spans = _valid(6)
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request(spans))]
    assert all(calls)
    calls[2].model = LONG  # type: ignore[union-attr]  # past what normalize lets through
    metrics = ExporterMetrics()
    writer = CallWriter(database_url, metrics)
    await writer.start()
    try:
        result = await writer.submit(CallBatch.of(calls))  # type: ignore[arg-type]
    finally:
        await writer.stop()
    assert result.stored == 5 and result.duplicates == 0
    assert [span_id for span_id, _ in result.refused] == [calls[2].span_id]  # type: ignore[union-attr]
    assert "index row size" in result.refused[0][1]
    assert metrics.registry.get_sample_value("nexus_exporter_storage_up") == 1
    stored = _ids(spans) - {calls[2].span_id}  # type: ignore[union-attr]
    assert stored_span_ids(database_url, spans) == stored


# A database that fails for one row (a trigger raising disk_full, class 53: no row error),
# the way a disk filling up fails a write whatever its rows.
_FAIL_FOR_SPAN = """
CREATE FUNCTION nexus_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.span_id = %(span_id)s THEN
        RAISE EXCEPTION 'could not extend file: No space left on device' USING ERRCODE = '53100';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER nexus_test_disk_full BEFORE INSERT ON api_calls
    FOR EACH ROW EXECUTE FUNCTION nexus_test_disk_full();
"""


async def test_rows_stored_before_the_database_fails_mid_isolation_are_counted(
    database_url: str,
) -> None:
    """A refused row splits its write into parts; some parts are committed; then the database
    fails (disk full). The request is answered 503 and sent again, when the rows already
    stored are duplicates: so the metrics count them now, once, and the retry adds nothing."""
    spans = _valid(6)
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request(spans))]
    calls[1].model = LONG  # type: ignore[union-attr]  # refused (index row too large)
    failing = calls[4].span_id  # type: ignore[union-attr]
    metrics = ExporterMetrics()
    writer = CallWriter(database_url, metrics, connections=1)
    await _run_sql(database_url, _FAIL_FOR_SPAN.replace("%(span_id)s", f"'{failing}'"))
    await writer.start()
    try:
        with pytest.raises(StorageUnavailable, match="No space left"):
            await writer.submit(CallBatch.of(calls))  # type: ignore[arg-type]
        stored = stored_span_ids(database_url, spans)
        # Halves of [0, 1, 2] (row 1 refused) were committed; [3, 4, 5] failed on row 4.
        assert stored == {calls[0].span_id, calls[2].span_id}  # type: ignore[union-attr]
        assert _counted(metrics) == (2, 2 * 50)
        await _run_sql(database_url, _DISK_FREE_AGAIN)
        retried = await writer.submit(CallBatch.of(calls))  # type: ignore[arg-type]
    finally:
        await _run_sql(database_url, _DISK_FREE_AGAIN)  # whatever failed: the module's tests go on
        await writer.stop()
    assert (retried.stored, retried.duplicates, len(retried.refused)) == (3, 2, 1)
    assert _counted(metrics) == (5, 5 * 50)  # each stored call once
    assert stored_span_ids(database_url, spans) == _ids(spans) - {calls[1].span_id}  # type: ignore[union-attr]


_DISK_FREE_AGAIN = (
    "DROP TRIGGER IF EXISTS nexus_test_disk_full ON api_calls;"
    " DROP FUNCTION IF EXISTS nexus_test_disk_full"
)


async def _run_sql(database_url: str, statements: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute(statements)  # type: ignore[arg-type]


def _counted(metrics: ExporterMetrics) -> tuple[float, float]:
    """Rows written and output tokens, as the exporter's metrics say."""
    text = metrics.exposition().decode()
    return (
        metric_value(text, "nexus_exporter_rows_written_total"),
        metric_value(text, "nexus_llm_tokens_total", gen_ai_token_type="output"),
    )


async def test_isolating_refused_rows_is_bounded(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many bad rows cost a bounded number of writes, not one transaction per row."""
    writes = []
    real = storage.write_batch

    async def counted(*args: object) -> object:
        writes.append(1)
        return await real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(storage, "write_batch", counted)
    spans = _valid(400)
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request(spans))]
    for call in calls[::2]:
        call.model = LONG  # type: ignore[union-attr]
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        result = await storage.write_isolating(conn, [CallBatch.of(calls)])  # type: ignore[arg-type]
    assert len(writes) <= ISOLATION_MAX_WRITES
    assert result.stored + len(result.refused) == 400
    assert any(why.endswith("writes did not isolate them") for why in result.refused.values())
    assert result.stored == len(stored_span_ids(database_url, spans))


# Finding 7: overflows poison keys for a day.


def test_token_counts_past_the_plausible_range_are_rejected_and_summaries_hold(
    exporter: ExporterProcess, database_url: str
) -> None:
    service = f"tokens-{os.urandom(4).hex()}"
    huge = [new_span(llm_attributes(input_tokens=2**53)) for _ in range(1024)]
    valid = [new_span(llm_attributes(input_tokens=MAX_TOKENS_PER_CALL - 20)) for _ in range(3)]
    response = post(exporter.base_url, request([*huge, *valid], service).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 1024
    assert b"is not a token count (0 to 100,000,000)" in response.content
    later = _valid(2)
    response = post(exporter.base_url, request(later, service).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    assert stored_span_ids(database_url, [*huge, *valid, *later]) == _ids([*valid, *later])
    rows = query(
        database_url,
        "SELECT sum(calls), sum(input_tokens), sum(total_tokens) FROM daily_usage_summary"
        " WHERE service_name = %s",
        (service,),
    )
    assert rows == [(5, 3 * (MAX_TOKENS_PER_CALL - 20) + 1000, 3 * MAX_TOKENS_PER_CALL + 1100)]


def test_a_total_past_the_range_is_rejected(exporter: ExporterProcess, database_url: str) -> None:
    half = MAX_TOKENS_PER_CALL // 2
    over = new_span(llm_attributes(input_tokens=half + 1, output_tokens=half))
    valid = _valid()
    response = post(exporter.base_url, request([over, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert b"100,000,001 tokens in all is beyond the 100,000,000 a call can use" in (
        response.content
    )
    assert stored_span_ids(database_url, [over, *valid]) == _ids(valid)


def test_engagement_counts_are_bounded_and_roi_cannot_overflow(exporter: ExporterProcess) -> None:
    api = exporter.api_url
    item = f"carousel-{os.urandom(4).hex()}"
    assert httpx.post(f"{api}/api/carousels", json={"correlation_id": item}).status_code == 201
    url = f"{api}/api/carousels/{item}/engagement"
    too_many = httpx.post(url, json={"likes": 2**62, "comments": 2**62})
    assert too_many.status_code == 422
    assert "less than or equal to 1000000000000" in too_many.text
    most = 10**12
    counts = dict.fromkeys(("likes", "comments", "shares", "saves", "reach", "impressions"), most)
    assert httpx.post(url, json=counts).status_code == 201
    ranked = httpx.get(f"{api}/api/analytics/carousel-performance", params={"sort": "engagement"})
    assert ranked.status_code == 200, ranked.text
    [mine] = [row for row in ranked.json() if row["correlation_id"] == item]
    assert mine["engagement"] == 4 * most


# Finding 9: stored text bounds, end time 2^64 - 1, a reported cost of $999,999, partitions far
# away, the same trace and span id with a moved start time.


def test_stored_text_is_bounded(exporter: ExporterProcess, database_url: str) -> None:
    long_name = new_span(llm_attributes(), name="n" * (10 * 1024 * 1024))
    lists = {f"extra.{i}": [f"{i}-{j}-" + "v" * 1500 for j in range(64)] for i in range(4)}
    wide = new_span(llm_attributes(**lists))
    valid = _valid()
    response = post(exporter.base_url, request([long_name, wide, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    [(name,)] = query(
        database_url, "SELECT span_name FROM api_calls WHERE span_id = %s",
        (long_name.span_id.hex(),),
    )  # fmt: skip
    assert name == "n" * (MAX_SPAN_NAME - len(TRUNCATED_MARKER)) + TRUNCATED_MARKER
    [(size, left_out, kept)] = query(
        database_url,
        "SELECT octet_length(attributes::text), attributes -> %s,"
        " (SELECT count(*) FROM jsonb_object_keys(attributes)) FROM api_calls WHERE span_id = %s",
        (ATTRIBUTES_CUT, wide.span_id.hex()),
    )
    assert size <= MAX_ATTRIBUTES_JSON_BYTES
    assert left_out == 4 - (kept - 1) and left_out >= 3
    assert stored_span_ids(database_url, valid) == _ids(valid)


@pytest.mark.parametrize(
    ("end", "reason"),
    [
        (2**64 - 1, "more than 24 h after its start"),
        (1, "is before its start"),
    ],
)
def test_an_end_time_out_of_range_rejects_its_span_alone(
    exporter: ExporterProcess, database_url: str, end: int, reason: str
) -> None:
    hostile = new_span(llm_attributes())
    hostile.end_time_unix_nano = end
    day_long = new_span(llm_attributes(**{"gen_ai.server.time_to_first_token": 1e300}))
    day_long.end_time_unix_nano = day_long.start_time_unix_nano + 24 * 3600 * 10**9
    valid = _valid()
    response = post(exporter.base_url, request([hostile, day_long, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert reason.encode() in response.content
    assert stored_span_ids(database_url, [hostile, day_long, *valid]) == _ids([day_long, *valid])
    [(duration, first_chunk)] = query(
        database_url, "SELECT duration_ms, time_to_first_chunk_ms FROM api_calls"
        " WHERE span_id = %s", (day_long.span_id.hex(),),
    )  # fmt: skip
    assert (duration, first_chunk) == (24 * 3600 * 1000, None)  # an implausible optional measure


def test_an_implausible_reported_cost_is_ignored(
    exporter: ExporterProcess, database_url: str
) -> None:
    """A model genai-prices does not know is priced by the cost its span reports, up to $1,000;
    past that the claim is kept beside the call, which is stored unpriced."""
    unknown = {"gen_ai.request.model": "house-model-7"}
    claimed = new_span(llm_attributes(**unknown, **{"gen_ai.usage.cost": 999_999.0}))
    plausible = new_span(llm_attributes(**unknown, **{"gen_ai.usage.cost": 1000.0}))
    response = post(exporter.base_url, request([claimed, plausible]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    rows = {
        span_id: (cost, source, attributes.get("nexus.cost.ignored_reported_usd"))
        for span_id, cost, source, attributes in query(
            database_url,
            "SELECT span_id, cost_usd, cost_source, attributes FROM api_calls"
            " WHERE span_id = ANY(%s)",
            ([s.span_id.hex() for s in (claimed, plausible)],),
        )
    }
    assert rows == {
        claimed.span_id.hex(): (None, None, "999999.0"),
        plausible.span_id.hex(): (Decimal(1000), "span", None),
    }


def _partitions(database_url: str) -> set[str]:
    rows = query(
        database_url,
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'api_calls'::regclass",
    )
    return {name for (name,) in rows}


def test_spans_outside_the_window_create_no_partitions(
    exporter: ExporterProcess, database_url: str
) -> None:
    now = datetime.now(UTC)
    old = [
        _at(new_span(llm_attributes()), datetime(2000, 1, 1, tzinfo=UTC) + timedelta(days=60 * i))
        for i in range(112)
    ]  # 2000 to 2018
    too_old = [_at(new_span(llm_attributes()), now - timedelta(days=95))]  # retention: 90 days
    future = [_at(new_span(llm_attributes()), now + timedelta(days=days)) for days in (2, 40, 400)]
    inside = [
        _at(new_span(llm_attributes()), now - timedelta(days=days)) for days in (0, 10, 40, 80)
    ]
    spans = [*old, *too_old, *future, *inside]
    assert len(spans) == 120
    before = _partitions(database_url)
    response = post(exporter.base_url, request(spans).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 116
    assert b"is outside the accepted window" in response.content
    assert stored_span_ids(database_url, spans) == _ids(inside)
    months = {(now - timedelta(days=d)).strftime("api_calls_%Y_%m") for d in (0, 10, 40, 80)}
    assert _partitions(database_url) - before == months - before


def test_the_same_span_with_a_moved_start_time_is_stored_once(
    exporter: ExporterProcess, database_url: str
) -> None:
    service = f"moved-{os.urandom(4).hex()}"
    start = datetime.now(UTC).replace(minute=30, second=0, microsecond=0) - timedelta(hours=3)
    first = _at(new_span(llm_attributes()), start)
    moved = Span()
    moved.CopyFrom(first)
    _at(moved, start + timedelta(microseconds=1))
    again = Span()
    again.CopyFrom(first)
    _at(again, start + timedelta(minutes=5))
    for spans in ([first], [moved], [again, moved]):
        response = post(exporter.base_url, request(spans, service).SerializeToString())
        assert response.status_code == 200 and rejected_spans(response) == 0
    rows = query(
        database_url, 'SELECT "timestamp" FROM api_calls WHERE trace_id = %s AND span_id = %s',
        (first.trace_id.hex(), first.span_id.hex()),
    )  # fmt: skip
    assert rows == [(start,)]
    assert query(
        database_url, "SELECT sum(calls) FROM daily_usage_summary WHERE service_name = %s",
        (service,),
    ) == [(1,)]  # fmt: skip


def test_copies_across_a_month_boundary(exporter: ExporterProcess, database_url: str) -> None:
    """Within an hour of each other: stored once. Further apart, in two months: both stored."""
    boundary = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    service = f"boundary-{os.urandom(4).hex()}"
    near = _at(new_span(llm_attributes()), boundary - timedelta(minutes=20))
    near_copy = Span()
    near_copy.CopyFrom(near)
    _at(near_copy, boundary + timedelta(minutes=20))
    far = _at(new_span(llm_attributes()), boundary - timedelta(hours=3))
    far_copy = Span()
    far_copy.CopyFrom(far)
    _at(far_copy, boundary + timedelta(hours=3))
    together = _at(new_span(llm_attributes()), boundary - timedelta(minutes=1))
    together_copy = Span()
    together_copy.CopyFrom(together)
    _at(together_copy, boundary + timedelta(minutes=1))
    for spans in ([near, far], [near_copy, far_copy], [together_copy, together]):
        response = post(exporter.base_url, request(spans, service).SerializeToString())
        assert response.status_code == 200 and rejected_spans(response) == 0
    rows = query(
        database_url, "SELECT span_id, count(*) FROM api_calls WHERE service_name = %s"
        " GROUP BY span_id", (service,),
    )  # fmt: skip
    assert dict(rows) == {near.span_id.hex(): 1, far.span_id.hex(): 2, together.span_id.hex(): 1}
    assert query(
        database_url, "SELECT sum(calls) FROM daily_usage_summary WHERE service_name = %s",
        (service,),
    ) == [(4,)]  # fmt: skip


# Migration 003 on a database that already has rows.


@pytest.fixture
def database_before_bounds(postgres_server: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    older = tmp_path / "migrations"
    older.mkdir()
    for path in sorted(bundled_dir("migrations").glob("*.sql")):
        if int(path.name.split("_")[0]) < 3:
            shutil.copy(path, older / path.name)
    with fresh_database(postgres_server) as url:  # migrated to the newest: start over at 002
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        migrate(url, older)
        yield url, older


def test_migration_keeps_existing_rows_and_removes_copies(
    database_before_bounds: tuple[str, Path],
) -> None:
    url, _ = database_before_bounds
    now = datetime.now(UTC).replace(day=15, hour=12, minute=0, second=0, microsecond=0)
    spans = _valid(3)
    copy = Span()
    copy.CopyFrom(spans[0])
    _at(copy, now + timedelta(microseconds=1))
    for span in spans:
        _at(span, now)
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request([*spans, copy], "migrated"))]

    async def store(before_005: bool = False) -> None:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            if before_005:  # today's writer on the old schema: a stand-in for 005's table
                await conn.execute(
                    "CREATE TEMP TABLE api_call_duplicates (LIKE api_calls INCLUDING DEFAULTS)"
                )
                # and for 013's, 017's and 018's columns, there only while the writer writes
                await conn.execute(
                    "ALTER TABLE api_calls ADD COLUMN price_ref text,"
                    " ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,"
                    " ADD COLUMN service_tier text"
                )
                # and for 014's table (numeric cost, like 003 makes the others')
                await conn.execute(
                    "CREATE TEMP TABLE ten_minute_usage_summary (LIKE hourly_usage_summary"
                    " INCLUDING DEFAULTS, PRIMARY KEY (hour, service_name, provider, model,"
                    " operation))"
                )
                await conn.execute(
                    "ALTER TABLE ten_minute_usage_summary RENAME COLUMN hour TO bucket"
                )
            await storage.write_batch(conn, [CallBatch.of(calls)])  # type: ignore[arg-type]
            if before_005:
                await conn.execute(
                    "ALTER TABLE api_calls DROP COLUMN price_ref,"
                    " DROP COLUMN cache_write_1h_tokens, DROP COLUMN service_tier"
                )

    asyncio.run(store(before_005=True))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO carousel_performance (correlation_id, likes, comments, shares, saves)"
            " VALUES ('huge', %s, %s, %s, %s)",
            (2**62, 2**62, 2**62, 2**62),
        )
    assert query(url, "SELECT calls FROM daily_usage_summary") == [(4,)]
    migrate(url)
    assert query(url, "SELECT count(*) FROM api_calls") == [(3,)]
    assert query(url, "SELECT calls, input_tokens FROM daily_usage_summary") == [(3, 1500)]
    assert query(url, "SELECT calls FROM hourly_usage_summary") == [(3,)]
    # 014 builds the ten-minute summary from the rows there are
    assert query(url, "SELECT bucket, calls FROM ten_minute_usage_summary") == [(now, 3)]
    assert query(url, 'SELECT "timestamp" FROM api_calls WHERE span_id = %s',
                 (copy.span_id.hex(),)) == [(now,)]  # fmt: skip
    assert query(url, "SELECT engagement FROM v_carousel_roi WHERE correlation_id = 'huge'") == [
        (Decimal(2**64),)
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT nexus_ensure_partition('2031-01-01')")
        indexes = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename = 'api_calls_2031_01'"
        ).fetchall()
    assert any("UNIQUE INDEX" in d and "(trace_id, span_id)" in d for (d,) in indexes)
    asyncio.run(store())  # the same rows, both copies, again: nothing new
    assert query(url, "SELECT count(*) FROM api_calls") == [(3,)]


@pytest.fixture(scope="module")
def exporter_with_short_retention(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    process = start_exporter(
        database_url, tmp_path_factory.mktemp("retention"), {"NEXUS_RETENTION_DAYS": "5"}
    )
    try:
        yield process
    finally:
        process.stop()


def test_the_window_follows_the_retention_setting(
    exporter_with_short_retention: ExporterProcess, database_url: str
) -> None:
    now = datetime.now(UTC)
    old = _at(new_span(llm_attributes()), now - timedelta(days=6))
    recent = _at(new_span(llm_attributes()), now - timedelta(days=4))
    response = post(
        exporter_with_short_retention.base_url, request([old, recent]).SerializeToString()
    )
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert stored_span_ids(database_url, [old, recent]) == _ids([recent])
