"""The metric names, labels and bucket boundaries other parts (rules, dashboards) depend on."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from exporter.metrics import DURATION_BUCKETS, TOKEN_BUCKETS, ExporterMetrics
from exporter.model import LLMCall
from tests.support import metric_value


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
