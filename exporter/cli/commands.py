"""The one-shot commands: migrate, report, retention, prices, dashboards, demo."""

from __future__ import annotations

import argparse

from rich.console import Console

from exporter.cli.output import console, error
from exporter.core.days import parse_day
from exporter.core.settings import Settings


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.core.db import migrate, resolve_database

    url, embedded = resolve_database(settings.database_url, settings.data_dir)
    try:
        applied = migrate(url)
    finally:
        if embedded:
            embedded.stop()
    names = ", ".join(f"{m.version:03d}_{m.name}" for m in applied) or "none (up to date)"
    console.print(f"[green]migrations applied:[/] {names}")
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, datetime

    import psycopg
    from fastapi.encoders import jsonable_encoder

    from exporter.service import open_database
    from exporter.usage.reports import build_report, last_complete_day, print_report

    now = datetime.now(UTC)
    try:
        day = parse_day("--date", args.date) if args.date else None
    except ValueError as exc:
        error(str(exc))
        return 2
    database = open_database(settings)
    try:
        with psycopg.connect(database.url, autocommit=True) as conn:
            day = day or last_complete_day(conn, args.period, settings.timezone, now)
            report = build_report(conn, args.period, settings.timezone, day, now)
    finally:
        database.close()
    if args.json:
        print(json.dumps(jsonable_encoder(report), indent=2))
    else:
        print_report(report)
    return 0


def cmd_retention(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from exporter.service import open_database
    from exporter.usage.retention import apply_retention

    database = open_database(settings)
    try:
        with console.status(f"dropping raw calls older than {settings.retention_days} days"):
            result = apply_retention(database.url, settings.retention_days, datetime.now(UTC))
    finally:
        database.close()
    console.print(f"cutoff {result.cutoff:%Y-%m-%d %H:%M} UTC; summaries are kept")
    for name in result.dropped:
        console.print(f"[yellow]dropped[/] {name}")
    console.print(f"[green]{len(result.dropped)} dropped[/], {len(result.kept)} kept")
    return 0


def cmd_prices(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.cli.repricing import cmd_unpriced
    from exporter.ingest.price_overrides import PriceOverridesError
    from exporter.ingest.pricing import PriceBook, render_price_table

    if args.unpriced:
        return cmd_unpriced(settings, args)
    if not args.model:
        error("name a model (e.g. nexus-otel prices claude-sonnet-4-5), or pass --unpriced")
        return 2
    if args.since:
        error(f"--since {args.since!r} goes with --unpriced only")
        return 2
    try:
        book = PriceBook(settings.prices_file)
        if args.provider and (unknown := book.unknown_provider(args.provider)):
            error(unknown)
            return 2
        info = book.describe(args.model, provider=args.provider)
    except (LookupError, PriceOverridesError) as exc:
        error(str(exc))
        return 2
    Console().print(render_price_table(info))
    return 0


def cmd_dashboards(settings: Settings, args: argparse.Namespace) -> int:
    """Regenerates the Grafana dashboards JSON from code, or checks it is up to date."""
    from pathlib import Path

    try:
        from exporter.dashboards import stale, write_all
    except ImportError as exc:
        error(f"{exc}: install nexus-otel with [dashboards] (README: Install)")
        return 2
    directory = Path(args.out)
    if args.check:
        if not directory.is_dir():  # run elsewhere than the repository root, or a wrong --out
            error(f"dashboards directory {directory.absolute()} not found")
            return 2
        outdated = stale(directory)
        for path in outdated:
            state = "out of date:" if path.exists() else "not found:  "
            console.print(f"[red]{state}[/] {path}")
        return 1 if outdated else 0
    try:
        written = write_all(directory)
    except OSError as exc:  # --out names a file, or a place that cannot be written
        error(f"cannot write the dashboards to {directory}: {exc}")
        return 2
    for path, changed in written.items():
        console.print(f"{'[green]written[/]  ' if changed else 'unchanged'} {path}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The stack, provider simulators and a carousel workload through the official SDKs."""
    try:
        from exporter.demo.run import run_demo
    except ImportError as exc:  # the provider SDKs come with the `demo` extra
        error(f"{exc}; install nexus-otel with [demo] (README: Install)")
        return 2
    return run_demo(settings, args.duration)
