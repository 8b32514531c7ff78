"""The status of every enabled budget in one SQL statement, for the budget gauges.

Each budget's spend comes from the same pieces as `exporter.usage.totals` reads for one budget
(whole UTC hours from `hourly_usage_summary`, the partial hours at the edges from `api_calls`),
over the same period bounds (`budgets.period_bounds`, computed here in Python for every time
zone, so the database's time zone rules never differ from the API's). Calls are summed once per
distinct piece (an hour span or an edge: the current hour's edge is shared by every period),
then per scope over only the values some budget names, then per period; each budget picks its
row by a hash join. So the cost grows with the distinct pieces and label sets, not with the
number of budgets.
"""

from __future__ import annotations

import threading
import zoneinfo
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from functools import cache
from typing import Any

import psycopg
from psycopg.rows import dict_row

from exporter.usage.budgets import BUDGET_COLUMNS, forecast, period_bounds, state_of
from exporter.usage.totals import split_range

PERIODS = ("daily", "weekly", "monthly")

# A budget's scope as a bit mask, as GROUPING() would give it: a bit set = any value matches.
_SCOPE_BITS = (("service_name", 8), ("provider", 4), ("model", 2), ("operation", 1))


def _scope_branch(mask: int) -> str:
    """The spend of every (period, scope value) of budgets whose scope has this mask: summed
    per piece over the scope's columns first (only the values some budget names), then per
    period over its pieces. Skipped outright when no budget has this mask."""
    kept = [column for column, bit in _SCOPE_BITS if not mask & bit]
    columns = [column if column in kept else f"NULL::text AS {column}" for column, _ in _SCOPE_BITS]
    named = "".join(f", {c}" for c in kept)
    values = (
        f" AND ({', '.join(kept)}) IN (SELECT {', '.join(kept)} FROM budget"
        f" WHERE scope_mask = {mask})"
        if kept
        else ""
    )
    return (
        f"SELECT p.range_id, {', '.join(columns)}, {mask} AS scope_mask, sum(t.cost) AS cost,"
        f" sum(t.calls) AS calls, sum(t.unpriced) AS unpriced"
        f" FROM (SELECT piece, piece_start, piece_end{named}, sum(cost) AS cost,"
        f" sum(calls) AS calls, sum(unpriced) AS unpriced FROM piece_total"
        f" WHERE EXISTS (SELECT FROM budget WHERE scope_mask = {mask}){values}"
        f" GROUP BY piece, piece_start, piece_end{named}) t"
        f" JOIN range_piece p ON p.piece = t.piece AND p.piece_start = t.piece_start"
        f" AND p.piece_end = t.piece_end"
        f" GROUP BY p.range_id{named}"
    )


