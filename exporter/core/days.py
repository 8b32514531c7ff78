"""The calendar days the API and the command line take, from FIRST_DAY to LAST_DAY: a report's
period, the one before it for comparison, and a repricing's range around such a day all stay
within what Python's dates and PostgreSQL's timestamps hold."""

from __future__ import annotations

from datetime import date

FIRST_DAY = date(1970, 1, 2)
LAST_DAY = date(2200, 1, 1)


def parse_day(flag: str, value: str) -> date:
    """A command-line day (YYYY-MM-DD); ValueError naming the flag and the value."""
    try:
        day = date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{flag} {value!r} is not a date (YYYY-MM-DD)") from None
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{flag} {value!r} is outside {FIRST_DAY} to {LAST_DAY}")
    return day
