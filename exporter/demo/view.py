"""The demo's live terminal view and summary, read from what the exporter stored."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
from rich import box
from rich.console import Console, Group
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table

from exporter.demo.workload import WorkloadStats
from exporter.simulator import SimulatedResponse
from exporter.usage import budgets

_TOTALS = """
SELECT count(*), count(*) FILTER (WHERE NOT success), coalesce(sum(input_tokens), 0),
       coalesce(sum(output_tokens), 0), coalesce(sum(cache_read_tokens), 0),
       coalesce(sum(cache_write_tokens), 0), coalesce(sum(reasoning_tokens), 0),
       coalesce(sum(cost_usd), 0)
FROM api_calls WHERE "timestamp" >= %s AND (%s::text IS NULL OR service_name = %s)"""
_BY_PROVIDER = """
SELECT provider, count(*), count(*) FILTER (WHERE NOT success), coalesce(sum(total_tokens), 0),
       coalesce(sum(cost_usd), 0), coalesce(avg(duration_ms), 0)
FROM api_calls WHERE "timestamp" >= %s AND service_name = %s GROUP BY 1 ORDER BY 1"""
_RECENT = """
SELECT "timestamp", provider, operation, correlation_id, total_tokens, cost_usd, duration_ms,
       success, error_type
FROM api_calls WHERE "timestamp" >= %s AND service_name = %s ORDER BY "timestamp" DESC LIMIT 8"""
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
_PIPED_WIDTH = 160


def output_console() -> Console:
    """A console for tables that may go to a pipe or a log (CI, `| tee`): there rich would wrap
    them at 80 columns, so it gets a wider line unless COLUMNS says otherwise."""
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPED_WIDTH
    return console


@dataclass(frozen=True)
class Totals:
    calls: int
    failed: int
    input: int
    output: int
    cache_read: int
    cache_write: int
    reasoning: int
    cost_usd: Decimal

    @property
    def tokens(self) -> int:
        return self.input + self.output

    def line(self) -> str:
        """A machine-readable line, the same for the simulator's and the database's totals."""
        counts = " ".join(f"{kind}={getattr(self, kind)}" for kind in TOKEN_KINDS)
        return f"calls={self.calls} failed={self.failed} {counts}"


def stored_totals(
    conn: psycopg.Connection[Any], since: datetime, service: str | None = None
) -> Totals:
    row = conn.execute(_TOTALS, (since, service, service)).fetchone()
    assert row is not None  # an aggregate always returns a row
    calls, failed, input_, output, cache_read, cache_write, reasoning = map(int, row[:7])
    return Totals(
        calls, failed, input_, output, cache_read, cache_write, reasoning, Decimal(row[7])
    )


def simulator_totals(responses: list[SimulatedResponse]) -> Totals:
    """What the provider servers reported, in OpenTelemetry semantics."""
    sums = dict.fromkeys(TOKEN_KINDS, 0)
    for response in responses:
        if response.usage is not None:
            for kind in TOKEN_KINDS:
                sums[kind] += getattr(response.usage, f"{kind}_tokens")
    failed = sum(1 for r in responses if r.status != 200 or r.interrupted)
    return Totals(len(responses), failed, **sums, cost_usd=Decimal(0))


@dataclass
class View:
    """Everything one frame needs; `render` draws it."""

    service: str
    run_started: datetime
    today_started: datetime
    budget_name: str
    status: str = ""

    def render(self, conn: psycopg.Connection[Any], stats: WorkloadStats) -> Group:
        run = stored_totals(conn, self.run_started, self.service)
        today = stored_totals(conn, self.today_started)
        budget = budgets.named_status(conn, self.budget_name, datetime.now(UTC))
        return Group(
            Panel(
                self._header(run, today, stats, budget),
                title="nexus-otel demo",
                subtitle=self.status,
            ),
            self._providers(conn),
            self._recent(conn),
            *(f"[yellow]workload problem:[/] {p}" for p in list(stats.problems)[:3]),
        )

    def _header(
        self, run: Totals, today: Totals, stats: WorkloadStats, budget: dict[str, Any] | None
    ) -> Table:
        grid = Table.grid(padding=(0, 3))
        grid.add_row(
            "[bold]this run[/]",
            f"{run.calls:,} calls ({run.failed} failed)",
            f"{run.tokens:,} tokens",
            f"${run.cost_usd:.4f}",
            f"carousels {stats.carousels_finished}/{stats.carousels_started}",
        )
        grid.add_row(
            "[bold]today[/]",
            f"{today.calls:,} calls ({today.failed} failed)",
            f"{today.tokens:,} tokens",
            f"${today.cost_usd:.4f}",
            "",
        )
        grid.add_row("[bold]budget[/]", *budget_cells(self.budget_name, budget))
        return grid

    def _providers(self, conn: psycopg.Connection[Any]) -> Table:
        table = Table(
            "provider",
            "calls",
            "failed",
            "tokens",
            "cost",
            "avg latency",
            title="per provider (this run)",
            box=box.SIMPLE_HEAD,
        )
        for name, calls, failed, tokens, cost, ms in conn.execute(
            _BY_PROVIDER, (self.run_started, self.service)
        ).fetchall():
            table.add_row(
                name, f"{calls:,}", str(failed), f"{tokens:,}", f"${cost:.4f}", f"{ms:.0f} ms"
            )
        return table

    def _recent(self, conn: psycopg.Connection[Any]) -> Table:
        headers = ("time", "provider", "operation", "carousel", "tokens", "cost", "ms", "outcome")
        table = Table(*headers, title="recent calls", box=box.SIMPLE_HEAD, pad_edge=False)
        rows = conn.execute(_RECENT, (self.run_started, self.service)).fetchall()
        for ts, provider, operation, correlation, tokens, cost, ms, ok, error in rows:
            price = f"${cost:.4f}" if cost is not None else "unpriced"
            outcome = "[green]ok[/]" if ok else f"[red]{error or 'error'}[/]"
            table.add_row(
                f"{ts:%H:%M:%S}",
                provider,
                operation,
                correlation or "",
                f"{tokens:,}",
                price,
                f"{ms:.0f}",
                outcome,
            )
        return table


STATE_COLORS = {"ok": "green", "warning": "yellow", "exceeded": "red"}


def budget_cells(name: str, status: dict[str, Any] | None) -> tuple[Any, str, str]:
    """The budget's bar, usage and outlook as `nexus_budget_status` gives them (the numbers of
    the API, the gauges and Grafana), or why there are none."""
    if status is None:
        return "", f"no enabled budget named {name}", ""
    usage, amount = Decimal(status["usage_pct"]), Decimal(status["amount_usd"])
    color = STATE_COLORS[status["state"]]
    shown = float(min(usage, Decimal(100)))
    bar = ProgressBar(total=100, completed=shown, width=30, complete_style=color)
    usage_text = (
        f"{usage:.2f}% of ${amount.normalize():f}/{_PER[status['period']]}"
        f" [{color}]{status['state']}[/]"
    )
    if status["exceeded_at"] is not None:
        outlook = f"exceeded at {status['exceeded_at'].astimezone():%H:%M:%S}"
    else:
        outlook = f"forecast ${Decimal(status['forecast_usd']):.4f} ({status['forecast_method']})"
    return bar, usage_text, outlook


_PER = {"daily": "day", "weekly": "week", "monthly": "month"}


def summary_table(simulated: Totals, stored: Totals, carousels: int) -> Table:
    table = Table("", "providers reported", "stored", "", title="summary")
    for kind in ("calls", "failed", *TOKEN_KINDS):
        reported, kept = getattr(simulated, kind), getattr(stored, kind)
        mark = "[green]=[/]" if reported == kept else "[red]≠[/]"
        table.add_row(kind, f"{reported:,}", f"{kept:,}", mark)
    table.add_row("cost", "", f"${stored.cost_usd:.4f}", "")
    table.caption = f"{carousels} carousels finished"
    return table
