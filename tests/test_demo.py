"""`nexus-otel demo` as users run it: its own process, a real database, the official SDKs."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from psycopg import sql

from exporter.usage.budgets import GAUGES_TTL_SECONDS
from tests.support import free_port, fresh_database, metric_value, query, with_database

STEPS = {
    ("groq", "fact_generation", "llama-3.3-70b-versatile"),
    ("openai", "fact_dedup", "text-embedding-3-small"),
    ("gcp.gemini", "content_expansion", "gemini-2.5-flash"),
    ("anthropic", "caption", "claude-sonnet-4-5"),
    ("openai", "hashtags", "o4-mini"),
}
KINDS = ("calls", "failed", "input", "output", "cache_read", "cache_write", "reasoning")
ROOT = Path(__file__).parent.parent
# A row of the recent-calls table: time, provider, operation, carousel, tokens, cost, ms, outcome.
RECENT_ROW = re.compile(
    r"^ ?(\d\d:\d\d:\d\d) +(\S+) +(\S+) +(carousel-\d+) +[\d,]+ +(?:\$[\d.]+|unpriced) +(\d+) +\S+"
)
# A call shows in the live view within this long of its end: spans leave the app every 0.5 s
# (nexus_otel's batch delay), then one request, one write and one redraw: about a second,
# measured up to 1.5 s on a shared machine under load; 2 s, as the dashboard page is held to.
LIVE_VIEW_SECONDS = 2.0
# Half the calls show within this long of their write transaction: the view redraws as soon as
# the exporter announces stored calls, so the lag is one redraw (measured: median 0.08 s, under
# load). Redrawn on a 0.5 s timer and refreshed on another, as before: median 0.87 s.
VIEW_LAG_MEDIAN_SECONDS = 0.35
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@pytest.fixture(scope="module")
def demo_run(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path_factory.mktemp("demo-data"))}
    env.pop("DAILY_BUDGET_USD", None)
    env.pop("COLUMNS", None)  # piped, as in CI: the console picks its own width
    return run_demo(database_url, env, 8)


def run_demo(
    database_url: str, env: dict[str, str], seconds: float
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "demo", "--duration", str(seconds),
         "--database-url", database_url,
         "--otlp-port", str(free_port()), "--api-port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT,
    )  # fmt: skip


def _totals(output: str, label: str) -> dict[str, int]:
    match = re.search(rf"^summary: {label} (calls=.*?)(?: cost_usd=.*)?$", output, re.M)
    assert match, output
    values = dict(item.split("=") for item in match.group(1).split())
    return {kind: int(values[kind]) for kind in KINDS}


def test_demo_exits_0_with_a_summary(demo_run: subprocess.CompletedProcess[str]) -> None:
    assert demo_run.returncode == 0, demo_run.stdout + demo_run.stderr
    assert "every call stored exactly once, tokens match to the unit" in demo_run.stdout
    assert "Traceback" not in demo_run.stdout + demo_run.stderr


def test_piped_output_is_not_cut_at_80_columns(
    demo_run: subprocess.CompletedProcess[str],
) -> None:
    # rich wraps a pipe's tables at 80 columns, and ends a live view's last line only on a
    # terminal: the recent calls lost their carousel ids, the summary's title ran on a line.
    assert "…" not in demo_run.stdout
    assert re.search(r"^ \d\d:\d\d:\d\d .* carousel-\d+ ", demo_run.stdout, re.M)
    assert re.search(r"^ +summary *$", demo_run.stdout, re.M), demo_run.stdout


def test_stored_rows_equal_what_the_providers_reported(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    reported = _totals(demo_run.stdout, "providers reported")
    assert _totals(demo_run.stdout, "stored") == reported
    row = query(database_url, """
        SELECT count(*), count(*) FILTER (WHERE NOT success), sum(input_tokens),
               sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
               sum(reasoning_tokens)
        FROM api_calls WHERE service_name = 'carousel-bot'""")[0]  # fmt: skip
    assert dict(zip(KINDS, map(int, row), strict=True)) == reported
    assert reported["calls"] >= 12  # 8 s of three workers
    assert reported["cache_read"] > 0 and reported["cache_write"] > 0
    assert reported["reasoning"] > 0


def test_every_step_is_on_its_provider_with_operation_and_carousel_id(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    steps = query(database_url, "SELECT DISTINCT provider, operation, model FROM api_calls")
    assert set(steps) == STEPS
    ids = [r[0] for r in query(database_url, "SELECT correlation_id FROM api_calls")]
    assert all(re.fullmatch(r"carousel-\d+", i or "") for i in ids)
    complete = query(database_url, """
        SELECT count(*) FROM (SELECT correlation_id FROM api_calls WHERE success
        GROUP BY 1 HAVING count(DISTINCT operation) = 5) AS done""")[0][0]  # fmt: skip
    assert complete >= 3
    priced = query(database_url, "SELECT count(*) FROM api_calls WHERE cost_usd > 0")[0][0]
    assert priced >= complete * 5


def test_some_calls_failed_with_provider_errors_and_some_streamed(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    failed = query(database_url, """
        SELECT provider, error_type, input_tokens + output_tokens FROM api_calls
        WHERE NOT success""")  # fmt: skip
    assert len(failed) == _totals(demo_run.stdout, "providers reported")["failed"] > 0
    assert all(error and tokens == 0 for _, error, tokens in failed), failed
    streamed = query(database_url, """
        SELECT provider, bool_or(stream), bool_and(stream) FROM (
            SELECT provider,
                   coalesce((attributes ->> 'gen_ai.request.stream')::boolean, false) AS stream
            FROM api_calls) AS calls
        GROUP BY 1 ORDER BY 1""")  # fmt: skip
    # OpenAI: embeddings never stream, the Responses API step does every second call.
    assert streamed == [(p, True, False) for p in ("anthropic", "gcp.gemini", "groq", "openai")]


def test_finished_carousels_are_registered_with_engagement(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    finished = int(re.findall(r"(\d+) carousels finished", demo_run.stdout)[-1])
    rows = query(database_url, """
        SELECT c.correlation_id, c.reach, count(DISTINCT a.operation) FILTER (WHERE a.success)
        FROM carousel_performance c JOIN api_calls a USING (correlation_id)
        GROUP BY 1, 2""")  # fmt: skip
    assert len(rows) == finished >= 3
    assert all(reach > 0 and operations == 5 for _, reach, operations in rows)


def test_ctrl_c_stops_cleanly_with_a_summary_and_no_children_left(
    postgres_server: str, tmp_path: Path
) -> None:
    otlp_port, api_port = free_port(), free_port()
    with fresh_database(postgres_server) as url:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "demo", "--database-url", url,
             "--otlp-port", str(otlp_port), "--api-port", str(api_port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NEXUS_DATA_DIR": str(tmp_path), "DAILY_BUDGET_USD": "7.5"},
        )  # fmt: skip
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the endpoints come first, then the workload starts
            lines.append(line)
            if "until Ctrl-C" in line:
                break
        assert any(f"127.0.0.1:{otlp_port}/v1/traces" in line for line in lines), lines
        assert any(f"127.0.0.1:{otlp_port}/metrics" in line for line in lines), lines
        # The demo's daily budget, as the API and the gauges (and so the alerts) see it.
        statuses = httpx.get(f"http://127.0.0.1:{api_port}/api/budget/status").json()
        assert [(s["name"], s["period"], s["amount_usd"]) for s in statuses] == [
            ("default-daily", "daily", 7.5)
        ]
        time.sleep(3)
        assert gauged_limit(f"http://127.0.0.1:{otlp_port}/metrics", "default-daily") == 7.5
        process.send_signal(signal.SIGINT)
        output = "".join(lines) + process.communicate(timeout=60)[0]
        assert process.returncode == 0, output
        assert "summary: stored calls=" in output and "Traceback" not in output
        stored = query(url, "SELECT count(*) FROM api_calls")[0][0]
        assert stored > 0
        with pytest.raises(httpx.HTTPError):  # the exporter it started is gone
            httpx.get(f"http://127.0.0.1:{otlp_port}/health", timeout=2)


def gauged_limit(metrics_url: str, budget: str) -> float:
    """The budget's limit gauge, once /metrics has read the budgets since it was created: the
    gauges are read again GAUGES_TTL_SECONDS after the last read, in the background."""
    deadline = time.monotonic() + GAUGES_TTL_SECONDS * 4  # reads wait for a slow machine
    while (limit := metric_value(httpx.get(metrics_url).text, "nexus_budget_limit_usd",
                                 budget=budget)) == 0 and time.monotonic() < deadline:  # fmt: skip
        time.sleep(0.5)
    return limit


def test_the_dashboards_address_is_printed(demo_run: subprocess.CompletedProcess[str]) -> None:
    api = re.search(r"^API +(http://127\.0\.0\.1:\d+) ", demo_run.stdout, re.M)
    assert api, demo_run.stdout
    assert re.search(rf"^dashboard +{re.escape(api.group(1))}/$", demo_run.stdout, re.M)


def test_the_view_shows_the_daily_budget_the_demo_created(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    budgets = query(database_url, "SELECT name, period_type, budget_usd, enabled FROM cost_budgets")
    assert budgets == [("default-daily", "daily", Decimal(5), True)]
    # The last frame, drawn once every call was stored: today's spend over $5, all this run's.
    spend = query(database_url, "SELECT sum(cost_usd) FROM api_calls")[0][0]
    usage = f"{spend * 100 / 5:.2f}% of $5/day ok"
    lines = [line for line in demo_run.stdout.splitlines() if " budget " in line]
    assert lines and usage in lines[-1], lines


def test_both_tables_name_providers_alike(
    demo_run: subprocess.CompletedProcess[str], database_url: str
) -> None:
    frame = demo_run.stdout.split("per provider (this run)")[-1]
    per_provider, recent = frame.split("recent calls")
    stored = {p for (p,) in query(database_url, "SELECT DISTINCT provider FROM api_calls")}
    named = {
        m.group(1) for m in re.finditer(r"^ *([a-z.]+) +\d+ +\d+ +[\d,]+ +\$", per_provider, re.M)
    }
    shown = {m.group(2) for line in recent.splitlines() if (m := RECENT_ROW.match(line))}
    assert named == stored
    assert shown and shown <= stored, shown


def test_the_budget_is_created_once_and_follows_daily_budget_usd(
    postgres_server: str, tmp_path: Path
) -> None:
    with fresh_database(postgres_server) as url:
        env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path)}
        env.pop("DAILY_BUDGET_USD", None)
        ids = []
        for amount in (None, "7", None):
            if amount:
                env["DAILY_BUDGET_USD"] = amount
            else:
                env.pop("DAILY_BUDGET_USD", None)
            run = run_demo(url, env, 1)
            assert run.returncode == 0, run.stdout + run.stderr
            rows = query(url, "SELECT id, name, budget_usd FROM cost_budgets")
            assert [row[1:] for row in rows] == [("default-daily", Decimal(amount or 5))]
            ids.append(rows[0][0])
        assert len(set(ids)) == 1


@contextlib.contextmanager
def unmigrated_database(server_url: str) -> Iterator[str]:
    """A new, empty database: the demo migrates it, logging as it goes."""
    name = f"nexus_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def run_in_terminal(
    args: list[str], env: dict[str, str], timeout: float
) -> list[tuple[float, str]]:
    """Runs a command in a pseudo-terminal of 160 x 60, as a person would; returns each piece of
    its output, ANSI codes removed, split at line feeds and carriage returns, with the time
    (epoch seconds) it was read."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
    process = subprocess.Popen(
        args, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=ROOT, start_new_session=True
    )
    os.close(slave)
    pieces: list[tuple[float, str]] = []
    pending, deadline = "", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the demo ended
                break
            if not chunk:
                break
            read_at = time.time()
            *complete, pending = re.split(r"[\r\n]", pending + chunk.decode(errors="replace"))
            pieces += [(read_at, ANSI.sub("", piece)) for piece in complete]
        assert process.wait(timeout=30) == 0, "\n".join(p for _, p in pieces[-40:])
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return [*pieces, (time.time(), ANSI.sub("", pending))]


