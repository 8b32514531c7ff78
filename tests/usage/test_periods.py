"""Calendar periods and local days, with the bounds written out by hand: days of 23, 23.5, 24.5
and 25 hours, a midnight that never happens and one that happens twice, weeks from Monday and
months across DST changes and the year's end. Every consumer (budgets, reports, the digest, the
dashboards) reads these same definitions from the database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime

import psycopg
import pytest

from exporter.usage import periods


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    with psycopg.connect(database_url) as connection:
        # Bounds must not depend on the session's own zone.
        connection.execute("SET TIME ZONE 'Asia/Tokyo'")
        yield connection


DAYS = [
    # spring forward: 02:00 EST becomes 03:00 EDT, a 23-hour day
    ("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4)),
    # fall back: 02:00 EDT becomes 01:00 EST, a 25-hour day
    ("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
    # Lord Howe's half-hour shift: +11 to +10:30 (24.5 h), then +10:30 to +11 (23.5 h)
    ("Australia/Lord_Howe", date(2026, 4, 5), utc(2026, 4, 4, 13), utc(2026, 4, 5, 13, 30)),
    ("Australia/Lord_Howe", date(2026, 10, 4), utc(2026, 10, 3, 13, 30), utc(2026, 10, 4, 13)),
    # Chatham's quarter hours: +13:45 until 03:45 on April 5, then +12:45
    ("Pacific/Chatham", date(2026, 4, 5), utc(2026, 4, 4, 10, 15), utc(2026, 4, 5, 11, 15)),
    # midnight never happens (Santiago jumps from 23:59:59 to 01:00): the day starts at the jump
    ("America/Santiago", date(2026, 9, 6), utc(2026, 9, 6, 4), utc(2026, 9, 7, 3)),
    # midnight happens twice (Havana goes from 00:59:59 CDT back to 00:00 CST): the first one
    ("America/Havana", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5)),
    ("America/Havana", date(2026, 10, 31), utc(2026, 10, 31, 4), utc(2026, 11, 1, 4)),
    # a day that ends in a repeated hour (Beirut falls back from 00:00 to 23:00 the day before)
    ("Asia/Beirut", date(2026, 10, 24), utc(2026, 10, 23, 21), utc(2026, 10, 24, 22)),
    ("Asia/Kolkata", date(2026, 11, 20), utc(2026, 11, 19, 18, 30), utc(2026, 11, 20, 18, 30)),
]


@pytest.mark.parametrize(("zone", "day", "start", "end"), DAYS)
def test_day_bounds(
    conn: psycopg.Connection[tuple[object, ...]], zone: str, day: date, start: datetime,
    end: datetime,
) -> None:  # fmt: skip
    assert periods.day_bounds(conn, day, zone) == (start, end)
    assert periods.period_of_day(conn, "daily", zone, day) == (start, end)
    assert periods.period_bounds(conn, "daily", zone, start) == (start, end)


PERIODS = [
    # weeks from Monday: a Sunday, and a Monday, in Kolkata
    ("weekly", "Asia/Kolkata", date(2026, 11, 22), utc(2026, 11, 15, 18, 30),
     utc(2026, 11, 22, 18, 30)),
    ("weekly", "Asia/Kolkata", date(2026, 11, 23), utc(2026, 11, 22, 18, 30),
     utc(2026, 11, 29, 18, 30)),
    # a week holding Lord Howe's April shift
    ("weekly", "Australia/Lord_Howe", date(2026, 4, 5), utc(2026, 3, 29, 13),
     utc(2026, 4, 5, 13, 30)),
    # a week holding the twice-happening Havana midnight
    ("weekly", "America/Havana", date(2026, 11, 1), utc(2026, 10, 26, 4), utc(2026, 11, 2, 5)),
    # months across a DST change, and across the year's end
    ("monthly", "America/St_Johns", date(2026, 3, 20), utc(2026, 3, 1, 3, 30),
     utc(2026, 4, 1, 2, 30)),
    ("monthly", "Pacific/Chatham", date(2026, 4, 15), utc(2026, 3, 31, 10, 15),
     utc(2026, 4, 30, 11, 15)),
    ("monthly", "UTC", date(2026, 12, 31), utc(2026, 12, 1), utc(2027, 1, 1)),
]  # fmt: skip


@pytest.mark.parametrize(("period", "zone", "day", "start", "end"), PERIODS)
def test_weeks_and_months(
    conn: psycopg.Connection[tuple[object, ...]], period: str, zone: str, day: date,
    start: datetime, end: datetime,
) -> None:  # fmt: skip
    assert periods.period_of_day(conn, period, zone, day) == (start, end)
    assert periods.period_bounds(conn, period, zone, end - periods.JUST_BEFORE) == (start, end)
    assert periods.previous_period(conn, period, zone, end) == (start, end)


def test_an_instant_in_a_repeated_hour_belongs_to_its_local_day(
    conn: psycopg.Connection[tuple[object, ...]],
) -> None:
    day = (utc(2026, 11, 1, 4), utc(2026, 11, 2, 5))
    for moment in (utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 5, 30)):  # 00:30 CDT, 00:30 CST
        assert periods.period_bounds(conn, "daily", "America/Havana", moment) == day
        assert periods.local_date(conn, "America/Havana", moment) == date(2026, 11, 1)
    before = utc(2026, 11, 1, 4) - periods.JUST_BEFORE
    assert periods.local_date(conn, "America/Havana", before) == date(2026, 10, 31)


@pytest.mark.parametrize(("zone", "day", "start", "end"), DAYS)
def test_today_and_yesterday_in_one_round_trip(
    conn: psycopg.Connection[tuple[object, ...]],
    zone: str,
    day: date,
    start: datetime,
    end: datetime,
) -> None:
    """The dashboard's day, the day before it and the local date, asked at the day's first and
    last instants, equal the same asked one by one, across every day of odd length above."""
    for moment in (start, end - periods.JUST_BEFORE):
        today = periods.period_bounds(conn, "daily", zone, moment)
        yesterday = periods.previous_period(conn, "daily", zone, today[0])
        assert today == (start, end)
        assert periods.today_and_yesterday(conn, zone, moment) == (
            start,
            end,
            yesterday[0],
            periods.local_date(conn, zone, moment),
        )
        assert periods.local_date(conn, zone, moment) == day
