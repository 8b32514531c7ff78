"""The summaries the API answers from (hourly, ten-minute): exactly once, like the raw rows;
and totals over any range made of them equal the raw rows'."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from exporter.ingest.summaries import TEN_MINUTES, floor_to
from exporter.usage.totals import Scope, usage, usage_query
from tests.api.conftest import call_spec
from tests.ingest.otlp_helpers import make_spans
from tests.support import query

START = datetime(2026, 11, 10, 9, 59, 30, tzinfo=UTC)


def test_replayed_batches_count_once_in_hourly_summaries(
    ingest: Callable[..., None], database_url: str
) -> None:
    specs = [call_spec(START + timedelta(seconds=20 * i), f"0.0{i + 1}") for i in range(6)]
    specs.append(call_spec(START, None, input_tokens=7, output_tokens=3))
    spans = make_spans(specs, "carousel-bot")
    ingest(spans)
    ingest(spans)  # a replay: no new rows, no new summary counts
    ingest(spans[2:4])
    # Only this test's hours: the other tests of the module store calls of another day.
    window = (START - timedelta(hours=1), START + timedelta(hours=2))
    assert query(
        database_url,
        'SELECT count(*) FROM api_calls WHERE "timestamp" >= %s AND "timestamp" < %s',
        window,
    ) == [(7,)]
    hourly = query(
        database_url,
        "SELECT hour, sum(calls), sum(unpriced_calls), sum(total_tokens), sum(cost_usd)"
        " FROM hourly_usage_summary WHERE hour >= %s AND hour < %s GROUP BY hour ORDER BY hour",
        window,
    )
    raw = query(
        database_url,
        "SELECT date_trunc('hour', \"timestamp\", 'UTC'), count(*),"
        " count(*) FILTER (WHERE cost_usd IS NULL), sum(total_tokens), sum(cost_usd)"
        ' FROM api_calls WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1 ORDER BY 1',
        window,
    )
    cost = [Decimal(str(spec["attributes"]["nexus.cost.usd"])) for spec in specs[:6]]
    assert (
        hourly
        == [
            (
                datetime(2026, 11, 10, 9, tzinfo=UTC),
                3,
                1,
                310,
                cost[0] + cost[1],
            ),  # :30, :50, the $0
            (datetime(2026, 11, 10, 10, tzinfo=UTC), 4, 0, 600, sum(cost[2:])),
        ]
    )
    assert raw == hourly
    tens = query(
        database_url,
        "SELECT bucket, sum(calls), sum(unpriced_calls), sum(total_tokens), sum(cost_usd)"
        " FROM ten_minute_usage_summary WHERE bucket >= %s AND bucket < %s GROUP BY 1 ORDER BY 1",
        window,
    )
    raw_tens = query(
        database_url,
        "SELECT date_bin('10 minutes', \"timestamp\", TIMESTAMPTZ '2026-01-01 00:00+00'),"
        " count(*), count(*) FILTER (WHERE cost_usd IS NULL), sum(total_tokens), sum(cost_usd)"
        ' FROM api_calls WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1 ORDER BY 1',
        window,
    )
    # 9:59:30 and :50 in one ten minutes, the rest from 10:00:10 to 10:01:10 in the next.
    assert [row[:2] for row in tens] == [
        (datetime(2026, 11, 10, 9, 50, tzinfo=UTC), 3),
        (datetime(2026, 11, 10, 10, 0, tzinfo=UTC), 4),
    ]
    assert tens == raw_tens


DAY = datetime(2026, 11, 12, tzinfo=UTC)
_RAW_TOTALS = (
    "SELECT count(*), count(*) FILTER (WHERE NOT success), count(*) FILTER (WHERE cost_usd IS"
    " NULL), coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),"
    " coalesce(sum(cost_usd), 0), coalesce(sum(duration_ms), 0) FROM api_calls"
    ' WHERE "timestamp" >= %s AND "timestamp" < %s AND provider = ANY(%s)'
)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("12:10", "12:50"),  # within one hour, most of it: the rest of the hour is read
        ("12:10", "12:25"),  # within one hour, a quarter of it
        ("12:05", "14:50"),  # two long edges around a whole hour
        ("12:40", "14:20"),  # two short edges
        ("12:45", "13:15"),  # across an hour boundary, no whole hour
        ("12:00", "14:00"),  # whole hours
        ("11:50", "12:00"),  # an hour without calls
        ("13:00", "13:59:59.999999"),  # all of an hour but its last microsecond
        ("12:11", "12:19"),  # within ten minutes, most of them: the rest is read
        ("12:13", "12:17"),  # within ten minutes, less than half
        ("12:03", "12:57"),  # whole ten minutes of one hour, long pieces at both ends
        ("12:08", "13:42:30"),  # short pieces, ten minutes and a whole hour between them
        ("12:17", "12:23"),  # across a ten-minute boundary, no whole ten minutes
        ("13:50", "14:10"),  # whole ten minutes on both sides of an hour boundary
    ],
)
@pytest.mark.parametrize("providers", [("openai", "anthropic"), ("anthropic",)])
def test_totals_over_any_range_equal_the_raw_rows(
    ingest: Callable[..., None], database_url: str, start: str, end: str, providers: tuple[str]
) -> None:
    """Usage totals, whole hours and ten minutes from the summaries and the pieces left from
    the rows (or a long piece as its ten minutes' summary less the rest of them), equal the raw
    rows' totals exactly."""
    _calls_of_the_day(ingest, database_url)
    bounds = [DAY + timedelta(hours=float(t[:2])) + _minutes(t[3:]) for t in (start, end)]
    scope = Scope(provider=providers[0]) if len(providers) == 1 else Scope()
    with psycopg.connect(database_url) as conn:
        totals = usage(conn, bounds[0], bounds[1], scope)[0]
    raw = query(database_url, _RAW_TOTALS, (*bounds, list(providers)))[0]
    assert [totals[c] for c in ("calls", "failed_calls", "unpriced_calls")] == list(raw[:3])
    assert (totals["input_tokens"], totals["output_tokens"], totals["cost_usd"]) == raw[3:6]
    assert totals["duration_ms_sum"] == pytest.approx(raw[6], rel=1e-12)


def _calls_of_the_day(ingest: Callable[..., None], database_url: str) -> None:
    """Calls from 12:00 to 14:28 on DAY, every 4 minutes, at seconds of their own; once."""
    if not query(database_url, 'SELECT FROM api_calls WHERE "timestamp"::date = %s', (DAY,)):
        ingest(
            [
                call_spec(
                    DAY + timedelta(hours=12, minutes=m, seconds=m % 7),
                    None if m % 9 == 0 else f"0.00{m % 10}1",
                    provider="anthropic" if m % 3 else "openai",
                    input_tokens=100 + m,
                    error="timeout" if m % 11 == 0 else None,
                    duration_ms=200 + m / 7,
                )
                for m in range(0, 150, 4)  # 12:00 to 14:28, every 4 minutes
            ]
        )


def _minutes(text: str) -> timedelta:
    minutes, _, seconds = text.partition(":")
    return timedelta(minutes=int(minutes), seconds=float(seconds or 0))


@pytest.mark.parametrize(
    ("start", "end"),
    [("12:05", "14:25"), ("12:17", "12:43"), ("13:10", "13:30"), ("11:55", "12:06:30")],
)
def test_totals_per_hour_and_provider_equal_the_raw_rows(
    ingest: Callable[..., None], database_url: str, start: str, end: str
) -> None:
    """Grouped (the dashboard's hourly series): no rest taken away, so a group never comes out
    as a row of zeros; each hour's and provider's totals are the raw rows'."""
    _calls_of_the_day(ingest, database_url)
    bounds = [DAY + timedelta(hours=float(t[:2])) + _minutes(t[3:]) for t in (start, end)]
    with psycopg.connect(database_url) as conn:
        rows = usage(conn, bounds[0], bounds[1], group_by=("hour", "provider"))
    raw = query(
        database_url,
        "SELECT date_trunc('hour', \"timestamp\", 'UTC'), provider, count(*),"
        " coalesce(sum(input_tokens), 0), coalesce(sum(cost_usd), 0) FROM api_calls"
        ' WHERE "timestamp" >= %s AND "timestamp" < %s GROUP BY 1, 2 ORDER BY 1, 2',
        bounds,
    )
    assert raw, "a range without calls tests nothing"
    assert [
        (r["hour"], r["provider"], r["calls"], r["input_tokens"], r["cost_usd"]) for r in rows
    ] == raw


@pytest.mark.parametrize("seed", range(3))
def test_no_range_reads_more_than_five_minutes_of_raw_rows_at_either_end(seed: int) -> None:
    """Any range, to the microsecond: the raw rows it reads (added, or taken from a summary)
    lie in at most two ten minutes, five minutes of each at most; all else is summaries."""
    rng = random.Random(seed)
    for _ in range(2000):
        start = DAY + timedelta(microseconds=rng.randrange(3 * 86_400 * 10**6))
        end = start + timedelta(microseconds=rng.randrange(1, 2 * 86_400 * 10**6))
        _, params = usage_query(start, end, Scope(), ())
        read: dict[datetime, timedelta] = {}
        for name in (k.removesuffix("_start") for k in params if k.endswith("_start")):
            if name.startswith(("edge", "rest")):
                a, b = params[f"{name}_start"], params[f"{name}_end"]
                assert floor_to(a, TEN_MINUTES) == floor_to(b - MICROSECOND, TEN_MINUTES)
                read[floor_to(a, TEN_MINUTES)] = read.get(floor_to(a, TEN_MINUTES), ZERO) + b - a
        assert len(read) <= 2 and all(t <= timedelta(minutes=5) for t in read.values()), (
            start,
            end,
            read,
        )


MICROSECOND, ZERO = timedelta(microseconds=1), timedelta()


# Floats an app computes (a price times tokens) carry more than the 12 decimal places a row
# keeps: the row rounds each (half away from zero), and so must everything that adds them up.
LONG_COSTS = ("3.3333333333333335e-07", "4.2000000000000004e-05", "0.00030000000000000003")
LONG_AT = datetime(2026, 11, 14, 10, 0, tzinfo=UTC)


def test_summaries_add_up_the_costs_their_rows_keep(
    ingest: Callable[..., None], database_url: str
) -> None:
    specs = [call_spec(LONG_AT + timedelta(minutes=i), c) for i, c in enumerate(LONG_COSTS * 3)]
    ingest(specs, "long-costs")
    rows = [
        cost
        for (cost,) in query(
            database_url,
            "SELECT cost_usd FROM api_calls WHERE service_name = 'long-costs' ORDER BY 1",
        )
    ]
    each = [Decimal("0.000000333333"), Decimal("0.000042000000"), Decimal("0.000300000000")]
    assert rows == sorted(each * 3)
    for table, key in (
        ("ten_minute_usage_summary", "bucket"),
        ("hourly_usage_summary", "hour"),
        ("daily_usage_summary", "day"),
    ):
        assert query(
            database_url,
            f"SELECT {key}, calls, cost_usd FROM {table} WHERE service_name = 'long-costs'",
        ) == [(LONG_AT.date() if key == "day" else LONG_AT, 9, 3 * sum(each))], table
    # A budget of $0.000001 over three calls of $3.3333333333333335e-07: $0.000000999999 spent,
    # short of the amount (a warning), whether its spend is read from the rows or the summaries.
    ingest([call_spec(LONG_AT + timedelta(minutes=i), LONG_COSTS[0]) for i in range(3)], "tiny")
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO cost_budgets (name, period_type, budget_usd, service_name)"
            " VALUES ('tiny', 'daily', 0.000001, 'tiny') RETURNING id"
        ).fetchone()
        assert row is not None
        for now in (LONG_AT + timedelta(minutes=4), LONG_AT + timedelta(hours=2)):
            status = conn.execute(
                "SELECT spend_usd, state, exceeded_at FROM nexus_budget_status(%s, %s)",
                (now, row[0]),
            ).fetchone()
            assert status == (Decimal("0.000000999999"), "warning", None), now
