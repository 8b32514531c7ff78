"""GET /api/dashboard/stats: today in the configured time zone, against yesterday."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, Query
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from exporter.api.deps import Conn, Now, ScopeDep, SettingsDep
from exporter.api.schemas import CallPublic, TotalsPublic
from exporter.usage import periods
from exporter.usage.totals import CALL_COLUMNS, Scope, percent_change, totals_public, usage

router = APIRouter(tags=["dashboard"])


class TrendsPublic(BaseModel):
    """Percent change of today so far against yesterday up to the same time of day."""

    calls_pct: float | None
    total_tokens_pct: float | None
    cost_usd_pct: float | None


class HourlyPointPublic(BaseModel):
    hour: datetime = Field(description="start of the UTC hour")
    provider: str
    calls: int
    total_tokens: int
    cost_usd: float
    unpriced_calls: int


class DashboardStatsPublic(BaseModel):
    timezone: str
    date: date
    day_start: datetime
    now: datetime
    today: TotalsPublic
    yesterday_same_time: TotalsPublic
    yesterday: TotalsPublic
    trends: TrendsPublic
    hourly: list[HourlyPointPublic]
    recent_calls: list[CallPublic]


@router.get("/api/dashboard/stats", response_model=DashboardStatsPublic)
def dashboard_stats(
    conn: Conn,
    now: Now,
    settings: SettingsDep,
    scope: ScopeDep,
    recent: Annotated[int, Query(ge=0, le=100, description="how many recent calls")] = 10,
) -> dict[str, Any]:
    """Today's tokens, cost and calls (today in NEXUS_TIMEZONE), trends against yesterday, the
    hourly series per provider, and the most recent calls. Totals come from the summaries."""
    start, end, yesterday_start, local_date = periods.today_and_yesterday(
        conn, settings.timezone, now
    )
    same_time = yesterday_start + (now - start)
    today = usage(conn, start, end, scope)[0]
    earlier = usage(conn, yesterday_start, same_time, scope)[0]
    yesterday = usage(conn, yesterday_start, start, scope)[0]
    hourly = usage(conn, start, end, scope, group_by=("hour", "provider"))
    return {
        "timezone": settings.timezone,
        "date": local_date,
        "day_start": start,
        "now": now,
        "today": totals_public(today),
        "yesterday_same_time": totals_public(earlier),
        "yesterday": totals_public(yesterday),
        "trends": {
            "calls_pct": percent_change(today["calls"], earlier["calls"]),
            "total_tokens_pct": percent_change(today["total_tokens"], earlier["total_tokens"]),
            "cost_usd_pct": percent_change(float(today["cost_usd"]), float(earlier["cost_usd"])),
        },
        "hourly": [{**row, "cost_usd": float(row["cost_usd"])} for row in hourly],
        "recent_calls": recent_calls(conn, scope, recent),
    }


def recent_calls(conn: psycopg.Connection[Any], scope: Scope, limit: int) -> list[dict[str, Any]]:
    clause, params = scope.condition()
    statement = (
        f"SELECT {CALL_COLUMNS} FROM api_calls WHERE true{clause}"
        ' ORDER BY "timestamp" DESC LIMIT %(limit)s'
    )
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(statement, {**params, "limit": limit}).fetchall()  # type: ignore[arg-type]
