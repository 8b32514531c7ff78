"""The command line's failures as users meet them: one line saying what and where, exit 2."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support import free_port

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "postgresql://user:s3cret@127.0.0.1:1/nexus"  # nothing listens on port 1
SHOWN = "postgresql://user:***@127.0.0.1:1/nexus"
REFUSED = 'connection failed: connection to server at "127.0.0.1", port 1 failed: '
# Tokens set: no warning about an open API beside the error; wide lines: nothing is folded.
ENV = {**os.environ, "COLUMNS": "1000", "NEXUS_API_TOKEN": "t0ken", "NEXUS_INGEST_TOKEN": "t0ken"}


def _run(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=120, env=env or ENV
    )


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return _run("-m", "exporter.cli", *args)


def _only_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line the command printed (on stderr, nothing on stdout)."""
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["report"],
        ["retention"],
        ["digest"],
        ["api", "--api-port", "0"],
        ["serve", "--otlp-port", "0", "--api-port", "0"],
        ["demo", "--duration", "1", "--otlp-port", "0", "--api-port", "0"],
    ],
)
def test_an_unreachable_database_is_one_line_naming_it_without_its_password(
    command: list[str],
) -> None:
    result = _cli(*command, "--database-url", UNREACHABLE)
    assert result.returncode == 2
    line = _only_line(result)
    assert line.startswith(f"error: database {SHOWN}: {REFUSED}"), line
    assert line.endswith("Connection refused"), line
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["report", "--date", "9999-12-31"],
         "error: --date '9999-12-31' is outside 1970-01-02 to 2200-01-01"),
        (["report", "--date", "0001-01-01"],
         "error: --date '0001-01-01' is outside 1970-01-02 to 2200-01-01"),
        (["reprice", "--since", "2026-01-01", "--until", "9999-12-31"],
         "error: --until '9999-12-31' is outside 1970-01-02 to 2200-01-01"),
        (["prices", "--unpriced", "--since", "0001-01-01"],
         "error: --since '0001-01-01' is outside 1970-01-02 to 2200-01-01"),
        (["retention", "--retention-days", "99999999999"],
         "error: invalid setting: --retention-days = '99999999999': Input should be less than or"
         " equal to 100000"),
    ],
)  # fmt: skip
def test_days_past_what_the_database_holds_are_one_line_before_it_is_asked(
    args: list[str], message: str
) -> None:
    """Each of these ended in a traceback (a date out of range, a C int overflow)."""
    result = _cli(*args, "--database-url", UNREACHABLE)
    assert (result.returncode, _only_line(result)) == (2, message)


@pytest.mark.parametrize(
    "setting",
    ["--header-timeout-seconds", "--body-timeout-seconds", "--write-timeout-seconds",
     "--ws-send-timeout-seconds"],
)  # fmt: skip
def test_an_infinite_timeout_is_one_line_naming_it(setting: str) -> None:
    """`--header-timeout-seconds inf` ended in a traceback (OverflowError) once the database was
    up; the others would wait for ever."""
    result = _cli("serve", setting, "inf", "--database-url", UNREACHABLE)
    assert (result.returncode, _only_line(result)) == (
        2, f"error: invalid setting: {setting} = 'inf': Input should be a finite number"
    )  # fmt: skip


@pytest.mark.parametrize("duration", ["-5", "0", "nan", "inf", "ten"])
def test_a_demo_duration_that_is_no_number_of_seconds_is_refused(duration: str) -> None:
    """-5, 0 and nan ran one round of the workload and stopped, as if it had worked."""
    result = _cli("demo", "--duration", duration, "--database-url", UNREACHABLE)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"nexus-otel demo: error: argument --duration: {duration!r} is not a number of seconds"
        " above 0"
    )


def test_a_key_value_conninfo_is_shown_with_its_password_masked() -> None:
    conninfo = "host=127.0.0.1 port=1 user=user password=s3cret dbname=nexus"
    result = _cli("migrate", "--database-url", conninfo)
    assert result.returncode == 2
    line = _only_line(result)
    shown = "host=127.0.0.1 port=1 user=user password=*** dbname=nexus"
    assert line.startswith(f"error: database {shown}: {REFUSED}"), line
    assert "s3cret" not in result.stderr


