"""`reprice` (and `--history`) and `prices --unpriced`: correcting stored costs, with a record."""

from __future__ import annotations

import argparse
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from exporter.cli.output import console, error
from exporter.core.days import parse_day
from exporter.core.db import BIGINT_MAX
from exporter.core.settings import Settings

if TYPE_CHECKING:
    from exporter.usage.reprice import RepricePlan

# `prices --unpriced` looks this far back without --since: a month of calls, as the reports.
UNPRICED_DEFAULT_DAYS = 30
# `reprice --history` lists this many revisions, newest first.
HISTORY_DEFAULT = 20
# `reprice --history --revision ID` shows this many of its calls, and says how many more (the
# API pages through them all): a terminal's worth, not a million rows.
REVISION_CALLS_SHOWN = 50


def add_reprice_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--since", metavar="DATE", help="first UTC day of calls to reprice")
    command.add_argument(
        "--until", metavar="DATE", help="last UTC day of calls to reprice (default: today)"
    )
    command.add_argument(
        "--model", metavar="PATTERN", help="only models matching (fnmatch, e.g. 'gpt-4o*')"
    )
    command.add_argument("--provider", metavar="P", help="only this provider, e.g. anthropic")
    command.add_argument(
        "--include-provider-costs",
        action="store_true",
        help="reprice calls whose cost the provider reported too (left alone by default)",
    )
    command.add_argument("--dry-run", action="store_true", help="show the changes, apply none")
    command.add_argument(
        "--history", action="store_true", help="list the past revisions instead, newest first"
    )
    command.add_argument(
        "--revision",
        metavar="ID",
        type=int,
        help="with --history: the calls this revision changed, each with its previous cost",
    )


def add_unpriced_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--unpriced",
        action="store_true",
        help="list the models stored without a price, and print an overrides file for them",
    )
    command.add_argument(
        "--since",
        metavar="DATE",
        help="with --unpriced: calls from this UTC day"
        f" (default: {UNPRICED_DEFAULT_DAYS} days ago)",
    )


def _day(flag: str, value: str | None) -> date | None:
    return None if value is None else parse_day(flag, value)


