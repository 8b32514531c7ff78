"""The alerting files (`alertmanager-config`, `prometheus-rules`) and the daily `digest`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from exporter.cli.output import console, error
from exporter.core.settings import Settings


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
            ("the SMTP password (NEXUS_SMTP_AUTH_PASSWORD)", settings.smtp_auth_password),
            ("the Slack webhook URL (NEXUS_SLACK_WEBHOOK_URL)", settings.slack_webhook_url),
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
            error(str(exc))
            return 2
        console.print(
            "the config loads templates/*.tmpl from its own directory: --output PATH writes "
            "both, the config and the templates beside it"
        )
        return 0
    try:
        mode = int(args.file_mode, 8)
    except ValueError:
        error(f"--file-mode {args.file_mode!r} is not an octal mode")
        return 2
    output = Path(args.output)
    if refusal := _refuse_output(settings, args, output):
        error(str(refusal))
        return 2
    try:
        path = write_alertmanager_config(settings, output, mode=mode)
    except (AlertingConfigError, OSError) as exc:
        error(str(exc))
        return 2
    console.print(f"[green]written[/] {path}: {_channels(settings)}")
    return 0


def _channels(settings: Settings) -> str:
    """The channels the written config notifies, named without their secrets."""
    named = [
        ("Telegram", settings.telegram_bot_token),
        (f"email to {settings.alert_email_to}", settings.alert_email_to),
        ("Slack", settings.slack_webhook_url),
        ("your webhook", settings.alert_notify_webhook_url),
    ]
    on = [name for name, value in named if value]
    if not on:
        return "no channel set (Telegram, email, Slack, webhook), only the alert-history webhook"
    return ", ".join(on) + " and the alert-history webhook"


def cmd_prometheus_rules(settings: Settings, args: argparse.Namespace) -> int:
    """Writes the rule files with another single-call threshold, runbook base URL or time
    scale."""
    from pathlib import Path

    from exporter.alerting import AlertingConfigError, write_rules

    try:
        paths = write_rules(
            Path(args.out), args.single_call_usd, args.runbook_base_url, args.time_scale
        )
    except (AlertingConfigError, OSError) as exc:
        error(str(exc))
        return 2
    for path in paths:
        console.print(f"[green]written[/] {path}")
    return 0


def cmd_digest(settings: Settings, args: argparse.Namespace) -> int:
    """Prints yesterday's digest (or --date's) and with --send sends it to Telegram."""
    import re

    from exporter.alerting import TelegramError, send_telegram
    from exporter.core.days import parse_day
    from exporter.core.db import resolve_database
    from exporter.usage.digest import build_digest, render_digest, yesterday

    try:
        day = parse_day("--date", args.date) if args.date else yesterday(settings.timezone)
    except ValueError as exc:
        error(str(exc))
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
            error(str(exc))
            return 1
        console.print("[green]sent to Telegram[/]")
    return 0


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
        help="octal permissions of the file, which holds tokens and passwords (644 when "
        "Alertmanager runs as another user, as in compose)",
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
    command.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiply every for:, range and offset of the rules by FACTOR, in (0, 1] "
        "(0.01 turns 10m into 6s: to watch every alert fire in a test or a trial; default 1)",
    )


def _digest_arguments(command: argparse.ArgumentParser) -> None:
    command.add_argument("--date", help="the local day to report (default: yesterday)")
    command.add_argument("--send", action="store_true", help="send it to Telegram")


ALERTING_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "alertmanager-config": _alertmanager_config_arguments,
    "prometheus-rules": _prometheus_rules_arguments,
    "digest": _digest_arguments,
}
