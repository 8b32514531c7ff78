"""Calendar periods and local days, as the database defines them (`nexus_period_bounds` and
its neighbours in the migrations): budgets, reports, the digest and the dashboards all ask it,
so every one of them draws the same line at the same instant, with the same time zone rules.

A period runs from the start of its first local day to the start of the next period's; weeks
start on Monday. A local day starts at its first instant: where midnight is skipped by a DST
jump, at the jump; where midnight comes twice, at the first one."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

import psycopg

Period = Literal["daily", "weekly", "monthly"]
# The instant just before a period's start, to name the period before it.
JUST_BEFORE = timedelta(microseconds=1)


def period_bounds(
    conn: psycopg.Connection[Any], period: str, zone: str, at: datetime
) -> tuple[datetime, datetime]:
    """The period (in `zone`) holding the instant `at`."""
    return _bounds(conn, "nexus_period_bounds", period, zone, at)


def period_of_day(
    conn: psycopg.Connection[Any], period: str, zone: str, day: date
) -> tuple[datetime, datetime]:
    """The period (in `zone`) holding the local date `day`."""
    return _bounds(conn, "nexus_period_of_day", period, zone, day)


def _bounds(
    conn: psycopg.Connection[Any], function: str, period: str, zone: str, within: date | datetime
) -> tuple[datetime, datetime]:
    row = conn.execute(
        f"SELECT period_start, period_end FROM {function}(%s, %s, %s)",  # type: ignore[arg-type]
        (period, zone, within),
    ).fetchone()
    assert row is not None
    return row[0].astimezone(UTC), row[1].astimezone(UTC)


def day_bounds(conn: psycopg.Connection[Any], day: date, zone: str) -> tuple[datetime, datetime]:
    """The local date `day` in `zone`: 23 or 25 hours (or 23.5, 24.5) on DST changes."""
    return period_of_day(conn, "daily", zone, day)


def local_date(conn: psycopg.Connection[Any], zone: str, at: datetime) -> date:
    """The date the clocks in `zone` show at `at`."""
    row = conn.execute("SELECT (%s::timestamptz AT TIME ZONE %s)::date", (at, zone)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def today_and_yesterday(
    conn: psycopg.Connection[Any], zone: str, at: datetime
) -> tuple[datetime, datetime, datetime, date]:
    """The local day (in `zone`) holding `at`, the start of the day before, and the local date:
    period_bounds, previous_period and local_date in one round trip."""
    row = conn.execute(
        "SELECT t.period_start, t.period_end, y.period_start, (%(at)s AT TIME ZONE %(zone)s)::date"
        " FROM nexus_period_bounds('daily', %(zone)s, %(at)s) t CROSS JOIN LATERAL"
        " nexus_period_bounds('daily', %(zone)s, t.period_start - %(just_before)s) y",
        {"zone": zone, "at": at, "just_before": JUST_BEFORE},
    ).fetchone()
    assert row is not None
    return row[0].astimezone(UTC), row[1].astimezone(UTC), row[2].astimezone(UTC), row[3]


def previous_period(
    conn: psycopg.Connection[Any], period: str, zone: str, start: datetime
) -> tuple[datetime, datetime]:
    """The period just before the one starting at `start`."""
    return period_bounds(conn, period, zone, start - JUST_BEFORE)