_STATEMENT = f"""
WITH combo AS (
    SELECT * FROM unnest(%(periods)s::text[], %(zones)s::text[], %(combo_ranges)s::int[])
        AS c(period_type, timezone, range_id)
), period AS (
    SELECT * FROM unnest(
        %(range_ids)s::int[], %(hours_starts)s::timestamptz[], %(hours_ends)s::timestamptz[],
        %(edge0_starts)s::timestamptz[], %(edge0_ends)s::timestamptz[],
        %(edge1_starts)s::timestamptz[], %(edge1_ends)s::timestamptz[]
    ) AS p(range_id, hours_start, hours_end, edge0_start, edge0_end, edge1_start, edge1_end)
), budget AS MATERIALIZED (
    SELECT {", ".join(f"b.{c.strip()}" for c in BUDGET_COLUMNS.split(","))}, c.range_id,
           {" + ".join(f"CASE WHEN b.{c} IS NULL THEN {bit} ELSE 0 END" for c, bit in _SCOPE_BITS)}
           AS scope_mask
    FROM cost_budgets b
    LEFT JOIN combo c ON c.period_type = b.period_type AND c.timezone = b.timezone
    WHERE b.enabled
), hour_span AS (
    SELECT range_id, hours_start, hours_end FROM period
    WHERE hours_start < hours_end AND range_id IN (SELECT range_id FROM budget)
), hour_cut AS (
    -- The periods' whole hours cut at every one of their bounds: spans that never overlap,
    -- so a summary row is read once however many periods hold it.
    SELECT moment AS piece_start, lead(moment) OVER (ORDER BY moment) AS piece_end
    FROM (SELECT hours_start AS moment FROM hour_span UNION SELECT hours_end FROM hour_span) m
), range_piece AS MATERIALIZED (
    SELECT s.range_id, 'h' AS piece, c.piece_start, c.piece_end
    FROM hour_span s
    JOIN hour_cut c ON c.piece_start >= s.hours_start AND c.piece_end <= s.hours_end
    UNION ALL
    SELECT range_id, 'e', edge0_start, edge0_end FROM period
    WHERE edge0_start IS NOT NULL AND range_id IN (SELECT range_id FROM budget)
    UNION ALL
    SELECT range_id, 'e', edge1_start, edge1_end FROM period
    WHERE edge1_start IS NOT NULL AND range_id IN (SELECT range_id FROM budget)
), used_piece AS (
    SELECT DISTINCT piece, piece_start, piece_end FROM range_piece
), piece_total AS MATERIALIZED (
    SELECT u.piece, u.piece_start, u.piece_end, s.service_name, s.provider, s.model,
           s.operation, sum(s.cost_usd) AS cost, sum(s.calls) AS calls,
           sum(s.unpriced_calls) AS unpriced
    FROM used_piece u
    JOIN hourly_usage_summary s ON s.hour >= u.piece_start AND s.hour < u.piece_end
    WHERE u.piece = 'h'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    UNION ALL
    SELECT u.piece, u.piece_start, u.piece_end, a.service_name, a.provider, a.model,
           a.operation, sum(coalesce(a.cost_usd, 0)), count(*),
           count(*) FILTER (WHERE a.cost_usd IS NULL)
    FROM used_piece u
    JOIN api_calls a ON a."timestamp" >= u.piece_start AND a."timestamp" < u.piece_end
    WHERE u.piece = 'e'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
), scope_total AS (
    {" UNION ALL ".join(_scope_branch(mask) for mask in range(16))}
)
SELECT budget.*, coalesce(t.cost, 0) AS spend_usd, coalesce(t.calls, 0) AS calls,
       coalesce(t.unpriced, 0) AS unpriced_calls, count(*) OVER () AS enabled_budgets
FROM budget
LEFT JOIN scope_total t
    ON t.range_id = budget.range_id AND t.scope_mask = budget.scope_mask
   AND coalesce(t.service_name, '') = coalesce(budget.service_name, '')
   AND coalesce(t.provider, '') = coalesce(budget.provider, '')
   AND coalesce(t.model, '') = coalesce(budget.model, '')
   AND coalesce(t.operation, '') = coalesce(budget.operation, '')
ORDER BY budget.range_id IS NULL DESC, coalesce(t.cost, 0) / budget.budget_usd DESC, budget.id
LIMIT %(limit)s
"""


@cache
def _zones() -> tuple[str, ...]:
    return tuple(sorted(zoneinfo.available_timezones()))


