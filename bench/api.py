"""GET /api/dashboard/stats at 1 and 10 million rows in api_calls, against the same question
answered by plain aggregates over the raw rows, measured in the same run on the same data; and
budget spend on the same rows (`bench.budgets`).

Rows are generated inside PostgreSQL (INSERT ... SELECT over generate_series, in chunks shown
as progress), spread over the last 30 days; the summaries are then built from them as the writer
would have, and the table is analyzed."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from starlette.testclient import TestClient

from bench import budgets
from bench.common import Result
from exporter.api.app import create_api_app
from exporter.core.db import EmbeddedPostgres, ensure_partitions_around
from exporter.core.settings import Settings
from exporter.usage.periods import period_bounds
from tests.support import fresh_database

DAYS = 30
CHUNK = 250_000
REPEATS = 25
TARGET_MS = 50.0
TARGET_RATIO = 20.0
ZONE = "UTC"

_GENERATE = """
INSERT INTO api_calls (trace_id, span_id, "timestamp", service_name, provider, model,
    gen_ai_operation, operation, correlation_id, input_tokens, output_tokens, total_tokens,
    cost_usd, duration_ms, success, usage_source)
SELECT md5(g::text), lpad(to_hex(g), 16, '0'),
       %(now)s::timestamptz - (%(span)s::interval * random()),
       'svc-' || (g %% 3),
       (ARRAY['groq', 'anthropic', 'gcp.gemini', 'openai'])[1 + g %% 4],
       (ARRAY['llama-3.3-70b-versatile', 'claude-sonnet-4-5', 'gemini-2.5-flash',
              'gpt-4o-mini'])[1 + g %% 4],
       'chat',
       (ARRAY['fact_generation', 'caption', 'hashtags'])[1 + g %% 3],
       'carousel-' || (g %% 5000),
       tokens.i, tokens.o, tokens.i + tokens.o,
       CASE WHEN g %% 50 = 0 THEN NULL ELSE (tokens.i * 3 + tokens.o * 15) / 1e6 END,
       100 + random() * 2000, g %% 40 <> 0, 'response'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g,
     LATERAL (SELECT (50 + random() * 4000{each})::int AS i,
                     (10 + random() * 1500{each})::int AS o) tokens
