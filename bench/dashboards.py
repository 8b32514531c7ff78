"""One refresh of each Grafana dashboard's SQL panels at 1 and 10 million rows in api_calls, each
under TARGET_MS; one plain scan of the last 24 hours of rows (the range the dashboards open on),
measured in the same run on the same data, is shown beside it for scale.

Every panel query is expanded as Grafana expands it (macros, `$__interval`, variables on "All")
and run against the real PostgreSQL; a refresh is all SQL panels of a dashboard, one after the
other (Grafana runs them in parallel, so this is the pessimistic figure)."""

from __future__ import annotations

import argparse
import json
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console

from bench.api import grown_tables, table_sizes
from bench.common import Result
from tests.dashboards.grafana_expand import TimeRange, Variable, expand_sql, parse_interval

DASHBOARDS = Path(__file__).resolve().parents[1] / "grafana" / "dashboards"
REPEATS = 5
# Every dashboard refreshes within this, at any table size: its panels read the hourly summaries
# kept at ingest and the raw calls only through a selective index (the latest calls, the
# costliest, the unpriced ones, a content item's calls), never a whole day of them.
TARGET_MS = 1000.0
# Budgets as a user sets them (the demo's daily one, a monthly one per provider): the budget
# panels read each budget's whole period.
_BUDGETS = (
    "INSERT INTO cost_budgets (name, period_type, budget_usd, provider) VALUES "
    "('daily', 'daily', 5, NULL), ('anthropic-monthly', 'monthly', 500, 'anthropic') "
    "ON CONFLICT (name) DO NOTHING"
)
_DAY_SCAN = (
    'SELECT count(*), sum(total_tokens), sum(cost_usd) FROM api_calls WHERE "timestamp" >= %s'
)


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    now = datetime.now(UTC)
    results: list[Result] = []
    for url, size in grown_tables(console, table_sizes(args, args.rows), now):
        results.extend(_measure(console, url, size))
    return results


def _boards() -> dict[str, list[tuple[str | None, str]]]:
    """Each dashboard with SQL panels: its variables' queries are run for options; panels as
    (time override, raw SQL)."""
    boards = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        queries = [
            (panel.get("timeFrom"), target["rawSql"])
            for panel in board["panels"]
            for target in panel.get("targets", [])
            if "rawSql" in target
        ]
        if queries:
            boards[board["title"]] = queries
    return boards


def _variables(conn: psycopg.Connection[Any], board_path: str) -> list[Variable]:
    board = json.loads((DASHBOARDS / board_path).read_text())
    variables = []
    for spec in board.get("templating", {}).get("list", []):
        rows = conn.execute(spec["query"]).fetchall()
        variables.append(Variable(spec["name"], [r[-1] for r in rows]))
    return variables


def _refresh_ms(
    conn: psycopg.Connection[Any], queries: list[tuple[str | None, str]], variables: list[Variable]
) -> float:
    now = datetime.now(UTC)
    minimum = timedelta(seconds=15)  # the provisioned Prometheus scrape interval
    started = time.perf_counter()
    for override, raw in queries:
        span = parse_interval(override) if override else timedelta(hours=24)
        conn.execute(expand_sql(raw, variables, TimeRange.last(span, now, minimum))).fetchall()
    return (time.perf_counter() - started) * 1000


def _measure(console: Console, url: str, size: int) -> list[Result]:
    results = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(_BUDGETS)
        since = datetime.now(UTC) - timedelta(hours=24)
        scan_ms = statistics.median(_timed(lambda: conn.execute(_DAY_SCAN, (since,)).fetchall()))
        titles = {json.loads(p.read_text())["title"]: p.name for p in DASHBOARDS.glob("*.json")}
        for title, queries in _boards().items():
            variables = _variables(conn, titles[title])
            _refresh_ms(conn, queries, variables)  # warm caches and plans
            refresh = statistics.median(
                _refresh_ms(conn, queries, variables) for _ in range(REPEATS)
            )
            ratio = refresh / scan_ms
            console.print(
                f"{title} at {size:,} rows: {len(queries)} SQL queries in {refresh:.0f} ms"
                f" (one 24 h scan {scan_ms:.0f} ms)"
            )
            results.append(
                Result(
                    name=f"dashboard refresh, {title}, {size:,} rows",
                    result=f"{refresh:.0f} ms ({len(queries)} queries)",
                    baseline=f"24 h scan {scan_ms:.0f} ms",
                    ratio=ratio,
                    target=f"< {TARGET_MS:.0f} ms",
                    ok=refresh < TARGET_MS,
                )
            )
    return results


def _timed(call: Any, repeats: int = REPEATS) -> list[float]:
    call()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        timings.append((time.perf_counter() - started) * 1000)
    return timings
