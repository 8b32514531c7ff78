"""The one check of a time zone name, shared by the settings and the budget API, and whether
the database's time zone rules (a copy of the tz database of their own, often older than
Python's) know the name too: calendar periods are computed there."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import psycopg


class ZoneUnknownToDatabase(ValueError):
    """A zone name Python knows and the database does not; the message names it."""


def unknown_zone(value: str) -> str:
    """What a user is told about a zone name that is not one."""
    return f"unknown time zone {value!r} (use an IANA name)"


def unknown_to_database(value: str) -> str:
    return (
        f"time zone {value!r} is unknown to the database (its time zone rules are older than "
        "this name; use another IANA name)"
    )


def check_zone(value: str) -> str:
    """`value` when it names an IANA time zone; otherwise ValueError naming it."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(unknown_zone(value)) from None
    return value


def check_zone_in_database(conn: psycopg.Connection[Any], value: str) -> str:
    """`value` when the database knows the zone too; otherwise ZoneUnknownToDatabase."""
    row = conn.execute("SELECT nexus_zone_known(%s)", (value,)).fetchone()
    if row is None or not row[0]:
        raise ZoneUnknownToDatabase(unknown_to_database(value))
    return value
