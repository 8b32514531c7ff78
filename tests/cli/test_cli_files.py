"""Commands that read or write files, run as users run them (their own process, in a directory
of their own): they print rather than overwrite, keep tokens out of git work trees, create no
directory unasked, and name what the user set when a value is wrong."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "987654:secret-bot-token"
TRACKED = "# the shipped file, tracked by git\n"


def _cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`nexus-otel ARGS` in `cwd` with only `env` set of the settings the tests touch."""
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.upper().startswith(("NEXUS_", "TELEGRAM_", "DAILY_BUDGET", "BUDGET_"))
    }
    # COLUMNS: messages on one line, so they are compared whole
    base |= {"PYTHONPATH": str(ROOT), "COLUMNS": "500", **env}
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        cwd=cwd,
        env=base,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _repository(tmp_path: Path) -> Path:
    """A git work tree holding the shipped config, as a clone does (a `.git` entry suffices)."""
    (tmp_path / ".git").mkdir()
    (tmp_path / "alertmanager").mkdir()
    (tmp_path / "alertmanager" / "alertmanager.yml").write_text(TRACKED)
    return tmp_path


def test_alertmanager_config_prints_the_config_and_writes_nothing(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    result = _cli(repo, "alertmanager-config", TELEGRAM_BOT_TOKEN=TOKEN, TELEGRAM_CHAT_ID="-100")
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert config["receivers"][0]["telegram_configs"][0]["bot_token"] == TOKEN
    assert config["templates"] == ["templates/*.tmpl"]
    assert result.stderr == (
        "the config loads templates/*.tmpl from its own directory: --output PATH writes both, "
        "the config and the templates beside it\n"
    )
    assert (repo / "alertmanager" / "alertmanager.yml").read_text() == TRACKED
    assert sorted(p.name for p in repo.rglob("*")) == [".git", "alertmanager", "alertmanager.yml"]


def test_a_token_is_not_written_into_a_git_work_tree_unless_forced(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    output = repo / "alertmanager" / "alertmanager.yml"
    refused = _cli(
        repo / "alertmanager",
        "alertmanager-config",
        "--output",
        "alertmanager.yml",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID="-100",
        NEXUS_API_TOKEN="api-secret",
    )
    assert refused.returncode == 2
    assert refused.stderr == (
        f"error: alertmanager.yml is inside the git work tree {repo} and would hold the bot "
        "token (TELEGRAM_BOT_TOKEN) and the API token (NEXUS_API_TOKEN): write it outside the "
        "repository, print it (no --output), or pass --force\n"
    )
    assert output.read_text() == TRACKED
    assert not (repo / "alertmanager" / "templates").exists()

    api_token_only = _cli(
        repo, "alertmanager-config", "--output", str(output), NEXUS_API_TOKEN="api-secret"
    )
    assert api_token_only.returncode == 2
    assert "would hold the API token (NEXUS_API_TOKEN):" in api_token_only.stderr
    assert output.read_text() == TRACKED

    forced = _cli(
        repo,
        "alertmanager-config",
        "--output",
        str(output),
        "--force",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID="-100",
    )
    assert forced.returncode == 0, forced.stderr
    assert TOKEN in output.read_text()
    assert output.stat().st_mode & 0o777 == 0o600


def test_placeholders_and_token_free_configs_may_go_into_a_work_tree(tmp_path: Path) -> None:
    repo = _repository(tmp_path)
    output = repo / "alertmanager" / "alertmanager.yml"
    example = _cli(
        repo,
        "alertmanager-config",
        "--example",
        "--output",
        str(output),
        "--file-mode",
        "644",
        TELEGRAM_BOT_TOKEN=TOKEN,
        TELEGRAM_CHAT_ID="-100",
    )
    assert example.returncode == 0, example.stderr
    assert output.read_text() == (ROOT / "alertmanager" / "alertmanager.yml").read_text()
    assert output.stat().st_mode & 0o777 == 0o644
    assert (repo / "alertmanager" / "templates" / "telegram.tmpl").is_file()
    no_token = _cli(repo, "alertmanager-config", "--output", str(output))
    assert no_token.returncode == 0, no_token.stderr
    assert "telegram_configs" not in output.read_text()


def test_a_missing_output_directory_is_an_error_unless_make_dirs(tmp_path: Path) -> None:
    output = tmp_path / "etc" / "alertmanager" / "alertmanager.yml"
    missing = _cli(tmp_path, "alertmanager-config", "--output", str(output))
    assert missing.returncode == 2
    assert missing.stderr == (
        f"error: directory {output.parent} does not exist: create it, or pass --make-dirs\n"
    )
    assert list(tmp_path.iterdir()) == []
    made = _cli(tmp_path, "alertmanager-config", "--output", str(output), "--make-dirs")
    assert made.returncode == 0, made.stderr
    assert output.is_file() and (output.parent / "templates" / "telegram.tmpl").is_file()


def test_a_bad_value_names_the_variable_or_flag_it_came_from(tmp_path: Path) -> None:
    not_a_number = "Input should be a valid integer, unable to parse string as an integer"
    from_env = _cli(tmp_path, "alertmanager-config", TELEGRAM_CHAT_ID="abc")
    assert from_env.returncode == 2
    assert from_env.stderr == f"error: invalid setting: TELEGRAM_CHAT_ID = 'abc': {not_a_number}\n"
    from_flag = _cli(
        tmp_path, "alertmanager-config", "--telegram-chat-id", "x", TELEGRAM_CHAT_ID="abc"
    )
    assert from_flag.stderr == f"error: invalid setting: --telegram-chat-id = 'x': {not_a_number}\n"
    prefixed = _cli(tmp_path, "migrate", NEXUS_OTLP_PORT="99999")
    assert prefixed.returncode == 2
    assert prefixed.stderr == (
        "error: invalid setting: NEXUS_OTLP_PORT = '99999': Input should be less than or equal "
        "to 65535\n"
    )
    bracketed = _cli(tmp_path, "migrate", TELEGRAM_CHAT_ID="[bold]x")
    assert bracketed.stderr == (
        f"error: invalid setting: TELEGRAM_CHAT_ID = '[bold]x': {not_a_number}\n"
    )
    budget = _cli(tmp_path, "migrate", DAILY_BUDGET_USD="-1")
    assert budget.stderr == (
        "error: invalid setting: DAILY_BUDGET_USD = '-1': Input should be greater than 0\n"
    )


def test_dashboards_check_tells_a_missing_directory_from_stale_files(tmp_path: Path) -> None:
    elsewhere = _cli(tmp_path, "dashboards", "--check")
    assert elsewhere.returncode == 2
    assert elsewhere.stderr == (
        f"error: dashboards directory {tmp_path / 'grafana' / 'dashboards'} not found\n"
    )
    out = tmp_path / "boards"
    out.mkdir()
    shipped = ROOT / "grafana" / "dashboards"
    for name in ("overview.json", "costs.json", "performance.json"):
        (out / name).write_text((shipped / name).read_text())
    (out / "roi.json").write_text("{}")
    partial = _cli(tmp_path, "dashboards", "--check", "--out", str(out))
    assert partial.returncode == 1
    assert partial.stderr == (
        f"out of date: {out / 'roi.json'}\nnot found:   {out / 'exporter-health.json'}\n"
    )


def test_dashboards_written_over_a_file_is_one_line_naming_it(tmp_path: Path) -> None:
    """It ended in a traceback (FileExistsError from mkdir)."""
    taken = tmp_path / "boards"
    taken.write_text("a file, not a directory")
    result = _cli(tmp_path, "dashboards", "--out", str(taken))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: cannot write the dashboards to {taken}: [Errno 17] File exists: '{taken}'\n"
    )
    assert taken.read_text() == "a file, not a directory"


def test_brackets_in_what_a_user_typed_are_printed_as_typed(tmp_path: Path) -> None:
    """Error lines are rich markup: `[/x]` in a path or a value ended in a MarkupError
    traceback, and `[bold]` vanished from the line."""
    missing = tmp_path / "[/x]" / "boards"
    checked = _cli(tmp_path, "dashboards", "--check", "--out", str(missing))
    assert (checked.returncode, checked.stderr) == (
        2, f"error: dashboards directory {missing} not found\n"
    )  # fmt: skip
    config = tmp_path / "[bold]" / "alertmanager.yml"
    written = _cli(tmp_path, "alertmanager-config", "--example", "--output", str(config))
    assert (written.returncode, written.stderr) == (
        2, f"error: directory {config.parent} does not exist: create it, or pass --make-dirs\n"
    )  # fmt: skip
    mode = _cli(tmp_path, "alertmanager-config", "--output", "x.yml", "--file-mode", "[/x]")
    assert (mode.returncode, mode.stderr) == (2, "error: --file-mode '[/x]' is not an octal mode\n")


def test_a_refused_credential_is_never_shown(tmp_path: Path) -> None:
    """A token or password in an error line lands in a service's log: a refused one is hidden,
    a refused database URL shown with its password masked."""
    header_rule = (
        "Value error, a token may hold only printable ASCII characters (no accents), and no space"
        " at either end: it is sent in an HTTP header"
    )
    # Sent as UTF-8 by clients and read as Latin-1 by the server, such a token never matched.
    accented = _cli(tmp_path, "migrate", NEXUS_API_TOKEN="tök3n-s3cret")
    assert (accented.returncode, accented.stderr) == (
        2, f"error: invalid setting: NEXUS_API_TOKEN = *** (hidden): {header_rule}\n"
    )  # fmt: skip
    spaced = _cli(tmp_path, "serve", "--ingest-token", "my s3cret ")  # stripped when sent
    assert (
        spaced.stderr == f"error: invalid setting: --ingest-token = *** (hidden): {header_rule}\n"
    )
    mistyped = _cli(tmp_path, "migrate", NEXUS_DATABASE_URL="mysql://app:s3cret@db/nexus")
    assert (mistyped.returncode, mistyped.stderr) == (
        2,
        "error: invalid setting: NEXUS_DATABASE_URL = 'mysql://app:***@db/nexus': Value error,"
        " must be a postgresql:// URL or a libpq key=value string\n",
    )
    for result in (accented, spaced, mistyped):
        assert "s3cret" not in result.stderr + result.stdout
