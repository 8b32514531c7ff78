"""`nexus-otel demo` as users run it: its own process, a real database, the official SDKs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, fresh_database, query

STEPS = {
    ("groq", "fact_generation", "llama-3.3-70b-versatile"),
    ("openai", "fact_dedup", "text-embedding-3-small"),
    ("gcp.gemini", "content_expansion", "gemini-2.5-flash"),
    ("anthropic", "caption", "claude-sonnet-4-5"),
    ("openai", "hashtags", "o4-mini"),
}
KINDS = ("calls", "failed", "input", "output", "cache_read", "cache_write", "reasoning")


@pytest.fixture(scope="module")
def demo_run(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEXUS_DATA_DIR": str(tmp_path_factory.mktemp("demo-data"))}
    env.pop("DAILY_BUDGET_USD", None)
    env.pop("COLUMNS", None)  # piped, as in CI: the console picks its own width
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", "demo", "--duration", "8",
         "--database-url", database_url,
         "--otlp-port", str(free_port()), "--api-port", str(free_port())],
        capture_output=True, text=True, timeout=120, env=env, cwd=Path(__file__).parent.parent,
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
    otlp_port = free_port()
    with fresh_database(postgres_server) as url:
        process = subprocess.Popen(
            [sys.executable, "-m", "exporter.cli", "demo", "--database-url", url,
             "--otlp-port", str(otlp_port), "--api-port", str(free_port())],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "NEXUS_DATA_DIR": str(tmp_path)},
        )  # fmt: skip
        assert process.stdout is not None
        lines = []
        for line in process.stdout:  # the endpoints come first, then the workload starts
            lines.append(line)
            if "until Ctrl-C" in line:
                break
        assert any(f"127.0.0.1:{otlp_port}/v1/traces" in line for line in lines), lines
        assert any(f"127.0.0.1:{otlp_port}/metrics" in line for line in lines), lines
        time.sleep(3)
        process.send_signal(signal.SIGINT)
        output = "".join(lines) + process.communicate(timeout=60)[0]
        assert process.returncode == 0, output
        assert "summary: stored calls=" in output and "Traceback" not in output
        stored = query(url, "SELECT count(*) FROM api_calls")[0][0]
        assert stored > 0
        with pytest.raises(httpx.HTTPError):  # the exporter it started is gone
            httpx.get(f"http://127.0.0.1:{otlp_port}/health", timeout=2)
