"""The parser and the dispatch: one line per failure, exit 2 when a command cannot run."""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from pydantic import ValidationError

from exporter.cli.alerting import (
    ALERTING_ARGUMENTS,
    cmd_alertmanager_config,
    cmd_digest,
    cmd_prometheus_rules,
)
from exporter.cli.commands import (
    cmd_dashboards,
    cmd_demo,
    cmd_migrate,
    cmd_prices,
    cmd_report,
    cmd_retention,
)
from exporter.cli.flags import (
    ALERTMANAGER,
    API,
    DATABASE,
    DEMO,
    SERVE,
    TELEGRAM,
    add_settings_flags,
    load_settings,
    setting_names,
    settings_error,
)
from exporter.cli.output import Command, error
from exporter.cli.repricing import add_reprice_arguments, add_unpriced_arguments, cmd_reprice
from exporter.cli.serving import cmd_api, cmd_serve


@dataclass(frozen=True)
class Subcommand:
    run: Command
    help: str
    settings: tuple[str, ...]  # the settings `run` reads


COMMANDS: dict[str, Subcommand] = {
    "serve": Subcommand(cmd_serve, "run the OTLP ingest, metrics and API servers", SERVE),
    "api": Subcommand(cmd_api, "run only the API server", API),
    "report": Subcommand(
        cmd_report,
        "print a daily, weekly or monthly spend report",
        DATABASE + setting_names("timezone"),
    ),
    "retention": Subcommand(
        cmd_retention,
        "drop raw calls older than --retention-days (keeps summaries)",
        DATABASE + setting_names("retention_days"),
    ),
    "migrate": Subcommand(cmd_migrate, "apply database migrations (idempotent)", DATABASE),
    "demo": Subcommand(
        cmd_demo, "run the stack on the embedded PostgreSQL with a live demo workload", DEMO
    ),
    "prices": Subcommand(
        cmd_prices,
        "show what a model costs and where the price comes from (--unpriced: the models"
        " stored without a price)",
        DATABASE + setting_names("prices_file"),
    ),
    "reprice": Subcommand(
        cmd_reprice,
        "recompute stored calls' costs with today's prices and overrides, with a record"
        " (--history lists the records)",
        DATABASE + setting_names("prices_file"),
    ),
    "dashboards": Subcommand(
        cmd_dashboards, "regenerate the Grafana dashboards JSON from code", ()
    ),
    "alertmanager-config": Subcommand(
        cmd_alertmanager_config, "write alertmanager.yml from settings", ALERTMANAGER
    ),
    "prometheus-rules": Subcommand(
        cmd_prometheus_rules, "write the rule files with other thresholds", ()
    ),
    "digest": Subcommand(
        cmd_digest,
        "print (--send: send to Telegram) yesterday's spend digest",
        DATABASE + setting_names("timezone") + TELEGRAM,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nexus-otel",
        description="LLM token and cost monitor",
        epilog="exit status: 0 done; 1 a check found a problem (dashboards --check, digest"
        " --send); 2 the command could not run as given (a bad setting or argument, the"
        " database unreachable, a port in use, a missing extra); 130 interrupted",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, subcommand in COMMANDS.items():
        command = sub.add_parser(name, help=subcommand.help, description=subcommand.help)
        if name == "prices":
            command.add_argument("model", nargs="?", help="model name, e.g. claude-sonnet-4-5")
            command.add_argument("--provider", help="provider, e.g. anthropic, gcp.gemini, groq")
            add_unpriced_arguments(command)
        if name == "reprice":
            add_reprice_arguments(command)
        if name == "dashboards":
            command.add_argument("--out", default="grafana/dashboards", help="output directory")
            command.add_argument(
                "--check",
                action="store_true",
                help="exit 1 if a file is missing or out of date, 2 if the directory is not found",
            )
        if name == "report":
            command.add_argument(
                "--period", choices=["daily", "weekly", "monthly"], default="daily"
            )
            command.add_argument(
                "--date", help="a local date in the period (default: the last complete one)"
            )
            command.add_argument("--json", action="store_true", help="print JSON, not tables")
        if name == "demo":
            command.add_argument(
                "--duration",
                type=_seconds,
                help="seconds to run unattended (default: until Ctrl-C)",
            )
        if name in ALERTING_ARGUMENTS:
            ALERTING_ARGUMENTS[name](command)
        add_settings_flags(command, subcommand.settings)
    return parser


def _seconds(text: str) -> float:
    """A duration: a finite number of seconds above 0 (-5 and nan ran one round and stopped)."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds above 0")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Its start/stop chatter, and on a failed start the server's whole log: that failure is
    # one line naming the data directory and its log file (EmbeddedDatabaseError).
    logging.getLogger("pgserver").setLevel(logging.CRITICAL)
    try:
        settings = load_settings(args)
    except ValidationError as exc:
        error(settings_error(exc, args))
        return 2
    handler: Any = COMMANDS[args.command].run
    from exporter.core.db import EmbeddedDatabaseError, masked_conninfo
    from exporter.core.zones import ZoneUnknownToDatabase

    try:
        return int(handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except (EmbeddedDatabaseError, ZoneUnknownToDatabase) as exc:
        error(str(exc))
        return 2
    except psycopg.OperationalError as exc:  # cannot connect: refused, unknown host, password
        where = (
            masked_conninfo(settings.database_url)
            if settings.database_url
            else f"the embedded PostgreSQL in {settings.data_dir}"
        )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        error(f"database {where}: {reason}")
        return 2


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nexus-otel")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"