def test_the_embedded_database_failing_to_start_is_one_line_naming_its_data_dir(
    tmp_path: Path,
) -> None:
    pgdata = tmp_path / "pgdata"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("not a cluster\n")  # pg_ctl is asked to start it
    result = _cli("migrate", "--data-dir", str(tmp_path))
    assert result.returncode == 2
    line = _only_line(result)
    assert line == (
        f"error: the embedded PostgreSQL in {pgdata} did not start: pg_ctl exited with status 1:"
        f' postgres: could not access the server configuration file "{pgdata}/postgresql.conf":'
        f" No such file or directory ({pgdata}/log)"
    )


@pytest.mark.parametrize(
    ("command", "flag", "variable"),
    [
        (["serve", "--api-port", "0", "--otlp-port"], "--otlp-port", "NEXUS_OTLP_PORT"),
        (["serve", "--otlp-port", "0", "--api-port"], "--api-port", "NEXUS_API_PORT"),
        (["api", "--api-port"], "--api-port", "NEXUS_API_PORT"),
    ],
)
def test_a_port_in_use_is_one_line_naming_the_setting_before_anything_starts(
    command: list[str], flag: str, variable: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # The unreachable database shows nothing was opened before the ports were checked.
        result = _cli(*command, str(port), "--database-url", UNREACHABLE)
    assert result.returncode == 2
    assert _only_line(result) == (
        f"error: cannot listen on 127.0.0.1:{port} (Address already in use): choose another"
        f" port with {flag} or {variable}"
    )


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("999.1.1.1", "Name or service not known"),  # does not resolve
        ("192.0.2.1", "Cannot assign requested address"),  # TEST-NET-1: no machine's own
    ],
)
def test_an_address_that_is_not_this_machines_is_one_line_naming_the_host(
    host: str, reason: str
) -> None:
    port = free_port()
    result = _cli(
        "serve", "--host", host, "--allow-unauthenticated", "true", "--otlp-port", str(port),
        "--api-port", "0", "--database-url", UNREACHABLE,
    )  # fmt: skip
    assert result.returncode == 2
    assert _only_line(result) == (
        f"error: cannot listen on {host}:{port} ({reason}): give an address of this machine"
        " with --host or NEXUS_HOST"
    )


def test_one_port_for_both_servers_is_one_line_naming_both_flags() -> None:
    port = free_port()
    result = _cli(
        "serve", "--otlp-port", str(port), "--api-port", str(port), "--database-url", UNREACHABLE
    )
    assert result.returncode == 2
    assert _only_line(result) == (
        f"error: --otlp-port and --api-port are both {port}: give each server its own port"
    )


def test_prices_for_an_unknown_provider_names_it_and_lists_the_known_ones() -> None:
    result = _cli("prices", "claude-sonnet-4-5", "--provider", "notaprovider")
    assert result.returncode == 2
    line = _only_line(result)
    prefix = "error: unknown provider 'notaprovider'; known providers: "
    assert line.startswith(prefix), line
    known = line.removeprefix(prefix).split(", ")
    assert {"anthropic", "openai", "groq", "gcp.gemini", "aws.bedrock", "mistral_ai"} <= set(known)
    assert known == sorted(known)


def test_version_is_the_package_version() -> None:
    result = _cli("--version")
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"nexus-otel {version}\n"


def test_the_console_script_without_the_server_extra_says_which_extra_to_install() -> None:
    """Runs what the installed `nexus-otel` script runs, with `rich` (a server dependency)
    unimportable as in a base install: Python refuses a module set to None in sys.modules."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    module, function = project["scripts"]["nexus-otel"].split(":")
    script = (
        "import sys; sys.modules['rich'] = None\n"
        f"from {module} import {function}\n"
        f"sys.exit({function}())"
    )
    result = _run("-c", script, "migrate")
    assert result.returncode == 2
    assert _only_line(result) == (
        "nexus-otel: the module 'rich' is missing: the command line needs the server extra:"
        " install nexus-otel with [server] (in a clone: pip install -e '.[server]';"
        " README: Install)"
    )