def cmd_reprice(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from exporter.ingest.price_overrides import PriceOverridesError
    from exporter.ingest.pricing import PriceBook
    from exporter.service import open_database
    from exporter.usage.reprice import RepriceRequest, reprice, utc_day_start

    if args.revision is not None and not args.history:
        error("--revision goes with --history only (it lists the calls a revision changed)")
        return 2
    if args.history:
        if args.revision is not None:
            return _revision_calls(settings, args.revision)
        return _history(settings)
    try:
        since, until = _day("--since", args.since), _day("--until", args.until)
        if since is None:
            raise ValueError("--since is required (the first UTC day of calls to reprice)")
        until = until or datetime.now(UTC).date()
        if until < since:
            raise ValueError(f"--until {args.until!r} is before --since {args.since!r}")
        book = PriceBook(settings.prices_file)
        if args.provider and (unknown := book.unknown_provider(args.provider)):
            raise ValueError(unknown)
    except (ValueError, PriceOverridesError) as exc:
        error(str(exc))
        return 2
    request = RepriceRequest(
        since=utc_day_start(since),
        until=utc_day_start(until) + timedelta(days=1),
        model_pattern=args.model,
        provider=args.provider,
        include_provider_costs=args.include_provider_costs,
    )
    database = open_database(settings)
    try:
        with psycopg.connect(database.url) as conn, _progress() as progress:
            task = progress.add_task("pricing calls", total=None)

            def advance(done: int, total: int) -> None:
                progress.update(task, completed=done, total=total)

            def show(plan: RepricePlan) -> None:
                progress.stop()
                _show_plan(plan, since, until)
                if plan.models and not args.dry_run:
                    console.print(
                        "applying: calls, summaries and the record, in one transaction"
                        " (stored calls wait until it commits)"
                    )

            plan = reprice(
                conn, book, request, apply=not args.dry_run, progress=advance, before_apply=show
            )
    finally:
        database.close()
    if plan.calls_examined == 0:
        console.print("nothing to change: no stored call in that range matches the filters")
    elif not plan.models:
        console.print("nothing to change: every call already has these prices")
    elif args.dry_run:
        console.print("[yellow]dry run:[/] nothing was changed")
    else:
        console.print(
            f"[green]revision {plan.revision_id} applied:[/] {plan.calls_changed:,} calls"
            " repriced; summaries, budgets and reports corrected"
        )
    return 0


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


def _usd(value: Decimal) -> str:
    return f"${value.normalize():f}" if value else "$0"


def _show_plan(plan: RepricePlan, since: date, until: date) -> None:
    if plan.models:
        _show_changes(plan, since, until)
    if plan.out_of_range:
        console.print(
            f"[yellow]{plan.out_of_range:,} calls left as they are:[/] their new price would be"
            " $1,000,000 or more, which no call costs (check the overrides' units: USD per"
            " million tokens)"
        )


def _show_changes(plan: RepricePlan, since: date, until: date) -> None:
    table = Table(
        title=f"Repricing calls of {since} to {until} (UTC): {plan.calls_examined:,} examined",
        title_justify="left",
    )
    for column in ("provider", "model", "calls changed", "newly priced", "old total", "new total",
                   "difference"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("provider", "model") else "right")
    for change in sorted(plan.models.values(), key=lambda m: (m.provider, m.model)):
        table.add_row(
            change.provider,
            change.model,
            f"{change.calls_changed:,}",
            f"{change.newly_priced:,}",
            _usd(change.old_cost_usd),
            _usd(change.new_cost_usd),
            _usd(change.new_cost_usd - change.old_cost_usd),
        )
    Console().print(table)


def _history(settings: Settings) -> int:
    import psycopg

    from exporter.service import open_database
    from exporter.usage.revisions import revisions

    database = open_database(settings)
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            found = revisions(conn, HISTORY_DEFAULT)
    finally:
        database.close()
    table = Table(title="Price revisions, newest first", title_justify="left")
    for column in ("id", "applied (UTC)", "calls of", "filters", "changed", "newly priced",
                   "old total", "new total"):  # fmt: skip
        table.add_column(column)
    for r in found:
        filters = ", ".join(
            f for f in (
                r["provider"] and f"provider {r['provider']}",
                r["model_pattern"] and f"model {r['model_pattern']}",
                r["include_provider_costs"] and "provider costs too",
            ) if f
        )  # fmt: skip
        table.add_row(
            str(r["id"]),
            f"{r['created_at'].astimezone(UTC):%Y-%m-%d %H:%M}",
            f"{r['since'].astimezone(UTC):%Y-%m-%d} to"
            f" {(r['until'] - timedelta(days=1)).astimezone(UTC):%Y-%m-%d}",
            filters or "all",
            f"{r['calls_changed']:,}",
            f"{r['newly_priced']:,}",
            _usd(r["old_cost_usd"]),
            _usd(r["new_cost_usd"]),
        )
    Console().print(table)
    if not found:
        console.print("no revisions yet")
    return 0


def _revision_calls(settings: Settings, revision_id: int) -> int:
    import psycopg

    from exporter.service import open_database
    from exporter.usage.revisions import revision_calls, revision_calls_after

    if not 1 <= revision_id <= BIGINT_MAX:
        error(f"no price revision with id {revision_id}")
        return 2
    database = open_database(settings)
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            page = revision_calls(conn, revision_id, 0, REVISION_CALLS_SHOWN)
            more = 0
            if page is not None and page["next_cursor"] is not None:
                more = revision_calls_after(conn, revision_id, page["next_cursor"])
    finally:
        database.close()
    if page is None:
        error(f"no price revision with id {revision_id}")
        return 2
    table = Table(title=f"Calls changed by price revision {revision_id}", title_justify="left")
    for column in ("time (UTC)", "provider", "model", "tokens in / out", "previous cost",
                   "new cost", "new price from"):  # fmt: skip
        table.add_column(column)
    for c in page["calls"]:
        tokens = (
            "—" if c["input_tokens"] is None else f"{c['input_tokens']:,} / {c['output_tokens']:,}"
        )
        table.add_row(
            f"{c['timestamp'].astimezone(UTC):%Y-%m-%d %H:%M:%S}",
            c["provider"] or "—",
            c["model"] or "—",
            tokens,
            _cost(c["previous_cost_usd"], c["previous_cost_source"]),
            _cost(c["cost_usd"], c["cost_source"]),
            c["price_ref"] or "—",
        )
    Console().print(table)
    if more:
        console.print(
            f"{more:,} more calls; GET /api/prices/revisions/{revision_id}/calls lists them all"
        )
    return 0


def _cost(value: Decimal | None, source: str | None) -> str:
    return "unpriced" if value is None else f"{_usd(value)} ({source})"


def cmd_unpriced(settings: Settings, args: argparse.Namespace) -> int:
    """The models stored without a price (a table on stderr) and an overrides file for them
    (on stdout, so `nexus-otel prices --unpriced > prices.yaml` keeps just the file)."""
    import psycopg

    from exporter.service import open_database
    from exporter.usage.revisions import (
        MAX_UNPRICED_MODELS,
        overrides_template,
        unpriced_models,
    )

    try:
        since = _day("--since", args.since)
    except ValueError as exc:
        error(str(exc))
        return 2
    since = since or (datetime.now(UTC) - timedelta(days=UNPRICED_DEFAULT_DAYS)).date()
    database = open_database(settings)
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            models = unpriced_models(conn, datetime(since.year, since.month, since.day, tzinfo=UTC))
    finally:
        database.close()
    if not models:
        console.print(f"every call since {since} has a price")
        return 0
    if len(models) > MAX_UNPRICED_MODELS:
        models = models[:MAX_UNPRICED_MODELS]
        console.print(
            f"[yellow]more than {MAX_UNPRICED_MODELS} models stored without a price:[/] the"
            f" {MAX_UNPRICED_MODELS} with the most calls are listed; a later --since shows fewer"
        )
    table = Table(title=f"Models stored without a price since {since}", title_justify="left")
    for column in ("provider", "model", "calls", "input tokens", "output tokens", "last call"):
        table.add_column(column)
    for m in models:
        table.add_row(
            m["provider"],
            m["model"],
            f"{m['calls']:,}",
            f"{m['input_tokens']:,}",
            f"{m['output_tokens']:,}",
            f"{m['last_call'].astimezone(UTC):%Y-%m-%d %H:%M}",
        )
    console.print(table)
    print(overrides_template(models, since.isoformat()), end="")
    return 0
