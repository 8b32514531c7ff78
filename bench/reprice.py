"""`reprice` over 1 million stored calls (200,000 with --quick) in one transaction, each run
against the target and beside a plain UPDATE of the same rows' cost in the same run on the same
data (what repricing in place would cost at the least): first with every call changing, then
with the calls of one model of four changing (its override price rose).

The calls are four models of four providers over 30 days with random token counts drawn per
call. They are stored with costs of no named source, so that every call changes the first time:
genai-prices prices three models and an override the fourth. The run is the command's own code
path, with its progress bar."""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.api import DAYS, grown_tables
from bench.common import Result
from exporter.ingest.pricing import PriceBook
from exporter.usage.reprice import RepricePlan, RepriceRequest, reprice

# The target: a month of a busy app's calls repriced within a minute.
TARGET_SECONDS = 60.0
OVERRIDES = """models:
  - model: gpt-4o-mini
    provider: openai
    input_mtok: 0.2
    output_mtok: 0.8
"""
_PLAIN_UPDATE = 'UPDATE api_calls SET cost_usd = cost_usd WHERE "timestamp" >= %s'
Timed = tuple[float, float, RepricePlan]  # reprice seconds, baseline seconds, the plan
_PLAIN_UPDATE_ONE = _PLAIN_UPDATE + " AND model = 'gpt-4o-mini'"


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    now = datetime.now(UTC)
    size = 200_000 if args.quick else 1_000_000
    sizes = getattr(args, "rows", None) or [size]
    results = []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-prices-") as tmp:
        prices = Path(tmp) / "prices.yaml"
        for url, rows in grown_tables(console, sorted(sizes), now, tokens_per_call=True):
            prices.write_text(OVERRIDES)
            results.extend(_measure(console, url, rows, now, prices))
    return results


def _measure(console: Console, url: str, size: int, now: datetime, prices: Path) -> list[Result]:
    """Every call changing (the first reprice: no call has a source yet), as a reference; then
    the calls of one model of four, whose override price rose, against the target."""
    since = now - timedelta(days=DAYS + 1)
    request = RepriceRequest(since=since, until=now + timedelta(days=1))
    every = _timed(console, url, size, PriceBook(prices), request, _PLAIN_UPDATE, since)
    prices.write_text(OVERRIDES.replace("input_mtok: 0.2", "input_mtok: 0.25"))
    one = _timed(console, url, size, PriceBook(prices), request, _PLAIN_UPDATE_ONE, since)
    return [
        _result(
            f"reprice, {size:,} calls, every one changing",
            every,
            f"< {TARGET_SECONDS:.0f} s",
            every[0] < TARGET_SECONDS,
        ),
        _result(
            f"reprice, {size:,} calls, one model of four changing",
            one,
            f"< {TARGET_SECONDS:.0f} s",
            one[0] < TARGET_SECONDS,
        ),
    ]


def _timed(
    console: Console,
    url: str,
    size: int,
    book: PriceBook,
    request: RepriceRequest,
    baseline: str,
    since: datetime,
) -> Timed:
    """(reprice seconds, baseline seconds, plan). The baseline first, rolled back: both start
    from a vacuumed table with the same rows to rewrite; the baseline extends the table, the
    reprice reuses that space."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE api_calls")
    with psycopg.connect(url) as conn:
        started = time.perf_counter()
        conn.execute(baseline, (since,))  # type: ignore[arg-type]
        plain = time.perf_counter() - started
        conn.rollback()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM api_calls")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with (
        psycopg.connect(url) as conn,
        Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress,
    ):
        task = progress.add_task(f"repricing {size:,} calls", total=None)
        started = time.perf_counter()
        plan = reprice(
            conn,
            book,
            request,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
        seconds = time.perf_counter() - started
    phases = ", ".join(f"{name} {spent:.1f} s" for name, spent in plan.seconds.items())
    console.print(
        f"reprice at {size:,} rows: {plan.calls_changed:,} of {plan.calls_examined:,} calls"
        f" changed in {seconds:.1f} s ({plan.groups:,} groups priced in Python; {phases};"
        f" {plan.writes.get('partitions rewritten', 0)} partitions rewritten,"
        f" {plan.writes.get('updated in place', 0):,} calls updated in place; plain UPDATE of"
        f" the same rows {plain:.1f} s)"
    )
    return seconds, plain, plan


def _result(
    name: str, timed: tuple[float, float, RepricePlan], target: str, ok: bool | None
) -> Result:
    seconds, plain, plan = timed
    return Result(
        name=name,
        result=f"{seconds:.1f} s, {plan.calls_changed:,} changed",
        baseline=f"plain UPDATE {plain:.1f} s",
        ratio=plain / seconds,
        target=target,
        ok=ok,
    )
