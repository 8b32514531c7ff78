"""Several sender processes and two exporters writing the same spans to one database at once;
and an exporter restart, after which counters start again from zero instead of doubling."""

from __future__ import annotations

import multiprocessing
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.ingest.otlp_helpers import json_body, make_spans, protobuf_body
from tests.support import (
    CHEAP_CALL_USD,
    ExporterProcess,
    cheap_calls_cost,
    float_sum_slack,
    list_price,
    metric_value,
    query,
    start_exporter,
)

pytestmark = pytest.mark.e2e

SENDERS = 4
BATCH = 100
OWN_BATCHES = 5
SHARED_BATCHES = 5
# Every 10th call is a small one, under CHEAP_CALL_USD at the model's price: a bug dropping cheap
# calls must show in the totals.
CHEAP_EVERY = 10


def _usage(rng: random.Random, cheap: bool) -> dict[str, int]:
    if cheap:
        return {"gen_ai.usage.input_tokens": rng.randint(1, 150),
                "gen_ai.usage.output_tokens": rng.randint(1, 30)}  # fmt: skip
    return {"gen_ai.usage.input_tokens": rng.randint(100, 5000),
            "gen_ai.usage.output_tokens": rng.randint(1, 900)}  # fmt: skip


def _specs(count: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    return [
        {
            "start": start + timedelta(milliseconds=i),
            "attributes": {
                "gen_ai.provider.name": "anthropic",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "claude-sonnet-4-5",
                **_usage(rng, cheap=i % CHEAP_EVERY == 0),
            },
        }
        for i in range(count)
    ]


def _costs(specs: list[dict[str, Any]]) -> list[Decimal]:
    """Each call's cost, by genai-prices, from the exact usage and start time the span carries."""
    return [list_price(s["attributes"], s["start"]) for s in specs]


def _batches(batches: int, seed: int) -> list[list[dict[str, Any]]]:
    return [_specs(BATCH, seed * 1000 + b) for b in range(batches)]


def _bodies(service: str, batches: list[list[dict[str, Any]]]) -> list[tuple[str, bytes]]:
    """Batches as (content type, body), alternating protobuf and JSON."""
    bodies = []
    for b, specs in enumerate(batches):
        spans = make_spans(specs, service)
        if b % 2:
            bodies.append(("application/json", json_body(spans)))
        else:
            bodies.append(("application/x-protobuf", protobuf_body(spans)))
    return bodies


def send_all(base_urls: list[str], bodies: list[tuple[str, bytes]], seed: int) -> int:
    """One sender process: every body to a random exporter, re-sent until a 200. Returns 503s."""
    rng = random.Random(seed)
    rng.shuffle(bodies)
    unavailable = 0
    with httpx.Client(timeout=30) as client:
        for content_type, body in bodies:
            while True:
                response = client.post(
                    f"{rng.choice(base_urls)}/v1/traces",
                    content=body,
                    headers={"Content-Type": content_type},
                )
                if response.status_code == 200:
                    break
                assert response.status_code == 503, response.text
                unavailable += 1
                time.sleep(0.2)
    return unavailable


def test_concurrent_senders_and_exporters_store_and_count_once(
    database_url: str, tmp_path: Path
) -> None:
    exporters = [start_exporter(database_url, tmp_path) for _ in range(2)]
    shared = _batches(SHARED_BATCHES, seed=99)
    own = [_batches(OWN_BATCHES, seed=i) for i in range(SENDERS)]
    try:
        shared_bodies = _bodies("concurrent-shared", shared)
        jobs = [
            ([e.base_url for e in exporters], _bodies(f"writer-{i}", own[i]) + shared_bodies, i)
            for i in range(SENDERS)
        ]
        with multiprocessing.get_context("spawn").Pool(SENDERS) as pool:
            pool.starmap(send_all, jobs)
        scrapes = [httpx.get(f"{e.base_url}/metrics").text for e in exporters]
    finally:
        for e in exporters:
            e.stop()

    unique = (SENDERS * OWN_BATCHES + SHARED_BATCHES) * BATCH
    deliveries = SENDERS * (OWN_BATCHES + SHARED_BATCHES) * BATCH
    costs = _costs([spec for batches in [shared, *own] for batch in batches for spec in batch])
    assert len(costs) == unique
    assert sum(c < CHEAP_CALL_USD for c in costs) >= unique // CHEAP_EVERY
    [(rows, distinct, tokens, cost)] = query(
        database_url,
        "SELECT count(*), count(DISTINCT (trace_id, span_id)), sum(total_tokens), sum(cost_usd) "
        "FROM api_calls WHERE service_name LIKE 'writer-%' OR service_name = 'concurrent-shared'",
    )
    assert rows == distinct == unique
    assert cost == sum(costs)
    counted = sum(metric_value(s, "nexus_llm_calls_total") for s in scrapes)
    duplicates = sum(metric_value(s, "nexus_exporter_spans_duplicate_total") for s in scrapes)
    assert counted == unique
    assert duplicates == deliveries - unique
    counted_cost = sum(metric_value(s, "nexus_llm_cost_usd_total") for s in scrapes)
    _assert_float_counter(counted_cost, costs)
    [(summary_calls, summary_tokens, summary_cost)] = query(
        database_url,
        "SELECT sum(calls), sum(total_tokens), sum(cost_usd) FROM daily_usage_summary "
        "WHERE service_name LIKE 'writer-%' OR service_name = 'concurrent-shared'",
    )
    assert (summary_calls, summary_tokens, summary_cost) == (unique, tokens, sum(costs))


def _assert_float_counter(counted: float, costs: list[Decimal]) -> None:
    """The cost counter is a Prometheus float: each write batch adds its exact Decimal sum as a
    float, and the test adds the series of every exporter, so it cannot equal the Decimal total.
    The slack allows one rounding per call for the batch sums and one per call for the additions
    (batches hold one call or more), which is far below what the cheap calls add up to."""
    exact = sum(costs, Decimal(0))
    slack = float_sum_slack(exact, roundings=2 * len(costs))
    assert cheap_calls_cost(costs) > slack  # so dropping the calls under CHEAP_CALL_USD shows
    assert abs(Decimal(counted) - exact) <= slack, (counted, exact)


def _counters(exporter: ExporterProcess) -> tuple[float, float, float]:
    text = httpx.get(f"{exporter.base_url}/metrics").text
    return (
        metric_value(text, "nexus_llm_calls_total", service_name="restart-app"),
        metric_value(text, "nexus_llm_cost_usd_total", service_name="restart-app"),
        metric_value(text, "nexus_exporter_spans_duplicate_total"),
    )


def test_restart_resets_counters_and_never_doubles_them(database_url: str, tmp_path: Path) -> None:
    first_specs, second_specs = _specs(120, seed=5), _specs(30, seed=6)
    first = protobuf_body(make_spans(first_specs, "restart-app"))
    second = protobuf_body(make_spans(second_specs, "restart-app"))
    exporter = start_exporter(database_url, tmp_path)
    port = int(exporter.base_url.rsplit(":", 1)[1])
    try:
        exporter.post_traces(first)
        calls_before, cost_before, _ = _counters(exporter)
        assert calls_before == 120
        exporter.process.kill()
        exporter.process.wait(10)
        exporter = start_exporter(database_url, tmp_path, port=port)
        assert _counters(exporter) == (0, 0, 0)  # a reset, which rate() and increase() handle
        exporter.post_traces(first)  # a sender that never saw the answer sends the batch again
        assert _counters(exporter) == (0, 0, 120)
        exporter.post_traces(second)
        calls_after, cost_after, _ = _counters(exporter)
    finally:
        exporter.stop()
    assert calls_after == 30
    _assert_float_counter(cost_before, _costs(first_specs))
    _assert_float_counter(cost_after, _costs(second_specs))
    [(rows, cost)] = query(
        database_url,
        "SELECT count(*), sum(cost_usd) FROM api_calls WHERE service_name = 'restart-app'",
    )
    assert calls_before + calls_after == rows == 150
    assert cost == sum(_costs(first_specs + second_specs))
