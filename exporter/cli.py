"""`nexus-otel`: the command line of the server side."""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from exporter.core.settings import Settings

console = Console(stderr=True)
Command = Callable[[Settings, argparse.Namespace], int]


def _add_settings_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per setting the command reads, named like its environment variable
    (`--otlp-port` for NEXUS_OTLP_PORT), in the order the settings are declared."""
    if not names:
        return
    group = parser.add_argument_group("settings (flags override the environment)")
    for name, info in Settings.model_fields.items():
        if name in names:
            flag = "--" + name.replace("_", "-")
            help_text = f"{info.description} (env {_env_names(name)[0]}; default: {_default(name)})"
            group.add_argument(
                flag, dest=f"setting_{name}", metavar="VALUE", help=help_text.replace("%", "%%")
            )


def _env_names(name: str) -> list[str]:
    """The environment variables a setting is read from, the one to document first."""
    choices = getattr(Settings.model_fields[name].validation_alias, "choices", None)
    if choices:
        return [str(c) for c in choices if str(c) != name]
    return ["NEXUS_" + name.upper()]


def _default(name: str) -> str:
    info = Settings.model_fields[name]
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else str(value)


def load_settings(args: argparse.Namespace) -> Settings:
    given = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return Settings(**given)


def _setting_source(loc: str, args: argparse.Namespace) -> str:
    """Where a bad value came from, as the user wrote it: the flag when one was given, else the
    environment variable that is set (`TELEGRAM_CHAT_ID`, not a flag that does not exist)."""
    import os

    # the error names the field, or the alias the value was read under
    name = next((f for f in Settings.model_fields if loc in (f, *_env_names(f))), None)
    if name is None:
        return loc
    if getattr(args, f"setting_{name}", None) is not None:
        return "--" + name.replace("_", "-")
    set_in_env = {key.upper(): key for key, value in os.environ.items() if value}
    wanted = [env.upper() for env in _env_names(name)]
    return next((set_in_env[env] for env in wanted if env in set_in_env), _env_names(name)[0])


def _settings_error(exc: ValidationError, args: argparse.Namespace) -> str:
    lines = []
    for error in exc.errors():
        source = _setting_source(str(error["loc"][0]), args) if error["loc"] else "setting"
        lines.append(f"{source} = {error.get('input')!r}: {error['msg']}")
    return escape("invalid setting: " + "; ".join(lines))  # a value's `[x]` is not markup


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


def _is_loopback(host: str) -> bool:
    """Whether `host` (an address or a name) is reachable from this machine only."""
    import ipaddress

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


def _open_ports_allowed(settings: Settings, *, ingest: bool) -> bool:
    """With no API token the API (budgets, the alert webhook that can resolve alerts) is open,
    and with no ingest token anyone who reaches ingest can add spend and trip budget alerts:
    refused on an address others can reach unless --allow-unauthenticated says it is meant. On
    loopback (apps send spans from this machine), an open API is said aloud."""
    log = logging.getLogger("exporter")
    open_ports = []
    if not settings.api_token:
        open_ports.append(("API token (NEXUS_API_TOKEN)", "the API", settings.api_port))
    if ingest and not settings.ingest_token:
        open_ports.append(("ingest token (NEXUS_INGEST_TOKEN)", "OTLP ingest", settings.otlp_port))
    if not open_ports:
        return True
    if _is_loopback(settings.host):
        if not settings.api_token:
            log.warning(
                "no API token (NEXUS_API_TOKEN): the API on %s:%d is open to every local process",
                settings.host,
                settings.api_port,
            )
        return True
    if settings.allow_unauthenticated:
        for token, port_name, port in open_ports:
            log.warning(
                "no %s and NEXUS_ALLOW_UNAUTHENTICATED=true: %s on %s:%d is open to anyone who"
                " reaches it",
                token,
                port_name,
                settings.host,
                port,
            )
        return True
    missing = " and no ".join(token for token, _, _ in open_ports)
    which = " and ".join(port_name for _, port_name, _ in open_ports)
    console.print(
        f"[red]error:[/] no {missing}, and {settings.host} is not a loopback address: {which}"
        " would be open to anyone who reaches it. Set the token (--api-token, --ingest-token),"
        " bind to 127.0.0.1, or set NEXUS_ALLOW_UNAUTHENTICATED=true (--allow-unauthenticated"
        " true) if that is what you mean."
    )
    return False


def _bind_ports(settings: Settings, ports: dict[str, str]) -> dict[str, socket.socket] | None:
    """Binds each server's port (`ports`: server name → setting) before anything starts, so a
    port in use is one line naming the setting to change, printed before any banner."""
    from exporter.service import bind_port

    socks: dict[str, socket.socket] = {}
    for name, setting in ports.items():
        port = getattr(settings, setting)
        try:
            socks[name] = bind_port(settings.host, port)
        except OSError as exc:
            _close(socks)
            flag, variable = "--" + setting.replace("_", "-"), "NEXUS_" + setting.upper()
            _error(
                f"cannot listen on {settings.host}:{port} ({exc.strerror or exc}): choose another"
                f" port with {flag} or {variable}"
            )
            return None
    return socks


def _close(socks: dict[str, socket.socket]) -> None:
    for sock in socks.values():
        sock.close()


def _with_bound_ports(
    settings: Settings, socks: dict[str, socket.socket], ports: dict[str, str]
) -> Settings:
    """The settings with each port as bound: port 0 asks the system for a free one, and the
    warnings, the banner and everything after them show the port that was given."""
    bound = {setting: socks[name].getsockname()[1] for name, setting in ports.items()}
    return settings.model_copy(update=bound)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    from exporter.ingest.pricing import PriceBook, PriceOverridesError
    from exporter.service import open_database, serve

    try:  # read here, so a bad file is one clear error, not a failure in every decode worker
        PriceBook(settings.prices_file)
    except PriceOverridesError as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    socks = _bind_ports(settings, {"ingest": "otlp_port", "api": "api_port"})
    if socks is None:
        return 2
    settings = _with_bound_ports(settings, socks, {"ingest": "otlp_port", "api": "api_port"})
    if not _open_ports_allowed(settings, ingest=True):
        _close(socks)
        return 2
    database = open_database(settings)
    where = (
        "embedded PostgreSQL in " + str(settings.data_dir) if database.embedded else "PostgreSQL"
    )
    base = f"http://{settings.host}:{settings.otlp_port}"
    console.print(f"[bold]nexus-otel[/] storing calls in {where}")
    console.print(f"  OTLP/HTTP ingest  {base}/v1/traces")
    console.print(f"  metrics           {base}/metrics")
    console.print(f"  health            {base}/health")
    console.print(f"  API               http://{settings.host}:{settings.api_port}/docs")
    try:
        serve(settings, database, socks)
    finally:
        database.close()
    return 0


def cmd_api(settings: Settings, args: argparse.Namespace) -> int:
    """The API alone, for a deployment that runs ingest elsewhere."""
    from exporter.service import open_database, serve_api

    socks = _bind_ports(settings, {"api": "api_port"})
    if socks is None:
        return 2
    settings = _with_bound_ports(settings, socks, {"api": "api_port"})
    if not _open_ports_allowed(settings, ingest=False):
        _close(socks)
        return 2
    database = open_database(settings)
    console.print(f"[bold]nexus-otel API[/] http://{settings.host}:{settings.api_port}/docs")
    try:
        serve_api(settings, database, socks["api"])
    finally:
        database.close()
    return 0


def cmd_report(settings: Settings, args: argparse.Namespace) -> int:
    import json
    from datetime import UTC, date, datetime

    import psycopg
    from fastapi.encoders import jsonable_encoder

    from exporter.service import open_database
    from exporter.usage.reports import build_report, last_complete_day, print_report

    now = datetime.now(UTC)
    try:
        day = date.fromisoformat(args.date) if args.date else None
    except ValueError:
        console.print(f"[red]error:[/] --date {args.date!r} is not a date (YYYY-MM-DD)")
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
    from exporter.ingest.pricing import PriceBook, PriceOverridesError, render_price_table

    try:
        book = PriceBook(settings.prices_file)
        if args.provider and (unknown := book.unknown_provider(args.provider)):
            _error(unknown)
            return 2
        info = book.describe(args.model, provider=args.provider)
    except (LookupError, PriceOverridesError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    Console().print(render_price_table(info))
    return 0


def cmd_dashboards(settings: Settings, args: argparse.Namespace) -> int:
    """Regenerates the Grafana dashboards JSON from code, or checks it is up to date."""
    from pathlib import Path

    try:
        from exporter.dashboards import stale, write_all
    except ImportError as exc:
        extra = escape("[dashboards]")
        console.print(f"[red]error:[/] {exc}: install nexus-otel with {extra} (README: Install)")
        return 2
    directory = Path(args.out)
    if args.check:
        if not directory.is_dir():  # run elsewhere than the repository root, or a wrong --out
            console.print(f"[red]error:[/] dashboards directory {directory.absolute()} not found")
            return 2
        outdated = stale(directory)
        for path in outdated:
            state = "out of date:" if path.exists() else "not found:  "
            console.print(f"[red]{state}[/] {path}")
        return 1 if outdated else 0
    for path, changed in write_all(directory).items():
        console.print(f"{'[green]written[/]  ' if changed else 'unchanged'} {path}")
    return 0


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    """The stack, provider simulators and a carousel workload through the official SDKs."""
    try:
        from exporter.demo.run import run_demo
    except ImportError as exc:  # the provider SDKs come with the `demo` extra
        extra = escape("[demo]")
        console.print(f"[red]error:[/] {exc}; install nexus-otel with {extra} (README: Install)")
        return 2
    return run_demo(settings, args.duration)


def _git_work_tree(path: Path) -> Path | None:
    """The git work tree `path` would be in (a `.git` entry in it or a parent), if any."""
    for directory in path.absolute().parents:
        if (directory / ".git").exists():
            return directory
    return None


def _refuse_output(settings: Settings, args: argparse.Namespace, output: Path) -> str | None:
    """Why the config must not be written to `output`: a file in a git work tree gets committed
    with its secrets; a missing directory is a typo more often than a wish."""
    secrets = [
        name
        for name, value in (
            ("the bot token (TELEGRAM_BOT_TOKEN)", settings.telegram_bot_token),
            ("the API token (NEXUS_API_TOKEN)", settings.api_token),
        )
        if value and not args.example  # the example's credentials are placeholders
    ]
    work_tree = _git_work_tree(output)
    if secrets and work_tree and not args.force:
        return (
            f"{output} is inside the git work tree {work_tree} and would hold "
            f"{' and '.join(secrets)}: write it outside the repository, print it (no --output), "
            "or pass --force"
        )
    if not output.parent.is_dir() and not args.make_dirs:
        return f"directory {output.parent} does not exist: create it, or pass --make-dirs"
    return None


def cmd_alertmanager_config(settings: Settings, args: argparse.Namespace) -> int:
    """Prints alertmanager.yml from settings (Alertmanager reads no env), or with --output writes
    it and the message templates it loads beside it."""
    from exporter.alerting import (
        AlertingConfigError,
        example_settings,
        render_alertmanager_config,
        write_alertmanager_config,
    )

    if args.example:
        settings = example_settings()
    if args.output is None:
        try:
            sys.stdout.write(render_alertmanager_config(settings))
        except AlertingConfigError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 2
        console.print(
            "the config loads templates/*.tmpl from its own directory: --output PATH writes "
            "both, the config and templates/telegram.tmpl beside it"
        )
        return 0
    try:
        mode = int(args.file_mode, 8)
    except ValueError:
        console.print(f"[red]error:[/] --file-mode {args.file_mode!r} is not an octal mode")
        return 2
    output = Path(args.output)
    if refusal := _refuse_output(settings, args, output):
        console.print(f"[red]error:[/] {refusal}")
        return 2
    try:
        path = write_alertmanager_config(settings, output, mode=mode)
    except (AlertingConfigError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    telegram = "Telegram and " if settings.telegram_bot_token else "no Telegram (unset), only "
    console.print(f"[green]written[/] {path}: {telegram}the alert-history webhook")
    return 0


def cmd_prometheus_rules(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the rule files with another single-call threshold or runbook base URL."""
    from pathlib import Path

    from exporter.alerting import AlertingConfigError, write_rules

    try:
        paths = write_rules(Path(args.out), args.single_call_usd, args.runbook_base_url)
    except (AlertingConfigError, OSError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 2
    for path in paths:
        console.print(f"[green]written[/] {path}")
    return 0


def cmd_digest(settings: Settings, args: argparse.Namespace) -> int:
    """Prints yesterday's digest (or --date's) and with --send sends it to Telegram."""
    import re
    from datetime import date

    from exporter.alerting import TelegramError, send_telegram
    from exporter.core.db import resolve_database
    from exporter.usage.digest import build_digest, render_digest, yesterday

    try:
        day = date.fromisoformat(args.date) if args.date else yesterday(settings.timezone)
    except ValueError:
        console.print(f"[red]error:[/] --date {args.date!r} is not a YYYY-MM-DD date")
        return 2
    url, embedded = resolve_database(settings.database_url, settings.data_dir)
    try:
        text = render_digest(build_digest(url, day, settings.timezone))
    finally:
        if embedded:
            embedded.stop()
    Console().print(re.sub(r"<[^>]+>", "", text), markup=False, highlight=False)
    if args.send:
        try:
            send_telegram(settings, text)
        except TelegramError as exc:
            console.print(f"[red]error:[/] {exc}")
            return 1
        console.print("[green]sent to Telegram[/]")
    return 0


def _settings(names: str) -> tuple[str, ...]:
    """Setting names, checked: a misspelt one fails at import, not as a missing flag."""
    unknown = [name for name in names.split() if name not in Settings.model_fields]
    if unknown:
        raise NameError(f"not settings: {unknown}")
    return tuple(names.split())


# The settings each command reads, and so the only setting flags its --help lists and accepts.
_DATABASE = _settings("database_url data_dir")
_CONNECTION_LIMITS = _settings(
    "header_timeout_seconds body_timeout_seconds body_min_bytes_per_second max_connections"
    " ws_send_timeout_seconds"
)
_TELEGRAM = _settings("telegram_bot_token telegram_chat_id telegram_api_url")
_API = (
    _DATABASE
    + _CONNECTION_LIMITS
    + _settings(
        "host api_port api_token allow_unauthenticated api_max_body_bytes cors_origins timezone"
        " alert_webhook_max_body_bytes ws_queue_max_bytes daily_budget_usd budget_warning_threshold"
    )
)
_SERVE = (
    _API
    + _TELEGRAM
    + _settings(
        "otlp_port ingest_token metrics_token prices_file store_content max_body_bytes"
        " decode_processes batch_max_rows queue_max_rows write_timeout_seconds retry_after_seconds"
        " metrics_max_series metrics_max_budgets retention_days digest_time"
    )
)
_DEMO = _DATABASE + _settings("host otlp_port api_port api_token daily_budget_usd")
_ALERTMANAGER = _TELEGRAM + _settings(
    "alert_webhook_url alert_link_url watchdog_url api_port api_token"
)


@dataclass(frozen=True)
class Subcommand:
    run: Command
    help: str
    settings: tuple[str, ...]  # the settings `run` reads


COMMANDS: dict[str, Subcommand] = {
    "serve": Subcommand(cmd_serve, "run the OTLP ingest, metrics and API servers", _SERVE),
    "api": Subcommand(cmd_api, "run only the API server", _API),
    "report": Subcommand(
        cmd_report,
        "print a daily, weekly or monthly spend report",
        _DATABASE + _settings("timezone"),
    ),
    "retention": Subcommand(
        cmd_retention,
        "drop raw calls older than --retention-days (keeps summaries)",
        _DATABASE + _settings("retention_days"),
    ),
    "migrate": Subcommand(cmd_migrate, "apply database migrations (idempotent)", _DATABASE),
    "demo": Subcommand(
        cmd_demo, "run the stack on the embedded PostgreSQL with a live demo workload", _DEMO
    ),
    "prices": Subcommand(
        cmd_prices,
        "show what a model costs and where the price comes from",
        _settings("prices_file"),
    ),
    "dashboards": Subcommand(
        cmd_dashboards, "regenerate the Grafana dashboards JSON from code", ()
    ),
    "alertmanager-config": Subcommand(
        cmd_alertmanager_config, "write alertmanager.yml from settings", _ALERTMANAGER
    ),
    "prometheus-rules": Subcommand(
        cmd_prometheus_rules, "write the rule files with other thresholds", ()
    ),
    "digest": Subcommand(
        cmd_digest,
        "print (--send: send to Telegram) yesterday's spend digest",
        _DATABASE + _settings("timezone") + _TELEGRAM,
    ),
}


def _alertmanager_config_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--output",
        metavar="PATH",
        help="write the config here and templates/ beside it (default: print the config); "
        "refused inside a git work tree when it holds a token, unless --force",
    )
    command.add_argument(
        "--force",
        action="store_true",
        help="write tokens into a file inside a git work tree all the same",
    )
    command.add_argument(
        "--make-dirs", action="store_true", help="create the --output directory if missing"
    )
    command.add_argument(
        "--file-mode",
        default="600",
        help="octal permissions of the file, which holds the bot token (644 when Alertmanager "
        "runs as another user, as in compose)",
    )
    command.add_argument(
        "--example",
        action="store_true",
        help="placeholder credentials: the shipped alertmanager/alertmanager.yml",
    )


