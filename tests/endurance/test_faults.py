"""Known spans through the OpenTelemetry SDK while the exporter is SIGKILLed and restarted,
PostgreSQL is down for 30 seconds, and every batch is sent twice: each span is stored once and
the totals match, exactly, what genai-prices says independently.

Who guarantees what is spelled out in `spool.py`: the spool re-sends what was not acknowledged;
the exporter's part, proven here, is that 200 means committed, an outage is a 503 with
Retry-After, and a re-sent span is stored and counted once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
import psycopg
import pytest
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from tests.endurance.conftest import StoppablePostgres
from tests.endurance.spool import SpoolingExporter
from tests.endurance.workload import Workload
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import ExporterProcess, fresh_database, metric_value, query, start_exporter

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 30
# The CI size; `make bench` runs a longer soak through the same test (bench/faults.py).
RATE = int(os.environ.get("NEXUS_FAULT_RATE", "150"))  # LLM calls per second, steady
CYCLES = int(os.environ.get("NEXUS_FAULT_CYCLES", "1"))  # kill + outage cycles
STEADY_SECONDS = float(os.environ.get("NEXUS_FAULT_STEADY_SECONDS", "3"))  # between faults
EXPORTER_ENV = {"NEXUS_RETRY_AFTER_SECONDS": "1", "NEXUS_WRITE_TIMEOUT_SECONDS": "3"}


@pytest.fixture(scope="module")
def own_database(own_postgres: StoppablePostgres) -> Iterator[str]:
    with fresh_database(own_postgres.url) as url:
        yield url


def _probe_body() -> bytes:
    spec = {
        "start": datetime.now(UTC),
        "attributes": {
            "gen_ai.provider.name": "groq",
            "gen_ai.request.model": "llama-3.3-70b-versatile",
            "gen_ai.usage.input_tokens": 1000,
            "gen_ai.usage.output_tokens": 100,
        },
    }
    return protobuf_body(make_spans([spec], "probe"))


def _post(exporter: ExporterProcess, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=body,
        headers={"Content-Type": "application/x-protobuf"},
        timeout=15,
    )


def _kill_with_rows_in_flight(exporter: ExporterProcess, database_url: str) -> float:
    """SIGKILL while requests wait for a commit: the table is locked for a moment so that rows
    are surely queued, uncommitted and unanswered when the process dies. Returns their count."""
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE api_calls IN ACCESS EXCLUSIVE MODE")
        deadline, waiting = time.monotonic() + 10, 0.0
        while not waiting and time.monotonic() < deadline:
            time.sleep(0.2)
            scrape = httpx.get(f"{exporter.base_url}/metrics", timeout=5).text
            waiting = metric_value(scrape, "nexus_exporter_queue_depth_rows")
        exporter.process.kill()  # no shutdown: the waiting requests are cut
        exporter.process.wait(10)
        blocker.rollback()
    return waiting


def test_every_span_stored_once_through_kill_outage_and_duplicates(
    own_postgres: StoppablePostgres, own_database: str, tmp_path: Path
) -> None:
    exporter = start_exporter(own_database, tmp_path, EXPORTER_ENV)
    port = int(exporter.base_url.rsplit(":", 1)[1])
    spool = SpoolingExporter(f"{exporter.base_url}/v1/traces", copies=2)
    workload = Workload("endurance-app", seed=11)
    processor = BatchSpanProcessor(spool, schedule_delay_millis=200, max_export_batch_size=512)
    workload.provider.add_span_processor(processor)
    stop = threading.Event()
    generator = workload.run(RATE, stop)
    outages_failed_sends: list[int] = []
    cut_rows: list[float] = []
    try:
        for _ in range(CYCLES):
            time.sleep(STEADY_SECONDS)
            cut_rows.append(_kill_with_rows_in_flight(exporter, own_database))
            time.sleep(1)
            exporter = start_exporter(own_database, tmp_path, EXPORTER_ENV, port=port)
            time.sleep(STEADY_SECONDS)

            failed_before_outage = spool.failed_sends
            own_postgres.stop()
            outage_started = time.monotonic()
            time.sleep(2)
            probe = _post(exporter, _probe_body())
            assert probe.status_code == 503, probe.text
            assert probe.headers["retry-after"] == "1"
            time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - outage_started)))
            outages_failed_sends.append(spool.failed_sends - failed_before_outage)
            own_postgres.start()
        time.sleep(STEADY_SECONDS)
    finally:
        stop.set()
        generator.join(10)
    processor.force_flush(30_000)
    assert spool.wait_until_empty(timeout=90), f"spool still holds spans; {exporter.log()}"
    workload.provider.shutdown()
    exporter.stop()

    expected = workload.expected
    # The app layer dropped nothing: every span it made reached the spool.
    assert spool.spans_accepted == len(expected.keys)
    assert spool.spans_acknowledged == len(expected.keys)
    assert all(rows > 0 for rows in cut_rows), cut_rows  # each kill cut unacknowledged rows
    # Each outage made sends fail (the SDK's own retries may absorb the short kill).
    assert all(failed > 0 for failed in outages_failed_sends), outages_failed_sends
    assert spool.sends >= 2 * len(expected.keys) // 512

    rows = query(
        own_database,
        "SELECT trace_id, span_id, count(*) FROM api_calls "
        "WHERE service_name = 'endurance-app' GROUP BY 1, 2",
    )
    assert {(t, s) for t, s, _ in rows} == expected.keys
    assert max(n for _, _, n in rows) == 1
    [(input_tokens, output_tokens, cache_read, cost, unpriced)] = query(
        own_database,
        "SELECT sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cost_usd), "
        "count(*) FILTER (WHERE cost_usd IS NULL) FROM api_calls "
        "WHERE service_name = 'endurance-app'",
    )
    assert (input_tokens, output_tokens, cache_read) == (
        expected.input_tokens,
        expected.output_tokens,
        expected.cache_read_tokens,
    )
    assert unpriced == 0
    assert cost == expected.cost_usd
    # The daily summary moved once per new row, not once per delivery.
    [(calls, summary_cost)] = query(
        own_database,
        "SELECT sum(calls), sum(cost_usd) FROM daily_usage_summary "
        "WHERE service_name = 'endurance-app'",
    )
    assert calls == len(expected.keys)
    assert summary_cost == expected.cost_usd
    assert isinstance(summary_cost, Decimal)
