"""Each command's --help lists the settings it reads, with their environment variables and
defaults, and only those: a flag of a setting the command does not read is refused."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ENV = {**os.environ, "COLUMNS": "1000"}  # one line per flag
DATABASE = ["--database-url", "--data-dir"]
TELEGRAM = ["--telegram-bot-token", "--telegram-chat-id", "--telegram-api-url"]


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**ENV, **env},
    )


def _setting_lines(command: str) -> dict[str, str]:
    """The --help lines of the settings group, by flag."""
    result = _cli(command, "--help")
    assert result.returncode == 0, result.stderr
    _, _, group = result.stdout.partition("settings (flags override the environment):\n")
    found, flag = {}, None
    for line in group.splitlines():
        if match := re.fullmatch(r"  (--[a-z-]+) VALUE(?:\s+(.*))?", line):
            flag = match[1]
            found[flag] = match[2] or ""
        elif flag and not found[flag]:  # a long flag's help starts on the next line
            found[flag] = line.strip()
    return found


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        ("migrate", DATABASE),
        ("report", [*DATABASE, "--timezone"]),
        ("retention", [*DATABASE, "--retention-days"]),
        ("prices", [*DATABASE, "--prices-file"]),  # --unpriced reads the stored calls
        ("reprice", [*DATABASE, "--prices-file"]),
        ("dashboards", []),
        ("prometheus-rules", []),
        ("digest", [*DATABASE, "--timezone", *TELEGRAM]),
        (
            "demo",
            [*DATABASE, "--host", "--otlp-port", "--api-port", "--api-token", "--daily-budget-usd"],
        ),
        (
            "alertmanager-config",
            [
                "--api-port",
                "--api-token",
                *TELEGRAM,
                "--alert-webhook-url",
                "--alert-link-url",
                "--watchdog-url",
                "--alert-email-to",
                "--alert-email-from",
                "--smtp-smarthost",
                "--smtp-auth-username",
                "--smtp-auth-password",
                "--smtp-require-tls",
                "--slack-webhook-url",
                "--slack-channel",
                "--alert-notify-webhook-url",
            ],
        ),
    ],
)
def test_help_lists_the_settings_the_command_reads(command: str, flags: list[str]) -> None:
    assert sorted(_setting_lines(command)) == sorted(flags)


def test_serve_help_lists_its_settings_with_environment_names_and_defaults() -> None:
    lines = _setting_lines("serve")
    assert lines["--otlp-port"] == (
        "OTLP/HTTP ingest and /metrics (env NEXUS_OTLP_PORT; default: 4318)"
    )
    assert lines["--queue-max-rows"] == (
        "rows waiting for the database before ingest says 503 (env NEXUS_QUEUE_MAX_ROWS; "
        "default: 50000)"
    )
    assert (
        lines["--ingest-token"]
        == "bearer token for /v1/traces (env NEXUS_INGEST_TOKEN; default: unset)"
    )
    assert lines["--daily-budget-usd"] == (
        "creates a default daily budget (env DAILY_BUDGET_USD; default: unset)"
    )
    # every setting but the three only the Alertmanager configuration reads
    assert sorted(lines) == sorted(
        [
            *DATABASE,
            "--host",
            "--otlp-port",
            "--api-port",
            "--prices-file",
            "--store-content",
            "--max-body-bytes",
            "--decode-processes",
            "--batch-max-rows",
            "--write-connections",
            "--queue-max-rows",
            "--write-timeout-seconds",
            "--retry-after-seconds",
            "--header-timeout-seconds",
            "--body-timeout-seconds",
            "--body-min-bytes-per-second",
            "--max-connections",
            "--api-max-body-bytes",
            "--alert-webhook-max-body-bytes",
            "--ws-queue-max-bytes",
            "--ws-send-timeout-seconds",
            "--allow-unauthenticated",
            "--ingest-token",
            "--api-token",
            "--metrics-token",
            "--metrics-max-series",
            "--metrics-max-budgets",
            "--daily-budget-usd",
            "--budget-warning-threshold",
            "--timezone",
            "--retention-days",
            "--cors-origins",
            *TELEGRAM,
            "--digest-time",
        ]
    )


def test_digest_help_lists_the_telegram_settings() -> None:
    lines = _setting_lines("digest")
    assert lines["--telegram-chat-id"] == (
        "Telegram chat (a number) the bot writes to (env TELEGRAM_CHAT_ID; default: unset)"
    )
    assert lines["--telegram-api-url"] == (
        "Telegram Bot API server (env NEXUS_TELEGRAM_API_URL; default: https://api.telegram.org)"
    )


def test_the_api_reads_no_ingest_setting() -> None:
    lines = _setting_lines("api")
    assert "--api-port" in lines and "--cors-origins" in lines
    assert not {"--otlp-port", "--ingest-token", "--queue-max-rows", "--prices-file"} & set(lines)


def test_a_flag_of_a_setting_the_command_does_not_read_is_refused() -> None:
    result = _cli("prices", "claude-sonnet-4-5", "--telegram-chat-id", "1")
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        "nexus-otel: error: unrecognized arguments: --telegram-chat-id 1"
    )


@pytest.mark.parametrize("command", [["digest"], ["prices", "claude-sonnet-4-5"]])
def test_a_bad_telegram_chat_id_names_the_variable_set(command: list[str]) -> None:
    result = _cli(*command, TELEGRAM_CHAT_ID="@mychannel")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: invalid setting: TELEGRAM_CHAT_ID = '@mychannel': Input should be a valid "
        "integer, unable to parse string as an integer\n"
    )
