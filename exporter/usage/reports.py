"""Daily, weekly and monthly spend reports: JSON for the API, text for `nexus-otel report`."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
from psycopg.rows import dict_row
from rich.console import Console, Group
from rich.table import Table

from exporter.usage import budgets, periods
from exporter.usage.totals import CALL_COLUMNS, Scope, percent_change, totals_public, usage

TOP_CALLS = 10


def last_complete_day(conn: psycopg.Connection[Any], period: str, zone: str, now: datetime) -> date:
    """A local date inside the last period that has ended."""
    start, _ = periods.period_bounds(conn, period, zone, now)
    return periods.local_date(conn, zone, start - periods.JUST_BEFORE)


def build_report(
    conn: psycopg.Connection[Any], period: str, zone: str, day: date, now: datetime
) -> dict[str, Any]:
    start, end = periods.period_of_day(conn, period, zone, day)
    before = periods.previous_period(conn, period, zone, start)
    totals = usage(conn, start, end)[0]
    previous = usage(conn, *before)[0]
    return {
        "period": period,
        "timezone": zone,
        "start": start,
        "end": end,
        "complete": end <= now,
        "totals": totals_public(totals),
        "previous": {"start": before[0], "end": before[1], "totals": totals_public(previous)},
        "changes": {
            key + "_pct": percent_change(float(totals[key]), float(previous[key]))
            for key in ("calls", "total_tokens", "cost_usd", "failed_calls")
        },
        "by_provider": _grouped(conn, start, end, "provider"),
        "by_model": _grouped(conn, start, end, "provider", "model"),
        "by_operation": _grouped(conn, start, end, "operation"),
        "top_calls": top_calls(conn, start, end),
        "budgets": budgets.statuses(conn, now),
    }


def _grouped(
    conn: psycopg.Connection[Any], start: datetime, end: datetime, *by: str
) -> list[dict[str, Any]]:
    rows = [totals_public(r) for r in usage(conn, start, end, Scope(), by)]
    return sorted(rows, key=lambda r: (-r["cost_usd"], *(r[k] for k in by)))


def top_calls(conn: psycopg.Connection[Any], start: datetime, end: datetime) -> list[Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(
            f"SELECT {CALL_COLUMNS} FROM api_calls"  # type: ignore[arg-type]
            ' WHERE "timestamp" >= %s AND "timestamp" < %s AND cost_usd IS NOT NULL'
            ' ORDER BY cost_usd DESC, "timestamp" LIMIT %s',
            (start, end, TOP_CALLS),
        ).fetchall()


def _money(value: Any) -> str:
    return f"${float(value):,.4f}"


def _change(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}%"


def render_report(report: dict[str, Any]) -> Group:
    """The report as rich tables, for the terminal."""
    t, zone = report["totals"], ZoneInfo(report["timezone"])
    start = report["start"].astimezone(zone)
    end = report["end"].astimezone(zone)
    summary = Table(
        title=f"{report['period']} report {start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M}"
        f" ({report['timezone']}){'' if report['complete'] else ', so far'}"
    )
    for column in ("", "this period", "previous", "change"):
        summary.add_column(column, justify="right")
    p, changes = report["previous"]["totals"], report["changes"]
    summary.add_row(
        "spend", _money(t["cost_usd"]), _money(p["cost_usd"]), _change(changes["cost_usd_pct"])
    )
    summary.add_row(
        "tokens",
        f"{t['total_tokens']:,}",
        f"{p['total_tokens']:,}",
        _change(changes["total_tokens_pct"]),
    )
    summary.add_row("calls", f"{t['calls']:,}", f"{p['calls']:,}", _change(changes["calls_pct"]))
    summary.add_row(
        "failed",
        f"{t['failed_calls']:,}",
        f"{p['failed_calls']:,}",
        _change(changes["failed_calls_pct"]),
    )
    summary.add_row("unpriced calls", f"{t['unpriced_calls']:,}", f"{p['unpriced_calls']:,}", "")
    parts: list[Any] = [summary]
    for title, key, label in (
        ("by provider", "by_provider", lambda r: r["provider"]),
        ("by model", "by_model", lambda r: f"{r['provider']}/{r['model']}"),
        ("by operation", "by_operation", lambda r: r["operation"] or "(none)"),
    ):
        table = Table(title=title)
        for column in ("", "spend", "tokens", "calls", "unpriced"):
            table.add_column(column, justify="right")
        for row in report[key]:
            table.add_row(
                label(row),
                _money(row["cost_usd"]),
                f"{row['total_tokens']:,}",
                f"{row['calls']:,}",
                f"{row['unpriced_calls']:,}",
            )
        parts.append(table)
    parts.append(_top_calls_table(report["top_calls"]))
    parts.append(_budgets_table(report["budgets"]))
    return Group(*parts)


def _top_calls_table(calls: list[dict[str, Any]]) -> Table:
    table = Table(title="most expensive calls")
    for column in ("time (UTC)", "provider/model", "operation", "tokens", "cost"):
        table.add_column(column)
    for c in calls:
        table.add_row(
            f"{c['timestamp']:%Y-%m-%d %H:%M:%S}",
            f"{c['provider']}/{c['model']}",
            c["operation"],
            f"{c['total_tokens']:,}",
            _money(c["cost_usd"]),
        )
    return table


def _budgets_table(statuses: list[dict[str, Any]]) -> Table:
    table = Table(title="budgets (current period)")
    for column in ("budget", "period", "spend", "amount", "usage", "state", "forecast"):
        table.add_column(column)
    for s in statuses:
        usage_pct = f"{float(s['usage_pct']):.1f}%"
        money = [_money(s[k]) for k in ("spend_usd", "amount_usd", "forecast_usd")]
        table.add_row(s["name"], s["period"], money[0], money[1], usage_pct, s["state"], money[2])
    return table


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    (console or Console()).print(render_report(report))
