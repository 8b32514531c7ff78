"""The metric names, labels and bucket boundaries other parts (rules, dashboards) depend on."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from decimal import Decimal

from exporter.ingest.metrics import DURATION_BUCKETS, TOKEN_BUCKETS, ExporterMetrics, error_code
from exporter.ingest.model import LLMCall
from tests.support import metric_samples, metric_value


def _call(cost: Decimal | None) -> LLMCall:
    return LLMCall(
        trace_id="a" * 32, span_id="b" * 16, parent_span_id=None, timestamp=datetime.now(UTC),
        service_name="svc", provider="groq", model="m", response_model=None,
        gen_ai_operation="chat", operation="caption", correlation_id=None, input_tokens=10,
        output_tokens=5, cache_read_tokens=4, cache_write_tokens=0, reasoning_tokens=0,
        total_tokens=15, duration_ms=250.0, success=True, error_type=None, error_message=None,
        usage_source="response", server_address=None, span_name="chat m",
        time_to_first_chunk_ms=None, reported_cost_usd=None, cost_usd=cost,
    )  # fmt: skip


def test_exposition_has_semconv_buckets_the_half_dollar_boundary_and_the_label_set() -> None:
    metrics = ExporterMetrics()
    metrics.observe_stored([_call(Decimal("0.6")), _call(None)])
    text = metrics.exposition().decode()
    labels = {
        "service_name": "svc",
        "gen_ai_provider_name": "groq",
        "gen_ai_request_model": "m",
        "gen_ai_operation_name": "chat",
        "nexus_operation": "caption",
    }
    cost_bucket = "nexus_llm_call_cost_usd_bucket"
    assert metric_value(text, cost_bucket, **labels, le="0.5") == 0
    assert metric_value(text, cost_bucket, **labels, le="1.0") == 1
    assert metric_value(text, "nexus_llm_unpriced_calls_total", **labels) == 1
    assert metric_value(text, "nexus_llm_calls_total", **labels, outcome="success") == 2
    tokens = "nexus_llm_tokens_total"
    assert metric_value(text, tokens, **labels, gen_ai_token_type="cache_read") == 8
    bounds = _bounds(text, "gen_ai_client_token_usage_bucket")
    assert bounds == [float(b) for b in TOKEN_BUCKETS] + [float("inf")]
    bounds = _bounds(text, "gen_ai_client_operation_duration_seconds_bucket")
    assert bounds == [float(b) for b in DURATION_BUCKETS] + [float("inf")]


def _bounds(text: str, name: str) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    found = {
        float(sample.labels["le"])
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }
    return sorted(found)


def test_label_sets_past_the_limit_go_to_one_overflow_series_and_totals_stay_exact() -> None:
    metrics = ExporterMetrics(max_series=2)
    prices = [Decimal(i + 1) / 10 for i in range(10)]  # $0.10 to $1.00
    calls = [dataclasses.replace(_call(p), model=f"m{i % 5}") for i, p in enumerate(prices)]
    metrics.observe_stored(calls[:2])  # m0, m1: the two label sets with series of their own
    assert ",otel_metric_overflow=" not in metrics.exposition().decode()  # not until needed
    metrics.observe_stored(calls[2:])
    text = metrics.exposition().decode()
    successes = {
        labels.get("otel_metric_overflow", labels["gen_ai_request_model"]): value
        for labels, value in metric_samples(text, "nexus_llm_calls_total")
        if labels["outcome"] == "success"
    }
    assert successes == {"m0": 2, "m1": 2, "true": 6}
    costs = {
        labels["gen_ai_request_model"]: value
        for labels, value in metric_samples(text, "nexus_llm_cost_usd_total")
    }
    # Exact: each series shows the float nearest its exact Decimal sum.
    assert costs == {"m0": float(Decimal("0.7")), "m1": float(Decimal("0.9")),
                     "": float(Decimal("0.3") + Decimal("0.4") + Decimal("0.5")
                               + Decimal("0.8") + Decimal("0.9") + Decimal("1.0"))}  # fmt: skip
    overflow_labels = {
        k
        for labels, _ in metric_samples(text, "nexus_llm_calls_total")
        if "otel_metric_overflow" in labels
        for k, v in labels.items()
        if v
    }
    assert overflow_labels == {"otel_metric_overflow", "outcome"}  # every other label empty
    for family in ("nexus_llm_calls", "gen_ai_client_token_usage", "nexus_llm_cost_usd"):
        assert metric_value(text, "nexus_exporter_metric_overflow_total", metric=family) == 6


def test_error_types_are_codes_and_their_children_are_bounded_too() -> None:
    assert error_code("RateLimitError") == "RateLimitError"
    assert error_code("openai.APITimeoutError") == "openai.APITimeoutError"
    assert error_code("429") == "429"
    assert error_code("Bearer sk-abc") == "_OTHER"
    assert error_code("a" * 65) == "_OTHER"
    assert error_code('quote"d') == "_OTHER"
    metrics = ExporterMetrics(max_series=2)
    failed = [dataclasses.replace(_call(None), success=False, error_type=e)
              for e in ("timeout", "Bearer secret-token", "overloaded")]  # fmt: skip
    metrics.observe_stored(failed)
    text = metrics.exposition().decode()
    assert "secret-token" not in text
    counts = {
        (labels["error_type"], labels.get("otel_metric_overflow", "")): value
        for labels, value in metric_samples(text, "gen_ai_client_operation_duration_seconds_count")
    }
    # Two (label set, error type) children, then the overflow series (which has no error type).
    assert counts == {("timeout", ""): 1, ("_OTHER", ""): 1, ("", "true"): 1}
    duration = "gen_ai_client_operation_duration_seconds"
    assert metric_value(text, "nexus_exporter_metric_overflow_total", metric=duration) == 1


def test_label_values_are_escaped() -> None:
    metrics = ExporterMetrics()
    metrics.observe_stored([dataclasses.replace(_call(None), model='a"b\\c\nd')])
    exposition = metrics.exposition().decode()
    (labels, _), *_ = metric_samples(exposition, "nexus_llm_unpriced_calls_total")
    assert labels["gen_ai_request_model"] == 'a"b\\c\nd'
