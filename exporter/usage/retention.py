"""Retention: raw calls older than the configured time go, a whole monthly partition at a time.

Dropping a partition is instant and leaves no dead rows behind, unlike DELETE. The daily,
hourly and ten-minute summaries are separate tables and are kept forever, so totals of old
periods remain (to the ten minutes: a range's pieces shorter than that are read from the rows
that are left)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)
_UPPER_BOUND = re.compile(r"TO \('([^']+)'\)")


@dataclass
class RetentionResult:
    cutoff: datetime
    dropped: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)


def partitions(conn: psycopg.Connection[Any]) -> list[tuple[str, datetime]]:
    """Each partition of api_calls with the (exclusive) end of its time range, oldest first."""
    conn.execute("SET TIME ZONE 'UTC'")  # bounds print in the session's zone
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'api_calls'::regclass"
    ).fetchall()
    found = []
    for name, bound in rows:
        match = _UPPER_BOUND.search(bound or "")
        if match:  # a DEFAULT partition has no upper bound and is never dropped
            found.append((name, datetime.fromisoformat(match.group(1))))
    return sorted(found, key=lambda item: item[1])


def apply_retention(database_url: str, retention_days: int, now: datetime) -> RetentionResult:
    """Drops every partition whose whole range is older than `now - retention_days`."""
    result = RetentionResult(cutoff=now - timedelta(days=retention_days))
    with psycopg.connect(database_url, autocommit=True) as conn:
        for name, upper in partitions(conn):
            if upper <= result.cutoff:
                conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
                log.info("retention: dropped %s (calls before %s)", name, upper.isoformat())
                result.dropped.append(name)
            else:
                result.kept.append(name)
        # Spans set aside as another span's duplicate (exporter.ingest.duplicates) go with the
        # calls of their time: a span older than the cutoff is refused on arrival anyway.
        conn.execute('DELETE FROM api_call_duplicates WHERE "timestamp" < %s', (result.cutoff,))
        # And the price revisions' record of calls no longer stored.
        conn.execute('DELETE FROM price_revision_calls WHERE "timestamp" < %s', (result.cutoff,))
    return result
