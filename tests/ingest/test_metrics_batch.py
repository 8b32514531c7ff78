"""A batch of stored calls moves every metric exactly as observing them one by one would."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter.ingest.metrics import (
    COST_BUCKETS,
    DURATION_BUCKETS,
    LLM_LABELS,
    TOKEN_BUCKETS,
    TOKEN_TYPES,
    ExporterMetrics,
)
from exporter.ingest.model import LLMCall

_BASE = LLMCall(
    trace_id="a" * 32, span_id="b" * 16, parent_span_id=None, timestamp=datetime.now(UTC),
    service_name="svc", provider="groq", model="m", response_model=None,
    gen_ai_operation="chat", operation="caption", correlation_id=None, input_tokens=0,
    output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
    total_tokens=0, duration_ms=0.0, success=True, error_type=None, error_message=None,
    usage_source="response", server_address=None, span_name="chat m",
    time_to_first_chunk_ms=None, reported_cost_usd=None,
)  # fmt: skip


_DURATIONS_MS = (10.0, 20.0, 81920.0, 90000.0, 0.5)


def _calls() -> list[LLMCall]:
    """Values on, just under and just over bucket bounds, two label sets, failures, unpriced."""
    calls = []
    for i, tokens in enumerate((0, 1, 2, 4, 5, 1024, 1025, 67108864, 67108865, 300)):
        calls.append(dataclasses.replace(
            _BASE, span_id=f"{i + 1:016x}", input_tokens=tokens, output_tokens=tokens // 3,
            cache_read_tokens=tokens // 4, reasoning_tokens=tokens // 5,
            total_tokens=tokens + tokens // 3, duration_ms=_DURATIONS_MS[i % 5],
            success=i % 4 != 1, error_type="timeout" if i % 4 == 1 else None,
            cost_usd=(Decimal("0.5"), Decimal("0.5000001"), None, Decimal("0"))[i % 4],
            model="m" if i < 6 else "n",
        ))  # fmt: skip
    return calls


def _one_by_one(calls: list[LLMCall]) -> CollectorRegistry:
    """The same metrics, moved with the library's own observe and inc, one call at a time."""
    r = CollectorRegistry()
    usage = Histogram("gen_ai_client_token_usage", "", [*LLM_LABELS, "gen_ai_token_type"],
                      buckets=TOKEN_BUCKETS, registry=r)  # fmt: skip
    duration = Histogram(
        "gen_ai_client_operation_duration_seconds", "", [*LLM_LABELS, "error_type"],
        buckets=DURATION_BUCKETS, registry=r,
    )  # fmt: skip
    tokens = Counter("nexus_llm_tokens", "", [*LLM_LABELS, "gen_ai_token_type"], registry=r)
    outcome = Counter("nexus_llm_calls", "", [*LLM_LABELS, "outcome"], registry=r)
    cost = Counter("nexus_llm_cost_usd", "", LLM_LABELS, registry=r)
    call_cost = Histogram(
        "nexus_llm_call_cost_usd", "", LLM_LABELS, buckets=COST_BUCKETS, registry=r
    )
    unpriced = Counter("nexus_llm_unpriced_calls", "", LLM_LABELS, registry=r)
    for c in calls:
        labels = (c.service_name, c.provider, c.model, c.gen_ai_operation, c.operation)
        usage.labels(*labels, "input").observe(c.input_tokens)
        usage.labels(*labels, "output").observe(c.output_tokens)
        counts = (c.input_tokens, c.output_tokens, c.cache_read_tokens, c.cache_write_tokens,
                  c.reasoning_tokens)  # fmt: skip
        for token_type, count in zip(TOKEN_TYPES, counts, strict=True):
            tokens.labels(*labels, token_type).inc(count)
        duration.labels(*labels, c.error_type or "").observe(c.duration_ms / 1000)
        outcome.labels(*labels, "success" if c.success else "error").inc()
        if c.cost_usd is None:
            unpriced.labels(*labels).inc()
        else:
            cost.labels(*labels).inc(float(c.cost_usd))
            call_cost.labels(*labels).observe(float(c.cost_usd))
    return r


def _samples(text: str, names: set[str]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        if family.name in names
        for s in family.samples
        if not s.name.endswith("_created") and s.value  # zero series are declared up front
    }


def test_a_batch_moves_buckets_sums_and_counters_as_single_observations_would() -> None:
    calls = _calls()
    metrics = ExporterMetrics()
    metrics.observe_stored(calls[:4])
    metrics.observe_stored(calls[4:])
    names = {"gen_ai_client_token_usage", "gen_ai_client_operation_duration_seconds",
             "nexus_llm_tokens", "nexus_llm_calls", "nexus_llm_cost_usd",
             "nexus_llm_call_cost_usd", "nexus_llm_unpriced_calls"}  # fmt: skip
    batched = _samples(metrics.exposition().decode(), names)
    expected = _samples(generate_latest(_one_by_one(calls)).decode(), names)
    assert batched.keys() == expected.keys()
    for (name, labels), value in expected.items():
        # Counts are exact; float sums may differ in the last bit by the order of addition.
        exact = not name.endswith("_sum") and name != "nexus_llm_cost_usd_total"
        wanted = value if exact else pytest.approx(value, rel=1e-12)
        assert batched[name, labels] == wanted, (name, labels)
