"""Budget spend at 1 and 10 million rows, run with the dashboard statistics (`--only api`) on
the same rows: `nexus_budget_spend`, what every budget gauge refresh, budget page, digest and
lease an app takes reads, against the same function as migration 004 wrote it (whole hours from
the summaries, the partial hours from raw rows) made as strong as it can be (no sequential
scans, as 015's own), both created in the same database and timed in the same run.

Thirty enabled budgets: daily, weekly and monthly, in five zones (days starting on the hour, at
:30 and at :45 UTC), over any call or one provider. Each function is timed at six instants, five
minutes past each ten minutes of the last hour of the data: the old definition reads from 5 to
55 minutes of raw rows there, the new one five minutes at most. Both must give the same spend."""

from __future__ import annotations

import re
import statistics
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from bench.common import Result

REPEATS = 9
TARGET_MS = 50.0  # every instant, 30 budgets, 10 million rows
TARGET_RATIO = 5.0  # the median instant, against the hourly-and-raw definition
ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Europe/Berlin")
_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"
_OURS, _HOURLY = "nexus_budget_spend", "bench_budget_spend_hourly"
_SPEND = "SELECT id, spend_usd, calls, unpriced_calls FROM {}(%s) ORDER BY id"


def hourly_definition() -> str:
    """Migration 004's budget spend (whole hours from the summaries, partial hours from raw
    rows), as `bench_budget_spend_hourly`, without sequential scans."""
    text = (_MIGRATIONS / "004_budget_status.sql").read_text()
    found = re.search(r"CREATE FUNCTION nexus_budget_status\(.*?\n\$function\$;", text, re.S)
    if not found:
        raise RuntimeError("migration 004 no longer holds nexus_budget_status")
    # As strong as it can be: without sequential scans, as migration 015's own (as written, it
    # scanned a month's partition for a few minutes of calls: seconds at 10 million rows).
    definition = found.group(0).replace(
        "CREATE FUNCTION nexus_budget_status(", f"CREATE OR REPLACE FUNCTION {_HOURLY}(", 1
    )
    return definition.replace(
        "LANGUAGE plpgsql STABLE AS", "LANGUAGE plpgsql STABLE SET enable_seqscan = off AS", 1
    )


def _budgets(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DELETE FROM cost_budgets")
    for n, (period, zone, provider) in enumerate(
        (p, z, s) for p in ("daily", "weekly", "monthly") for z in ZONES for s in (None, "groq")
    ):
        conn.execute(
            "INSERT INTO cost_budgets (name, period_type, timezone, provider, budget_usd)"
            " VALUES (%s, %s, %s, %s, 1000000)",
            (f"bench-{n}", period, zone, provider),
        )


def _spend(conn: psycopg.Connection[Any], function: str, at: datetime) -> list[Any]:
    return conn.execute(_SPEND.format(function), (at,)).fetchall()  # type: ignore[arg-type]


def _median_ms(conn: psycopg.Connection[Any], function: str, at: datetime) -> float:
    _spend(conn, function, at)  # plans and caches
    timings = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        _spend(conn, function, at)
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


def measure(console: Console, url: str, now: datetime, size: int) -> Result:
    """The two definitions at six instants up to `now` (five past a ten minutes)."""
    instants = [now - timedelta(minutes=10 * k) for k in range(6)]  # :05 past each ten minutes
    with psycopg.connect(url, autocommit=True) as conn:
        _budgets(conn)
        conn.execute(hourly_definition())  # type: ignore[arg-type]
        ours, theirs = [], []
        for at in instants:
            if _spend(conn, _OURS, at) != _spend(conn, _HOURLY, at):
                raise RuntimeError(f"the two definitions disagree at {at}")
            ours.append(_median_ms(conn, _OURS, at))
            theirs.append(_median_ms(conn, _HOURLY, at))
    for at, a, b in zip(instants, ours, theirs, strict=True):
        console.print(
            f"  budget spend at {size:,} rows, {at:%H:%M} UTC: {a:.1f} ms"
            f" (hourly and raw: {b:.1f} ms)"
        )
    worst, ratio = max(ours), statistics.median(b / a for a, b in zip(ours, theirs, strict=True))
    console.print(
        f"budget spend, 30 budgets, {size:,} rows: worst instant {worst:.1f} ms,"
        f" median {ratio:.1f}x faster than hourly summaries and raw partial hours"
    )
    big = size >= 10_000_000
    return Result(
        name=f"budget spend (30 budgets), {size:,} rows",
        result=f"{worst:.1f} ms at the worst of 6 instants",
        baseline=f"{max(theirs):.1f} ms hourly + raw partial hours",
        ratio=ratio,
        target=f"< {TARGET_MS:.0f} ms, >= {TARGET_RATIO:.0f}x" if big else "report",
        ok=(worst < TARGET_MS and ratio >= TARGET_RATIO) if big else None,
    )