def _prometheus_rules_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--out", default="prometheus/rules", help="directory to write")
    command.add_argument(
        "--single-call-usd",
        type=float,
        default=0.5,
        help="alert on one call costing more (a bucket boundary of nexus_llm_call_cost_usd)",
    )
    command.add_argument(
        "--runbook-base-url",
        default="https://github.com/nexus-otel/nexus-otel/blob/main",
        help="runbook_url = <this>/docs/RUNBOOK.md#<alert>",
    )


def _digest_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--date", help="the local day to report (default: yesterday)")
    command.add_argument("--send", action="store_true", help="send it to Telegram")


ALERTING_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "alertmanager-config": _alertmanager_config_arguments,
    "prometheus-rules": _prometheus_rules_arguments,
    "digest": _digest_arguments,
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
            command.add_argument("model", help="model name, e.g. claude-sonnet-4-5")
            command.add_argument("--provider", help="provider, e.g. anthropic, gcp.gemini, groq")
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
                "--duration", type=float, help="seconds to run unattended (default: until Ctrl-C)"
            )
        if name in ALERTING_ARGUMENTS:
            ALERTING_ARGUMENTS[name](command)
        _add_settings_flags(command, subcommand.settings)
    return parser


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
        console.print(f"[red]error:[/] {_settings_error(exc, args)}")
        return 2
    handler: Any = COMMANDS[args.command].run
    from exporter.core.db import EmbeddedDatabaseError, masked_conninfo
    from exporter.core.zones import ZoneUnknownToDatabase

    try:
        return int(handler(settings, args))
    except KeyboardInterrupt:
        return 130
    except (EmbeddedDatabaseError, ZoneUnknownToDatabase) as exc:
        _error(str(exc))
        return 2
    except psycopg.OperationalError as exc:  # cannot connect: refused, unknown host, password
        where = (
            masked_conninfo(settings.database_url)
            if settings.database_url
            else f"the embedded PostgreSQL in {settings.data_dir}"
        )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _error(f"database {where}: {reason}")
        return 2


def _error(message: str) -> None:
    """One line on stderr, however long: a log or a terminal keeps it whole."""
    console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nexus-otel")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
