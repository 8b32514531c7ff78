"""The usage summaries a write moves: per UTC ten minutes, hour and day, and per service,
provider, model and operation, upserted in the same transaction as the raw rows.

Totals are added up where the calls are decoded, per ten minutes (few keys for a batch: calls
come mostly in time order), and rolled up to hours and days by the writer. The API answers any
range from them (`exporter.usage.totals`): whole hours from the hourly table, whole ten minutes
from the finer one, and only the rest from raw rows."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

Totals = dict[tuple[Any, str, str, str, str], list[Any]]
TEN_MINUTES = timedelta(minutes=10)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# The summaries' counts are bigint: a call counts at most MAX_TOKENS_PER_CALL (10^8) tokens of
# each kind, so a row overflows only past 9.2 * 10^10 calls in one day on one key (see
# exporter.ingest.normalize); cost_usd is unbounded numeric (migrations 003 and 014).
DAILY_UPSERT = """
INSERT INTO daily_usage_summary AS s (day, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT * FROM unnest(%s::date[], %s::text[], %s::text[], %s::text[], %s::text[], %s::int8[],
    %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::int8[],
    %s::int8[], %s::numeric[], %s::float8[])
ORDER BY 1, 2, 3, 4, 5
ON CONFLICT (day, service_name, provider, model, operation) DO UPDATE SET
    calls = s.calls + EXCLUDED.calls,
    failed_calls = s.failed_calls + EXCLUDED.failed_calls,
    unpriced_calls = s.unpriced_calls + EXCLUDED.unpriced_calls,
    input_tokens = s.input_tokens + EXCLUDED.input_tokens,
    output_tokens = s.output_tokens + EXCLUDED.output_tokens,
    cache_read_tokens = s.cache_read_tokens + EXCLUDED.cache_read_tokens,
    cache_write_tokens = s.cache_write_tokens + EXCLUDED.cache_write_tokens,
    reasoning_tokens = s.reasoning_tokens + EXCLUDED.reasoning_tokens,
    total_tokens = s.total_tokens + EXCLUDED.total_tokens,
    cost_usd = s.cost_usd + EXCLUDED.cost_usd,
    duration_ms_sum = s.duration_ms_sum + EXCLUDED.duration_ms_sum,
    updated_at = now()
"""


def _upsert_into(table: str, column: str) -> str:
    return (
        DAILY_UPSERT.replace("daily_usage_summary", table)
        .replace("(day,", f"({column},")
        .replace("%s::date[]", "%s::timestamptz[]")
    )


HOURLY_UPSERT = _upsert_into("hourly_usage_summary", "hour")
TEN_MINUTE_UPSERT = _upsert_into("ten_minute_usage_summary", "bucket")


def new_totals() -> Totals:
    return defaultdict(lambda: [0, 0, 0, 0, 0, 0, 0, 0, 0, Decimal(0), 0.0])


def floor_to(moment: datetime, unit: timedelta) -> datetime:
    """The start of the UTC `unit` (an hour, ten minutes) holding `moment`; of ten minutes, the
    instant nexus_ten_minutes gives in SQL."""
    return _EPOCH + (moment - _EPOCH) // unit * unit


def ten_minute_totals(calls: Iterable[Any]) -> Totals:
    """Totals per UTC ten minutes and dimension, in one pass over the calls."""
    totals = new_totals()
    bucket = end = datetime.max.replace(tzinfo=UTC)
    for c in calls:
        if not bucket <= c.timestamp < end:  # calls come mostly in time order: reuse the bucket
            bucket = floor_to(c.timestamp, TEN_MINUTES)
            end = bucket + TEN_MINUTES
        t = totals[(bucket, c.service_name, c.provider, c.model, c.operation)]
        t[0] += 1
        t[1] += not c.success
        t[2] += c.cost_usd is None
        t[3] += c.input_tokens
        t[4] += c.output_tokens
        t[5] += c.cache_read_tokens
        t[6] += c.cache_write_tokens
        t[7] += c.reasoning_tokens
        t[8] += c.total_tokens
        t[9] += c.cost_usd or 0
        t[10] += c.duration_ms
    return totals


def merged(parts: Iterable[Totals]) -> Totals:
    """The parts added up."""
    totals = new_totals()
    for part in parts:
        _add(totals, part)
    return totals


def difference(totals: Totals, less: Totals) -> Totals:
    result = new_totals()
    _add(result, totals)
    _add(result, less, sign=-1)
    return result


def rolled_up(totals: Totals, period: Callable[[Any], Any]) -> Totals:
    """The totals rolled up to longer periods: `period` maps a key's start to its period's
    (few keys: cheap)."""
    rolled = new_totals()
    _add(rolled, totals, period=period)
    return rolled


def _add(
    into: Totals, part: Totals, sign: int = 1, period: Callable[[Any], Any] | None = None
) -> None:
    """Adds `part` (times `sign`) into `into`, each key's start mapped by `period` if given."""
    for key, values in part.items():
        t = into[key if period is None else (period(key[0]), *key[1:])]
        for i, value in enumerate(values):
            t[i] += sign * value


def hour_of(start: datetime) -> datetime:
    return start.replace(minute=0)


def upserts(ten_minutes: Totals) -> list[tuple[str, list[list[Any]]]]:
    """The statements (with their column arrays) that move all three summaries by the totals."""
    hourly = rolled_up(ten_minutes, hour_of)
    daily = rolled_up(hourly, datetime.date)
    return [
        (DAILY_UPSERT, summary_columns(daily)),
        (HOURLY_UPSERT, summary_columns(hourly)),
        (TEN_MINUTE_UPSERT, summary_columns(ten_minutes)),
    ]


def summary_columns(totals: Totals) -> list[list[Any]]:
    """The column arrays of the upserts."""
    columns: list[list[Any]] = [[] for _ in range(16)]
    for key, values in totals.items():
        for i, v in enumerate((*key, *values)):
            columns[i].append(v)
    return columns
