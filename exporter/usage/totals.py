"""Usage totals over any time range, answered from the summaries.

Whole UTC hours inside the range come from `hourly_usage_summary`, whole ten minutes of the
partial hours at its edges (a zone such as Asia/Kolkata starts its days at :30; "yesterday up to
this time") from `ten_minute_usage_summary`, and only what is left, less than ten minutes at
each end, from `api_calls` through its time index. Of such a piece longer than half its ten
minutes, the rest of the ten minutes is read instead and taken from their summary: at most five
minutes of raw rows at each end. So a day, a week or a month costs a few hundred summary rows,
not a scan of millions of raw rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

from exporter.ingest.summaries import TEN_MINUTES, floor_to

HOUR = timedelta(hours=1)
TOTALS = (
    "calls", "failed_calls", "unpriced_calls", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "total_tokens", "cost_usd",
    "duration_ms_sum",
)  # fmt: skip
# Raw-row expressions equal to one summary row per call, in TOTALS' order.
_RAW_TOTALS = (
    "1", "(NOT success)::int", "(cost_usd IS NULL)::int", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "total_tokens",
    "coalesce(cost_usd, 0)", "duration_ms",
)  # fmt: skip
# What a result can be grouped by: (hourly summary, ten-minute summary, raw row) expressions.
DIMENSIONS = {
    "service_name": ("service_name", "service_name", "service_name"),
    "provider": ("provider", "provider", "provider"),
    "model": ("model", "model", "model"),
    "operation": ("operation", "operation", "operation"),
    "hour": (
        "hour",
        "date_trunc('hour', bucket, 'UTC')",
        "date_trunc('hour', \"timestamp\", 'UTC')",
    ),
}


@dataclass(frozen=True)
class Scope:
    """Which calls count: None matches everything."""

    service_name: str | None = None
    provider: str | None = None
    model: str | None = None
    operation: str | None = None

    def condition(self) -> tuple[str, dict[str, str]]:
        """A SQL `AND ...` fragment over the columns that summaries and raw rows share."""
        params = {f"scope_{k}": v for k, v in self.__dict__.items() if v is not None}
        clause = "".join(f" AND {key[6:]} = %({key})s" for key in params)
        return clause, params


def ceil_to(moment: datetime, unit: timedelta) -> datetime:
    floored = floor_to(moment, unit)
    return floored if floored == moment else floored + unit


def split_range(
    start: datetime, end: datetime, unit: timedelta = HOUR
) -> tuple[tuple[datetime, datetime], list[Any]]:
    """The whole-`unit` part of [start, end) and the partial pieces around it."""
    first, last = ceil_to(start, unit), floor_to(end, unit)
    if first > last:  # both within one unit
        return (start, start), [(start, end)] if start < end else []
    edges = [(a, b) for a, b in ((start, first), (last, end)) if a < b]
    return (first, last), edges


def usage(
    conn: psycopg.Connection[Any],
    start: datetime,
    end: datetime,
    scope: Scope = Scope(),
    group_by: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Totals of the calls in [start, end), one row per group (one row when ungrouped)."""
    statement, params = usage_query(start, end, scope, group_by)
    with conn.cursor(row_factory=dict_row) as cursor:
        rows = cursor.execute(statement, params).fetchall()  # type: ignore[arg-type]
    return [_clean(row) for row in rows]


