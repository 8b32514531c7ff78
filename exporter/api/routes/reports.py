"""GET /api/reports/{period}: a daily, weekly or monthly spend summary."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from fastapi.encoders import jsonable_encoder

from exporter.api.deps import Conn, Now, SettingsDep
from exporter.core.days import FIRST_DAY, LAST_DAY
from exporter.usage.reports import build_report, last_complete_day

router = APIRouter(tags=["reports"])


@router.get("/api/reports/{period}")
def report(
    period: Annotated[Literal["daily", "weekly", "monthly"], Path()],
    conn: Conn,
    now: Now,
    settings: SettingsDep,
    day: Annotated[
        dt.date | None,
        Query(
            alias="date",
            description="a local date inside the period (default: the last complete period)",
            ge=FIRST_DAY,
            le=LAST_DAY,
        ),
    ] = None,
) -> Any:
    """Spend, tokens and calls; by provider, model and operation; the most expensive calls;
    budget state; and changes against the previous period. Periods follow NEXUS_TIMEZONE."""
    zone = settings.timezone
    day = day or last_complete_day(conn, period, zone, now)
    return jsonable_encoder(build_report(conn, period, zone, day, now))