"""
# Refers to the row, so PostgreSQL draws the token counts again for each call instead of once
# per statement: calls of a model then have token counts (and costs) of their own.
_EACH_CALL = " + 0 * g"
_SUMMARIES = """
TRUNCATE ten_minute_usage_summary, hourly_usage_summary, daily_usage_summary;
INSERT INTO ten_minute_usage_summary (bucket, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT nexus_ten_minutes("timestamp"), service_name, provider, model, operation,
       count(*), count(*) FILTER (WHERE NOT success), count(*) FILTER (WHERE cost_usd IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(reasoning_tokens), sum(total_tokens), coalesce(sum(cost_usd), 0), sum(duration_ms)
FROM api_calls GROUP BY 1, 2, 3, 4, 5;
INSERT INTO hourly_usage_summary (hour, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT date_trunc('hour', bucket, 'UTC'), service_name, provider, model, operation, sum(calls),
       sum(failed_calls), sum(unpriced_calls), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
       sum(total_tokens), sum(cost_usd), sum(duration_ms_sum)
FROM ten_minute_usage_summary GROUP BY 1, 2, 3, 4, 5;
INSERT INTO daily_usage_summary (day, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT (hour AT TIME ZONE 'UTC')::date, service_name, provider, model, operation, sum(calls),
       sum(failed_calls), sum(unpriced_calls), sum(input_tokens), sum(output_tokens),
       sum(cache_read_tokens), sum(cache_write_tokens), sum(reasoning_tokens),
       sum(total_tokens), sum(cost_usd), sum(duration_ms_sum)
FROM hourly_usage_summary GROUP BY 1, 2, 3, 4, 5;
ANALYZE api_calls, ten_minute_usage_summary, hourly_usage_summary, daily_usage_summary;
"""
# The dashboard's question over raw rows: today, yesterday to the same time, all of yesterday,
# today's hourly series per provider, and the latest calls. The three totals come from one pass
# over yesterday and today, each with its FILTER, as one would write it by hand.
_PERIOD_TOTALS = ", ".join(
    f"count(*) FILTER (WHERE {w}), count(*) FILTER (WHERE {w} AND NOT success),"
    f" count(*) FILTER (WHERE {w} AND cost_usd IS NULL), sum(input_tokens) FILTER (WHERE {w}),"
    f" sum(output_tokens) FILTER (WHERE {w}), sum(total_tokens) FILTER (WHERE {w}),"
    f" sum(cost_usd) FILTER (WHERE {w}), sum(duration_ms) FILTER (WHERE {w})"
    for w in (
        '"timestamp" >= %(today)s',
        '"timestamp" < %(yesterday_until)s',
        '"timestamp" < %(today)s',
    )
)
_ALL_TOTALS = (
    f"SELECT {_PERIOD_TOTALS} FROM api_calls"
    ' WHERE "timestamp" >= %(yesterday)s AND "timestamp" < %(end)s'
)
_TOTALS = (
    "SELECT count(*), count(*) FILTER (WHERE NOT success), count(*) FILTER (WHERE cost_usd IS"
    " NULL), sum(input_tokens), sum(output_tokens), sum(total_tokens), sum(cost_usd),"
    ' sum(duration_ms) FROM api_calls WHERE "timestamp" >= %s AND "timestamp" < %s'
)
_HOURLY = (
    "SELECT date_trunc('hour', \"timestamp\", 'UTC') AS hour, provider, count(*),"
    " sum(total_tokens), sum(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL) FROM api_calls"
    ' WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1, 2 ORDER BY 1, 2'
)
_RECENT = 'SELECT * FROM api_calls ORDER BY "timestamp" DESC LIMIT 10'


def table_sizes(args: argparse.Namespace, chosen: list[int] | None) -> list[int]:
    return sorted(chosen or ([200_000] if args.quick else [1_000_000, 10_000_000]))


def grown_tables(
    console: Console, sizes: list[int], now: datetime, tokens_per_call: bool = False
) -> Iterator[tuple[str, int]]:
    """A fresh embedded database whose api_calls grows to each size in turn: (url, size).
    `tokens_per_call`: token counts drawn for each call, not once per chunk of calls."""
    with tempfile.TemporaryDirectory(prefix="nexus-bench-rows-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            with fresh_database(server.url) as url:
                _prepare_partitions(url, now)
                present = 0
                for size in sizes:
                    _generate(console, url, now, present, size, tokens_per_call)
                    present = size
                    yield url, size
        finally:
            server.stop()


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    now = worst_minute(datetime.now(UTC))
    sizes = table_sizes(args, getattr(args, "api_rows", None) or args.rows)
    results = []
    for url, size in grown_tables(console, sizes, now):
        results += [_measure(console, url, now, size), budgets.measure(console, url, now, size)]
    return results


def worst_minute(moment: datetime) -> datetime:
    """The last instant five minutes past a UTC ten minutes' start, at or before `moment`.
    "Yesterday up to now" ends inside ten minutes, read from raw rows: there, the most of them
    (five minutes either way, the piece or the rest of its ten minutes), so the run does not
    depend on when it was started."""
    five_past = moment.replace(minute=moment.minute // 10 * 10 + 5, second=0, microsecond=0)
    return five_past if five_past <= moment else five_past - timedelta(minutes=10)


def _prepare_partitions(url: str, now: datetime) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions_around(conn, now.date())
        ensure_partitions_around(conn, (now - timedelta(days=DAYS)).date())


def _generate(
    console: Console, url: str, now: datetime, present: int, size: int, tokens_per_call: bool
) -> None:
    """Bulk load as one would: indexes dropped, rows in, indexes built again (a sort each,
    instead of millions of random B-tree inserts)."""
    columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:,}")]
    with (
        Progress(*columns, TimeRemainingColumn(), console=console) as progress,
        psycopg.connect(url, autocommit=True) as conn,
    ):
        conn.execute("SET maintenance_work_mem = '256MB'")
        indexes = _drop_indexes(conn)
        task = progress.add_task(f"api_calls to {size:,} rows", total=size, completed=present)
        generate = _GENERATE.replace("{each}", _EACH_CALL if tokens_per_call else "")
        for first in range(present + 1, size + 1, CHUNK):
            last = min(first + CHUNK - 1, size)
            params = {"now": now, "span": f"{DAYS} days", "first": first, "last": last}
            conn.execute(generate, params)  # type: ignore[arg-type]
            progress.update(task, completed=last)
        task = progress.add_task("indexes", total=len(indexes))
        for statement in indexes:
            conn.execute(statement)  # type: ignore[arg-type]
            progress.advance(task)
        progress.add_task("summaries and ANALYZE", total=None)
        conn.execute(_SUMMARIES)


def _drop_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    """Drops api_calls' indexes and unique key; returns the statements that recreate them."""
    key = conn.execute(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'api_calls_span_key'"
    ).fetchone()
    rows = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'api_calls'"
        " AND indexname <> 'api_calls_span_key'"
    ).fetchall()
    if key:
        conn.execute("ALTER TABLE api_calls DROP CONSTRAINT api_calls_span_key")
    for name, _ in rows:
        conn.execute(f'DROP INDEX "{name}"')  # type: ignore[arg-type]
    # pg_indexes shows a partitioned index as "ON ONLY" the parent; the partitions need it too.
    statements = [definition.replace(" ON ONLY ", " ON ") for _, definition in rows]
    if key:
        statements.insert(0, f"ALTER TABLE api_calls ADD CONSTRAINT api_calls_span_key {key[0]}")
    # Each monthly partition keeps its own unique key on (trace_id, span_id): rebuilt once at
    # the end too, not maintained row by row through the bulk load.
    partition_keys = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename LIKE 'api_calls\\_%' AND indexname LIKE '%\\_span\\_key'"
    ).fetchall()
    for name, _ in partition_keys:
        conn.execute(f'DROP INDEX "{name}"')  # type: ignore[arg-type]
    statements += [definition for _, definition in partition_keys]
    return statements


def _median_ms(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    call()  # warm caches and plans
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def _measure(console: Console, url: str, now: datetime, size: int) -> Result:
    app = create_api_app(Settings(timezone=ZONE), url, clock=lambda: now)
    with TestClient(app) as client:

        def api_call() -> None:
            response = client.get("/api/dashboard/stats")
            response.raise_for_status()

        api_ms = _median_ms(api_call)
        answer = client.get("/api/dashboard/stats").json()
    with psycopg.connect(url) as conn:
        start, end = period_bounds(conn, "daily", ZONE, now)
        yesterday = start - timedelta(days=1)

        periods = {
            "today": start,
            "yesterday": yesterday,
            "yesterday_until": yesterday + (now - start),
            "end": end,
        }

        def raw_call() -> None:
            conn.execute(_ALL_TOTALS, periods).fetchall()
            conn.execute(_HOURLY, (start, end)).fetchall()
            conn.execute(_RECENT).fetchall()

        raw_ms = _median_ms(raw_call, repeats=max(5, REPEATS // 5))
        raw_today = conn.execute(_TOTALS, (start, end)).fetchone()
        together = conn.execute(_ALL_TOTALS, periods).fetchone()
    assert together is not None and raw_today is not None, "no answer"
    # Counts and numeric sums exactly (float sums may add up in another order).
    assert together[:7] == raw_today[:7], "the one-pass totals differ from today's own"
    assert raw_today is not None and answer["today"]["calls"] == raw_today[0], "answers differ"
    # The API writes money as floats: the nearest float to the exact sum of the raw rows.
    assert answer["today"]["cost_usd"] == float(raw_today[6] or 0), "costs differ"
    ratio = raw_ms / api_ms
    console.print(
        f"dashboard stats at {size:,} rows: {api_ms:.1f} ms (raw aggregates {raw_ms:.1f} ms,"
        f" today {raw_today[0]:,} calls)"
    )
    target = f"< {TARGET_MS:.0f} ms, >= {TARGET_RATIO:.0f}x" if size >= 10_000_000 else "report"
    ok = size < 10_000_000 or (api_ms < TARGET_MS and ratio >= TARGET_RATIO)
    return Result(
        name=f"GET /api/dashboard/stats, {size:,} rows",
        result=f"{api_ms:.1f} ms median",
        baseline=f"{raw_ms:.1f} ms raw aggregates",
        ratio=ratio,
        target=target,
        ok=ok,
    )