def usage_query(
    start: datetime, end: datetime, scope: Scope, group_by: Sequence[str]
) -> tuple[str, dict[str, Any]]:
    for name in group_by:
        if name not in DIMENSIONS:
            raise ValueError(f"cannot group by {name!r}")
    (hours_start, hours_end), edges = split_range(start, end)
    tens, pieces = _ten_minutes_of(edges)
    # Only ungrouped: a group whose calls all lie in the rest of the ten minutes would come out
    # as a row of zeros rather than no row.
    tens_less, pieces = _rest_of_ten_minutes(pieces) if not group_by else ([], pieces)
    scope_sql, scope_params = scope.condition()
    params: dict[str, Any] = {**scope_params, "hours_start": hours_start, "hours_end": hours_end}
    hourly, ten_minute, raw = ([f"{DIMENSIONS[d][i]} AS {d}" for d in group_by] for i in range(3))
    parts = [
        f"SELECT {', '.join([*hourly, *TOTALS])} FROM hourly_usage_summary"
        f" WHERE hour >= %(hours_start)s AND hour < %(hours_end)s{scope_sql}"
    ]
    if tens:
        parts.append(
            f"SELECT {', '.join([*ten_minute, *TOTALS])} FROM ten_minute_usage_summary"
            f" WHERE ({_ranges(tens, 'tens', params, 'bucket')}){scope_sql}"
        )
    if pieces:
        columns = [f"{e} AS {c}" for e, c in zip(_RAW_TOTALS, TOTALS, strict=True)]
        parts.append(
            f"SELECT {', '.join([*raw, *columns])} FROM api_calls"
            f" WHERE ({_ranges(pieces, 'edge', params)}){scope_sql}"
        )
    if tens_less:
        params["tens_less"] = [bucket for bucket, _ in tens_less]
        rest = [piece for _, rests in tens_less for piece in rests]
        less = [f"-({e}) AS {c}" for e, c in zip(_RAW_TOTALS, TOTALS, strict=True)]
        parts.append(
            f"SELECT {', '.join(TOTALS)} FROM ten_minute_usage_summary"
            f" WHERE bucket = ANY(%(tens_less)s){scope_sql}"
        )
        parts.append(
            f"SELECT {', '.join(less)} FROM api_calls"
            f" WHERE ({_ranges(rest, 'rest', params)}){scope_sql}"
        )
    sums = [f"coalesce(sum({c}), 0) AS {c}" for c in TOTALS]
    statement = f"SELECT {', '.join([*group_by, *sums])} FROM ({' UNION ALL '.join(parts)}) u"
    if group_by:
        statement += f" GROUP BY {', '.join(group_by)} ORDER BY {', '.join(group_by)}"
    return statement, params


def _ten_minutes_of(edges: list[Any]) -> tuple[list[Any], list[Any]]:
    """Of the partial hours, the whole ten minutes inside them, and the pieces left."""
    tens, pieces = [], []
    for a, b in edges:
        whole, rest = split_range(a, b, TEN_MINUTES)
        tens += [whole] if whole[0] < whole[1] else []
        pieces += rest
    return tens, pieces


def _rest_of_ten_minutes(
    pieces: list[Any],
) -> tuple[list[tuple[datetime, list[tuple[datetime, datetime]]]], list[Any]]:
    """Of the pieces, those longer than half of the UTC ten minutes they lie in, each as its
    ten minutes and the rest of them (to be taken from their summary); and the other pieces."""
    less, kept = [], []
    for a, b in pieces:
        bucket = floor_to(a, TEN_MINUTES)
        if b - a > TEN_MINUTES / 2 and b <= bucket + TEN_MINUTES:
            rest = ((bucket, a), (b, bucket + TEN_MINUTES))
            less.append((bucket, [(x, y) for x, y in rest if x < y]))
        else:
            kept.append((a, b))
    return less, kept


def _ranges(
    ranges: Sequence[tuple[datetime, datetime]],
    name: str,
    params: dict[str, Any],
    column: str = '"timestamp"',
) -> str:
    """A condition on `column`: within any of the ranges (each [start, end))."""
    for i, (a, b) in enumerate(ranges):
        params[f"{name}{i}_start"], params[f"{name}{i}_end"] = a, b
    return " OR ".join(
        f"({column} >= %({name}{i}_start)s AND {column} < %({name}{i}_end)s)"
        for i in range(len(ranges))
    )


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    for key in TOTALS:
        value = row[key]
        row[key] = Decimal(value) if key == "cost_usd" else float(value)
        if key not in ("cost_usd", "duration_ms_sum"):
            row[key] = int(value)
    return row


def totals_public(row: dict[str, Any]) -> dict[str, Any]:
    """Adds the averages and rates to a usage row."""
    calls = row["calls"]
    priced = calls - row["unpriced_calls"]
    return {
        **row,
        "cost_usd": float(row["cost_usd"]),
        "avg_duration_ms": row["duration_ms_sum"] / calls if calls else None,
        "avg_cost_per_call_usd": float(row["cost_usd"]) / priced if priced else None,
        "success_rate": (calls - row["failed_calls"]) / calls if calls else None,
    }


CALL_COLUMNS = (
    'trace_id, span_id, "timestamp", service_name, provider, model, operation, correlation_id, '
    "input_tokens, output_tokens, total_tokens, cost_usd::float8 AS cost_usd, duration_ms, "
    "success, error_type"
)


def percent_change(now: float, before: float) -> float | None:
    """Change from `before` to `now` in percent; None when there is nothing to compare with."""
    return (now - before) * 100 / before if before else None