@dataclass
class PeriodTable:
    """Every (period, zone)'s current period bounds, recomputed when one of them ends: many
    zones share bounds, so the query sees each distinct period once."""

    extra_zones: set[str]
    bounds: dict[tuple[str, str], tuple[datetime, datetime]]
    valid_from: datetime
    valid_until: datetime

    @classmethod
    def at(cls, now: datetime, extra_zones: set[str] | None = None) -> PeriodTable:
        zones = {*_zones(), *(extra_zones or ())}
        bounds = {(p, z): period_bounds(p, z, now) for z in sorted(zones) for p in PERIODS}
        starts = [start for start, _ in bounds.values()]
        ends = [end for _, end in bounds.values()]
        return cls(set(extra_zones or ()), bounds, max(starts), min(ends))

    def current(self, now: datetime) -> bool:
        return self.valid_from <= now < self.valid_until

    def parameters(self, now: datetime, limit: int) -> dict[str, Any]:
        ranges: dict[tuple[datetime, datetime], int] = {}
        combos: list[tuple[str, str, int]] = []
        for (period, zone), span in self.bounds.items():
            combos.append((period, zone, ranges.setdefault(span, len(ranges))))
        params: dict[str, Any] = {
            "periods": [c[0] for c in combos],
            "zones": [c[1] for c in combos],
            "combo_ranges": [c[2] for c in combos],
            "limit": limit,
        }
        columns: dict[str, list[Any]] = {
            name: []
            for name in (
                "range_ids", "hours_starts", "hours_ends", "edge0_starts", "edge0_ends",
                "edge1_starts", "edge1_ends",
            )
        }  # fmt: skip
        for (start, end), range_id in ranges.items():
            (hours_start, hours_end), edges = split_range(start, min(now, end))
            first, second = [*edges, (None, None), (None, None)][:2]
            values = (range_id, hours_start, hours_end, *first, *second)
            for column, value in zip(columns.values(), values, strict=True):
                column.append(value)
        return params | columns


class BudgetReader:
    """Reads the enabled budgets' statuses: the `limit` of highest usage, and how many exist."""

    def __init__(self) -> None:
        self._table: PeriodTable | None = None
        # Listing the zones reads hundreds of files: done at start, not in the first scrape.
        threading.Thread(target=_zones, name="zone-list", daemon=True).start()

    def read(
        self, conn: psycopg.Connection[Any], now: datetime, limit: int
    ) -> tuple[list[dict[str, Any]], int]:
        if self._table is None or not self._table.current(now):
            extra = self._table.extra_zones if self._table else set()
            self._table = PeriodTable.at(now, extra)
        rows = self._execute(conn, now, limit)
        unknown = {row["timezone"] for row in rows if row["range_id"] is None}
        if unknown:  # a zone ZoneInfo loads but does not list: learn it, once
            self._table = PeriodTable.at(now, self._table.extra_zones | unknown)
            rows = self._execute(conn, now, limit)
        enabled = int(rows[0]["enabled_budgets"]) if rows else 0
        return [self._status(row, now) for row in rows], enabled

    def _execute(
        self, conn: psycopg.Connection[Any], now: datetime, limit: int
    ) -> list[dict[str, Any]]:
        assert self._table is not None
        with conn.cursor(row_factory=dict_row) as cursor:
            cursor.execute(_STATEMENT, self._table.parameters(now, limit))  # type: ignore[arg-type]
            return cursor.fetchall()

    def _status(self, row: dict[str, Any], now: datetime) -> dict[str, Any]:
        """The same fields as `budgets.status` gives for the row."""
        assert self._table is not None
        start, end = self._table.bounds[row["period_type"], row["timezone"]]
        spend, limit = Decimal(row["spend_usd"]), Decimal(row["budget_usd"])
        outlook = forecast(spend, limit, start, end, now)
        budget = {k: v for k, v in row.items() if k in _BUDGET_KEYS}
        return {
            **budget,
            "period_start": start,
            "period_end": end,
            "spend_usd": spend,
            "calls": int(row["calls"]),
            "unpriced_calls": int(row["unpriced_calls"]),
            "remaining_usd": limit - spend,
            "usage_pct": spend * 100 / limit,
            "state": state_of(spend, limit, Decimal(row["warning_threshold_pct"])),
            "forecast_usd": outlook.spend_at_end,
            "projected_exhaustion_at": outlook.exhausted_at,
        }


_BUDGET_KEYS = frozenset(c.strip() for c in BUDGET_COLUMNS.split(","))