@pytest.fixture(scope="module")
def terminal_run(
    postgres_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[list[tuple[float, str]], str]]:
    """The demo in a terminal, on a database it migrates itself (logging while its spinner
    turns), with what it printed and when, and its database."""
    with unmigrated_database(postgres_server) as url:
        env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path_factory.mktemp("tty")),
               "TERM": "xterm-256color"}  # fmt: skip
        for name in ("COLUMNS", "LINES", "DAILY_BUDGET_USD"):
            env.pop(name, None)
        args = [sys.executable, "-m", "exporter.cli", "demo", "--duration", "8",
                "--database-url", url, "--otlp-port", str(free_port()),
                "--api-port", str(free_port())]  # fmt: skip
        yield run_in_terminal(args, env, timeout=120), url


def test_log_lines_do_not_land_on_the_spinner_line(
    terminal_run: tuple[list[tuple[float, str]], str],
) -> None:
    pieces = [text for _, text in terminal_run[0]]
    logged = [text for text in pieces if "applied migration" in text]
    assert any("applied migration 006_budget_forecast" in text for text in logged), pieces[:40]
    assert not [text for text in logged if "starting" in text], logged


def test_a_stored_call_shows_in_the_live_view_at_once(
    terminal_run: tuple[list[tuple[float, str]], str],
) -> None:
    pieces, url = terminal_run
    first_seen: dict[tuple[str, str, str], float] = {}
    for read_at, text in pieces:
        if match := RECENT_ROW.match(text):
            _, _, operation, carousel, ms = match.groups()
            first_seen.setdefault((carousel, operation, ms), read_at)
    rows = query(
        url,
        """
        SELECT correlation_id, operation, duration_ms, "timestamp", ingested_at FROM api_calls""",
    )
    found: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    for carousel, operation, ms, start, stored in rows:
        ended = (start + timedelta(milliseconds=ms)).timestamp()
        found.setdefault((carousel, operation, f"{ms:.0f}"), []).append((ended, stored.timestamp()))
    seen = {  # retries of a step may share a key: left out
        key: (first_seen[key] - times[0][0], first_seen[key] - times[0][1])
        for key, times in found.items()
        if len(times) == 1 and key in first_seen
    }
    assert len(seen) >= len(rows) // 2, (len(seen), len(rows))  # most calls were seen
    lags = sorted(round(since_stored, 3) for _, since_stored in seen.values())
    assert statistics.median(lags) <= VIEW_LAG_MEDIAN_SECONDS, lags
    late = {key: round(since_end, 3) for key, (since_end, _) in seen.items()
            if since_end > LIVE_VIEW_SECONDS}  # fmt: skip
    assert not late, late
