"""The one check of a time zone name, shared by the settings and the budget API."""

from __future__ import annotations

from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def unknown_zone(value: str) -> str:
    """What a user is told about a zone name that is not one."""
    return f"unknown time zone {value!r} (use an IANA name)"


def check_zone(value: str) -> str:
    """`value` when it names an IANA time zone; otherwise ValueError naming it."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(unknown_zone(value)) from None
    return value
