"""The hourly summaries the API answers from: exactly once, like the raw rows."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

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
