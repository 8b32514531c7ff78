"""The command line as users run it: its own process, real databases."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import start_exporter


def _cli(
    *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.cli", *args],
        capture_output=True, text=True, timeout=timeout, env=env,
    )  # fmt: skip


def test_bad_setting_is_a_cli_error_naming_the_value() -> None:
    result = _cli("serve", "--otlp-port", "99999")
    assert result.returncode == 2
    assert "--otlp-port" in result.stderr and "99999" in result.stderr


@pytest.mark.parametrize("value", ["0", "17", "two", "-1"])
def test_write_connections_out_of_range_is_a_cli_error_naming_the_value(value: str) -> None:
    """From 1 to 16, as a flag or in the environment; anything else stops serve at once."""
    flag = _cli("serve", "--write-connections", value)
    env = _cli("serve", env={**os.environ, "NEXUS_WRITE_CONNECTIONS": value})
    for result, source in ((flag, "--write-connections"), (env, "NEXUS_WRITE_CONNECTIONS")):
        assert result.returncode == 2, result.stderr
        assert f"{source} = '{value}'" in result.stderr
        assert "Traceback" not in result.stderr


def test_serve_refuses_a_bad_price_file_with_one_clear_error(tmp_path: Path) -> None:
    prices = tmp_path / "prices.yaml"
    prices.write_text("models:\n  - pattern: [broken\n")
    result = _cli("serve", "--prices-file", str(prices), timeout=60)
    output = "".join((result.stdout + result.stderr).split())  # as printed, folded to width
    assert result.returncode == 2
    assert f"error:{prices}:cannotreadpriceoverrides" in output
    assert "Traceback" not in output


def test_the_embedded_database_starts_without_warnings_where_xdg_runtime_dir_is_unset(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}  # as in containers
    env["NEXUS_DATA_DIR"] = str(tmp_path)
    result = _cli("migrate", env=env)
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stdout + result.stderr


def test_prices_shows_source_and_suggests_close_matches() -> None:
    known = _cli("prices", "claude-sonnet-4-5", "--provider", "anthropic")
    assert known.returncode == 0, known.stderr
    assert "genai-prices" in known.stdout and "3" in known.stdout
    unknown = _cli("prices", "claude-sonet-4-5")
    assert unknown.returncode == 2
    assert "claude-sonnet-4-5" in unknown.stderr


def test_unavailable_database_gets_503_with_retry_after_and_loses_nothing(tmp_path: Path) -> None:
    from exporter.core.db import EmbeddedPostgres

    database = EmbeddedPostgres(tmp_path / "pg")
    url = database.url
    exporter = start_exporter(url, tmp_path)
    try:
        spans = make_spans([{"start": _now(), "attributes": {
            "gen_ai.provider.name": "groq", "gen_ai.request.model": "llama-3.1-8b-instant",
            "gen_ai.usage.input_tokens": 7, "gen_ai.usage.output_tokens": 3}}])  # fmt: skip
        body = protobuf_body(spans)
        headers = {"Content-Type": "application/x-protobuf"}
        database.stop()
        down = httpx.post(
            f"{exporter.base_url}/v1/traces", content=body, headers=headers, timeout=30
        )
        assert down.status_code == 503
        assert down.headers["retry-after"] == "5"
        assert httpx.get(f"{exporter.base_url}/health").status_code == 503
        database = EmbeddedPostgres(tmp_path / "pg")  # the same data directory, started again
        deadline = time.monotonic() + 20
        while True:
            up = httpx.post(
                f"{exporter.base_url}/v1/traces", content=body, headers=headers, timeout=30
            )
            if up.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert up.status_code == 200
        with psycopg.connect(database.url) as conn:
            row = conn.execute("SELECT input_tokens, output_tokens FROM api_calls").fetchall()
        assert row == [(7, 3)]
    finally:
        exporter.stop()
        database.stop()


def _banner_ports(log_path: Path, process: subprocess.Popen[bytes]) -> tuple[int, int]:
    """The ingest and API ports serve's banner names, read from its log file as it is written
    (a file, not a pipe: nothing waits on a reader); the banner's last line is the API's."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log_path.read_text()
        ingest = re.search(r"OTLP/HTTP ingest  http://127\.0\.0\.1:(\d+)/v1/traces\n", text)
        api = re.search(r"API               http://127\.0\.0\.1:(\d+)/docs\n", text)
        if ingest and api:
            return int(ingest[1]), int(api[1])
        assert process.poll() is None, text
        time.sleep(0.1)
    raise AssertionError(f"no banner within 60 s:\n{log_path.read_text()}")


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    """The banner comes once the ports are bound; the servers answer a moment later."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within 60 s")


def test_serve_on_port_zero_names_and_serves_the_ports_it_was_given(
    database_url: str, tmp_path: Path
) -> None:
    log_path = tmp_path / "serve.log"
    command = [
        sys.executable,
        "-m",
        "exporter.cli",
        "serve",
        "--database-url",
        database_url,
        "--otlp-port",
        "0",
        "--api-port",
        "0",
    ]
    env = {**os.environ, "COLUMNS": "1000"}
    env.pop("NEXUS_API_TOKEN", None)  # the warning about an open API names the port too
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ingest_port, api_port = _banner_ports(log_path, process)
        assert 0 not in (ingest_port, api_port)
        open_api = f"the API on 127.0.0.1:{api_port} is open to every local process"
        assert open_api in log_path.read_text()
        _wait_until_healthy(f"http://127.0.0.1:{ingest_port}/health", process)
        spans = make_spans(
            [
                {
                    "start": _now(),
                    "attributes": {
                        "gen_ai.provider.name": "groq",
                        "gen_ai.request.model": "llama-3.1-8b-instant",
                        "gen_ai.usage.input_tokens": 11,
                        "gen_ai.usage.output_tokens": 4,
                    },
                }
            ]
        )
        response = httpx.post(
            f"http://127.0.0.1:{ingest_port}/v1/traces",
            content=protobuf_body(spans),
            headers={"Content-Type": "application/x-protobuf"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        with psycopg.connect(database_url) as conn:
            rows = conn.execute(
                "SELECT span_id, model, input_tokens, output_tokens FROM api_calls"
            ).fetchall()
        span_id = f"{spans[0].context.span_id:016x}"
        assert rows == [(span_id, "llama-3.1-8b-instant", 11, 4)]
        assert httpx.get(f"http://127.0.0.1:{api_port}/health", timeout=30).status_code == 200
    finally:
        process.terminate()
        process.wait(30)


def _now():  # type: ignore[no-untyped-def]
    from datetime import UTC, datetime

    return datetime.now(UTC)
