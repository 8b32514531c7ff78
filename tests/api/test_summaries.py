"""The hourly summaries the API answers from: exactly once, like the raw rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg
import pytest

from exporter.usage.totals import Scope, usage
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
    assert query(database_url, "SELECT count(*) FROM api_calls") == [(7,)]
    hourly = query(
        database_url,
        "SELECT hour, sum(calls), sum(unpriced_calls), sum(total_tokens), sum(cost_usd)"
        " FROM hourly_usage_summary GROUP BY hour ORDER BY hour",
    )
    raw = query(
        database_url,
        "SELECT date_trunc('hour', \"timestamp\", 'UTC'), count(*),"
        " count(*) FILTER (WHERE cost_usd IS NULL), sum(total_tokens), sum(cost_usd)"
        " FROM api_calls GROUP BY 1 ORDER BY 1",
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
    ],
)
@pytest.mark.parametrize("providers", [("openai", "anthropic"), ("anthropic",)])
def test_totals_over_any_range_equal_the_raw_rows(
    ingest: Callable[..., None], database_url: str, start: str, end: str, providers: tuple[str]
) -> None:
    """Usage totals, whole hours from the summaries and edges from the rows (or a long edge as
    its hour's summary less the rest of the hour), equal the raw rows' totals exactly."""
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
    bounds = [DAY + timedelta(hours=float(t[:2])) + _minutes(t[3:]) for t in (start, end)]
    scope = Scope(provider=providers[0]) if len(providers) == 1 else Scope()
    with psycopg.connect(database_url) as conn:
        totals = usage(conn, bounds[0], bounds[1], scope)[0]
    raw = query(database_url, _RAW_TOTALS, (*bounds, list(providers)))[0]
    assert [totals[c] for c in ("calls", "failed_calls", "unpriced_calls")] == list(raw[:3])
    assert (totals["input_tokens"], totals["output_tokens"], totals["cost_usd"]) == raw[3:6]
    assert totals["duration_ms_sum"] == pytest.approx(raw[6], rel=1e-12)


def _minutes(text: str) -> timedelta:
    minutes, _, seconds = text.partition(":")
    return timedelta(minutes=int(minutes), seconds=float(seconds or 0))
