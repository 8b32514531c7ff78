"""End to end: spans from the OpenTelemetry SDK's own OTLP exporter into a running
`nexus-otel serve`, checked against the rows in the real PostgreSQL and against /metrics."""

from __future__ import annotations

import gzip
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from genai_prices import Usage, calc_price

from tests.ingest.otlp_helpers import (
    export_with_sdk,
    json_body,
    make_spans,
    protobuf_body,
)
from tests.support import ExporterProcess, float_sum_slack, metric_value, query

START = datetime.now(UTC).replace(microsecond=123456) - timedelta(minutes=5)
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
GZIP_BOMB = gzip.compress(b"\0" * (40 * 1024 * 1024))  # 40 MiB of zeros in ~40 KiB

# Each spelling the exporter accepts, with the exact row it must become:
# (provider, model, input, output, cache_read, cache_write, reasoning, total)
SPELLINGS: list[tuple[str, dict[str, Any], tuple[Any, ...]]] = [
    (
        "semconv current",
        {
            "gen_ai.provider.name": "groq",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "llama-3.3-70b-versatile",
            "gen_ai.usage.input_tokens": 1200,
            "gen_ai.usage.output_tokens": 300,
            "gen_ai.usage.cache_read.input_tokens": 200,
        },
        ("groq", "llama-3.3-70b-versatile", 1200, 300, 200, 0, 0, 1500),
    ),
    (
        "deprecated gen_ai.system and cache_creation",
        {
            "gen_ai.system": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 1500,
            "gen_ai.usage.output_tokens": 200,
            "gen_ai.usage.cache_read.input_tokens": 400,
            "gen_ai.usage.cache_creation.input_tokens": 100,
        },
        ("anthropic", "claude-sonnet-4-5", 1500, 200, 400, 100, 0, 1700),
    ),
    (
        "newer cache_write spelling",
        {
            "gen_ai.provider.name": "anthropic",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 900,
            "gen_ai.usage.output_tokens": 100,
            "gen_ai.usage.cache_write.input_tokens": 50,
        },
        ("anthropic", "claude-sonnet-4-5", 900, 100, 0, 50, 0, 1000),
    ),
    (
        "gemini alias with reasoning",
        {
            "gen_ai.system": "gemini",
            "gen_ai.operation.name": "generate_content",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.output_tokens": 320,
            "gen_ai.usage.reasoning.output_tokens": 120,
        },
        ("gcp.gemini", "gemini-2.5-flash", 800, 320, 0, 0, 120, 1120),
    ),
    (
        "OpenLLMetry prompt/completion spelling",
        {
            "gen_ai.system": "OpenAI",
            "llm.request.type": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.prompt_tokens": 100,
            "gen_ai.usage.completion_tokens": 50,
        },
        ("openai", "gpt-4o", 100, 50, 0, 0, 0, 150),
    ),
    (
        # OpenInference's kinds are upper case by spec; no provider key: named by its host
        "OpenInference lower-case kind",
        {
            "openinference.span.kind": "llm",
            "server.address": "api.groq.com",
            "llm.model_name": "llama-3.3-70b-versatile",
            "llm.token_count.prompt": 900,
            "llm.token_count.completion": 100,
        },
        ("groq", "llama-3.3-70b-versatile", 900, 100, 0, 0, 0, 1000),
    ),
    (
        # the provider written out in words, as some instrumentations name it
        "Vertex AI with a space",
        {
            "gen_ai.system": "Vertex AI",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gemini-2.5-flash",
            "gen_ai.usage.input_tokens": 800,
            "gen_ai.usage.output_tokens": 200,
        },
        ("gcp.vertex_ai", "gemini-2.5-flash", 800, 200, 0, 0, 0, 1000),
    ),
    (
        "older OpenLLMetry llm.usage spelling with reasoning",
        {
            "gen_ai.system": "openai",
            "llm.request.type": "chat",
            "gen_ai.request.model": "o4-mini",
            "gen_ai.usage.prompt_tokens": 100,
            "gen_ai.usage.completion_tokens": 500,
            "llm.usage.reasoning_tokens": 384,
            "llm.usage.total_tokens": 600,
        },
        ("openai", "o4-mini", 100, 500, 0, 0, 384, 600),
    ),
    (
        # Pydantic AI 1.3 to 1.77 (and Logfire): input includes the cache, told in details only
        "Pydantic AI usage details",
        {
            "gen_ai.system": "anthropic",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "claude-sonnet-4-5",
            "gen_ai.usage.input_tokens": 100_000,
            "gen_ai.usage.output_tokens": 1000,
            "gen_ai.usage.details.cache_read_tokens": 90_000,
            "gen_ai.usage.details.cache_write_tokens": 5000,
        },
        ("anthropic", "claude-sonnet-4-5", 100_000, 1000, 90_000, 5000, 0, 101_000),
    ),
    (
        # Pydantic AI before 1.3: the provider's own names (Anthropic's cache counts)
        "Pydantic AI details in the provider's names",
        {
            "gen_ai.system": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": 2000,
            "gen_ai.usage.output_tokens": 500,
            "gen_ai.usage.details.cache_read_input_tokens": 1500,
            "gen_ai.usage.details.cache_creation_input_tokens": 100,
            "gen_ai.usage.details.reasoning_tokens": 200,
        },
        ("openai", "gpt-4o", 2000, 500, 1500, 100, 200, 2500),
    ),
]


def _spec(attributes: dict[str, Any], offset_s: int, **extra: Any) -> dict[str, Any]:
    return {"attributes": attributes, "start": START + timedelta(seconds=offset_s), **extra}


def _row(database_url: str, span_id: str) -> dict[str, Any]:
    rows = query(database_url, "SELECT * FROM api_calls WHERE span_id = %s", (span_id,))
    columns = [c[0] for c in query(database_url, _COLUMNS_SQL)]
    assert len(rows) == 1, f"expected one row for span {span_id}, found {len(rows)}"
    return dict(zip(columns, rows[0], strict=True))


_COLUMNS_SQL = (
    "SELECT column_name FROM information_schema.columns "
    "WHERE table_name = 'api_calls' ORDER BY ordinal_position"
)


def _expected_cost(provider_id: str, model: str, row: dict[str, Any]) -> Decimal:
    usage = Usage(
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        cache_read_tokens=row["cache_read_tokens"],
        cache_write_tokens=row["cache_write_tokens"],
    )
    return calc_price(
        usage, model, provider_id=provider_id, genai_request_timestamp=row["timestamp"]
    ).total_price


GENAI_PRICES_PROVIDER = {
    "groq": "groq",
    "anthropic": "anthropic",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "openai": "openai",
}


@pytest.mark.parametrize(
    ("label", "attributes", "expected"), SPELLINGS, ids=[s[0] for s in SPELLINGS]
)
def test_each_spelling_becomes_one_exact_priced_row(
    exporter: ExporterProcess, database_url: str, label: str, attributes: dict[str, Any],
    expected: tuple[Any, ...],
) -> None:  # fmt: skip
    spans = make_spans([_spec({**attributes, "nexus.operation": "fact_generation"}, 0)])
    assert export_with_sdk(exporter.base_url, spans)
    row = _row(database_url, format(spans[0].context.span_id, "016x"))
    got = tuple(
        row[c]
        for c in ("provider", "model", "input_tokens", "output_tokens", "cache_read_tokens",
                  "cache_write_tokens", "reasoning_tokens", "total_tokens")
    )  # fmt: skip
    assert got == expected
    assert row["operation"] == "fact_generation"
    assert row["service_name"] == "test-service"
    assert row["timestamp"] == START
    assert row["success"] is True
    provider, model = expected[0], expected[1]
    assert row["cost_usd"] == _expected_cost(GENAI_PRICES_PROVIDER[provider], model, row)
    assert row["cost_usd"] > 0
    assert row["cost_source"] == "genai-prices"


@pytest.mark.parametrize(
    ("label", "counts"),
    [("prompt and total", {"llm.token_count.prompt": 1234, "llm.token_count.total": 1234}),
     ("total only", {"llm.token_count.total": 1234})],
)  # fmt: skip
def test_openinference_embedding_span_is_a_priced_embeddings_row(
    exporter: ExporterProcess, database_url: str, label: str, counts: dict[str, int]
) -> None:
    """OpenInference's embeddings span names its model in `embedding.model_name`; an embeddings
    call has no output, so its total alone is its input. Its texts are content: not stored."""
    attributes = {
        "openinference.span.kind": "EMBEDDING", "llm.provider": "openai",
        "embedding.model_name": "text-embedding-3-small", **counts,
        "embedding.embeddings.0.embedding.text": "a private sentence",
    }  # fmt: skip
    spans = make_spans([_spec(attributes, 4, name="CreateEmbeddingResponse")])
    assert export_with_sdk(exporter.base_url, spans)
    row = _row(database_url, format(spans[0].context.span_id, "016x"))
    got = tuple(
        row[c]
        for c in ("provider", "model", "gen_ai_operation", "input_tokens", "output_tokens",
                  "total_tokens", "cost_usd", "cost_source")
    )  # fmt: skip
    # text-embedding-3-small: $0.02 per million input tokens
    assert got == (
        "openai", "text-embedding-3-small", "embeddings", 1234, 0, 1234, Decimal("0.00002468"),
        "genai-prices",
    )  # fmt: skip
    assert row["cost_usd"] == _expected_cost("openai", "text-embedding-3-small", row)
    assert "embedding.embeddings.0.embedding.text" not in (row["attributes"] or {})


def test_unknown_model_is_unpriced_not_free(exporter: ExporterProcess, database_url: str) -> None:
    before = httpx.get(f"{exporter.base_url}/metrics").text
    attributes = {
        "gen_ai.provider.name": "groq",
        "gen_ai.request.model": "our-private-finetune-v3",
        "gen_ai.usage.input_tokens": 10,
        "gen_ai.usage.output_tokens": 5,
    }
    spans = make_spans([_spec(attributes, 1)])
    assert export_with_sdk(exporter.base_url, spans)
    row = _row(database_url, format(spans[0].context.span_id, "016x"))
    assert row["cost_usd"] is None
    assert (row["input_tokens"], row["output_tokens"], row["total_tokens"]) == (10, 5, 15)
    after = httpx.get(f"{exporter.base_url}/metrics").text
    labels = {"gen_ai_request_model": "our-private-finetune-v3"}
    assert metric_value(before, "nexus_llm_unpriced_calls_total", **labels) == 0
    assert metric_value(after, "nexus_llm_unpriced_calls_total", **labels) == 1


def test_a_total_alone_is_unpriced_not_free(exporter: ExporterProcess, database_url: str) -> None:
    """A span telling only its total (older OpenLLMetry's `llm.usage.total_tokens`) says nothing
    of how many tokens were input or output, which prices differ by: no price table prices it (it
    was priced at $0). Its row holds the total alone, input and output 0, as the span said; a
    cost the span reports still prices it."""
    before = httpx.get(f"{exporter.base_url}/metrics").text
    total_only = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
                  "llm.request.type": "chat", "llm.usage.total_tokens": 500}  # fmt: skip
    spans = make_spans([_spec(total_only, 5), _spec({**total_only, "llm.cost.total": 0.0002}, 5)])
    assert export_with_sdk(exporter.base_url, spans)
    columns = ("input_tokens", "output_tokens", "total_tokens", "cost_usd", "cost_source")
    unpriced, reported = (_row(database_url, format(s.context.span_id, "016x")) for s in spans)
    assert tuple(unpriced[c] for c in columns) == (0, 0, 500, None, None)
    assert tuple(reported[c] for c in columns) == (0, 0, 500, Decimal("0.0002"), "span")
    after = httpx.get(f"{exporter.base_url}/metrics").text
    labels = {"gen_ai_request_model": "gpt-4o-mini"}
    unpriced_calls = "nexus_llm_unpriced_calls_total"
    assert (
        metric_value(after, unpriced_calls, **labels)
        - metric_value(before, unpriced_calls, **labels)
        == 1
    )
    # Repricing leaves both as they are: priced by its tokens, the first would come out at $0.
    today = datetime.now(UTC).date()
    reprice = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "reprice", "--since", str(today - timedelta(1)),
         "--model", "gpt-4o-mini", "--database-url", database_url],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert reprice.returncode == 0, reprice.stderr
    assert "nothing to change" in reprice.stderr
    again = [_row(database_url, format(s.context.span_id, "016x")) for s in spans]
    assert [tuple(row[c] for c in columns) for row in again] == [
        (0, 0, 500, None, None), (0, 0, 500, Decimal("0.0002"), "span")]  # fmt: skip


def test_errors_business_tags_and_non_llm_spans(
    exporter: ExporterProcess, database_url: str
) -> None:
    failing = {
        "gen_ai.provider.name": "groq",
        "gen_ai.request.model": "llama-3.1-8b-instant",
        "error.type": "429",
        "nexus.operation": "caption",
        "nexus.correlation_id": "carousel-123",
    }
    http_only = {"http.request.method": "POST", "url.full": "https://example.com/x"}
    spans = make_spans([_spec(failing, 2, error="rate limited"), _spec(http_only, 3, name="POST")])
    before = httpx.get(f"{exporter.base_url}/metrics").text
    assert export_with_sdk(exporter.base_url, spans)
    row = _row(database_url, format(spans[0].context.span_id, "016x"))
    assert (row["success"], row["error_type"], row["error_message"]) == (
        False,
        "429",
        "rate limited",
    )
    assert (row["operation"], row["correlation_id"]) == ("caption", "carousel-123")
    assert query(
        database_url, "SELECT count(*) FROM api_calls WHERE span_id = %s",
        (format(spans[1].context.span_id, "016x"),),
    ) == [(0,)]  # fmt: skip
    after = httpx.get(f"{exporter.base_url}/metrics").text
    ignored = "nexus_exporter_spans_ignored_total"
    assert metric_value(after, ignored) - metric_value(before, ignored) == 1
    assert (
        metric_value(after, "nexus_llm_calls_total", outcome="error", nexus_operation="caption")
        == 1
    )


def _llm_spans(count: int, offset_s: int, model: str = "llama-3.3-70b-versatile") -> list[Any]:
    attributes = {
        "gen_ai.provider.name": "groq",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": 100,
        "gen_ai.usage.output_tokens": 40,
    }
    return make_spans([_spec(attributes, offset_s + i) for i in range(count)])


def _count_rows(database_url: str, spans: list[Any]) -> int:
    ids = [format(s.context.span_id, "016x") for s in spans]
    return int(
        query(database_url, "SELECT count(*) FROM api_calls WHERE span_id = ANY(%s)", (ids,))[0][0]
    )


def test_replayed_batch_stores_once_and_moves_no_counter_twice(
    exporter: ExporterProcess, database_url: str
) -> None:
    spans = _llm_spans(5, 10, model="llama-3.1-8b-instant")
    body = protobuf_body(spans)
    first = httpx.post(f"{exporter.base_url}/v1/traces", content=body, headers=PROTOBUF)
    after_first = httpx.get(f"{exporter.base_url}/metrics").text
    second = httpx.post(f"{exporter.base_url}/v1/traces", content=body, headers=PROTOBUF)
    after_second = httpx.get(f"{exporter.base_url}/metrics").text
    assert (first.status_code, second.status_code) == (200, 200)
    assert _count_rows(database_url, spans) == 5
    labels = {"gen_ai_request_model": "llama-3.1-8b-instant", "outcome": "success"}
    assert metric_value(after_first, "nexus_llm_calls_total", **labels) == 5
    assert metric_value(after_second, "nexus_llm_calls_total", **labels) == 5
    duplicates = "nexus_exporter_spans_duplicate_total"
    assert metric_value(after_second, duplicates) - metric_value(after_first, duplicates) == 5


def test_same_span_as_json_and_protobuf_stores_one_row(
    exporter: ExporterProcess, database_url: str
) -> None:
    spans = _llm_spans(3, 20)
    as_json = httpx.post(f"{exporter.base_url}/v1/traces", content=json_body(spans), headers=JSON)
    assert as_json.status_code == 200, as_json.text
    assert as_json.headers["content-type"].startswith("application/json")
    assert _count_rows(database_url, spans) == 3
    as_proto = httpx.post(
        f"{exporter.base_url}/v1/traces", content=protobuf_body(spans), headers=PROTOBUF
    )
    assert as_proto.status_code == 200
    assert _count_rows(database_url, spans) == 3


def test_gzip_bodies_are_accepted(exporter: ExporterProcess, database_url: str) -> None:
    spans = _llm_spans(2, 30)
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=gzip.compress(protobuf_body(spans)),
        headers={**PROTOBUF, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    assert _count_rows(database_url, spans) == 2
    assert export_with_sdk(exporter.base_url, _llm_spans(1, 31), compression=_gzip())


def _gzip() -> Any:
    from opentelemetry.exporter.otlp.proto.http import Compression

    return Compression.Gzip


def test_invalid_span_is_rejected_alone_as_partial_success(
    exporter: ExporterProcess, database_url: str
) -> None:
    good = _llm_spans(2, 40)
    bad_attributes = {
        "gen_ai.provider.name": "groq",
        "gen_ai.request.model": "llama-3.3-70b-versatile",
        "gen_ai.usage.input_tokens": -5,
    }
    bad = make_spans([_spec(bad_attributes, 42)])
    response = httpx.post(
        f"{exporter.base_url}/v1/traces", content=json_body([*good, *bad]), headers=JSON
    )
    assert response.status_code == 200
    partial = response.json()["partialSuccess"]
    assert int(partial["rejectedSpans"]) == 1
    assert "gen_ai.usage.input_tokens" in partial["errorMessage"]
    assert _count_rows(database_url, good) == 2
    assert _count_rows(database_url, bad) == 0


@pytest.mark.parametrize(
    ("body", "headers", "status", "needle"),
    [
        (b"\x0a\xff\xff\xff\xff\x0f garbage", PROTOBUF, 400, "protobuf"),
        (b'{"resourceSpans": [', JSON, 400, "JSON"),
        (b'{"resourceSpans": "nope"}', JSON, 400, "JSON"),
        (b"[1, 2]", JSON, 400, "object"),
        (b"hello", {"Content-Type": "text/plain"}, 415, "Content-Type"),
        (b"x" * 100, {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "gzip"),
        (b"x", {**PROTOBUF, "Content-Encoding": "br"}, 415, "Content-Encoding"),
        (GZIP_BOMB, {**PROTOBUF, "Content-Encoding": "gzip"}, 413, "limit"),
        (b"\0" * (33 * 1024 * 1024), PROTOBUF, 413, "limit"),
    ],
    ids=["bad-protobuf", "bad-json", "json-wrong-shape", "json-not-object", "content-type",
         "bad-gzip", "unknown-encoding", "gzip-bomb", "oversized"],
)  # fmt: skip
def test_bad_input_gets_a_clear_4xx_and_the_service_keeps_serving(
    exporter: ExporterProcess, database_url: str, body: bytes, headers: dict[str, str],
    status: int, needle: str,
) -> None:  # fmt: skip
    response = httpx.post(f"{exporter.base_url}/v1/traces", content=body, headers=headers)
    assert response.status_code == status
    assert needle in response.text
    spans = _llm_spans(1, 50 + status % 7)
    assert export_with_sdk(exporter.base_url, spans)
    assert _count_rows(database_url, spans) == 1


def test_metrics_equal_the_sums_in_the_table(exporter: ExporterProcess, database_url: str) -> None:
    """Every call stored by this exporter is in the table once, whichever tests ran before: its
    own calls (priced, with cached tokens) first, so that the sums are never of an empty table."""
    own = make_spans([_spec(SPELLINGS[0][1], 70 + i) for i in range(3)])
    assert export_with_sdk(exporter.base_url, own)
    assert _count_rows(database_url, own) == 3
    text = httpx.get(f"{exporter.base_url}/metrics").text
    calls, cost, input_tokens, output_tokens, cache_read = query(
        database_url,
        "SELECT count(*), coalesce(sum(cost_usd), 0), sum(input_tokens), sum(output_tokens), "
        "sum(cache_read_tokens) FROM api_calls",
    )[0]
    assert metric_value(text, "nexus_llm_calls_total") == calls
    # A float counter: one rounding per call at most for the batch sums and one for the additions.
    counted = Decimal(metric_value(text, "nexus_llm_cost_usd_total"))
    assert abs(counted - cost) <= float_sum_slack(cost, roundings=2 * calls), (counted, cost)
    usage = "gen_ai_client_token_usage_sum"
    assert metric_value(text, usage, gen_ai_token_type="input") == input_tokens
    assert metric_value(text, usage, gen_ai_token_type="output") == output_tokens
    assert (
        metric_value(text, "nexus_llm_tokens_total", gen_ai_token_type="cache_read") == cache_read
    )
    assert metric_value(text, "nexus_exporter_rows_written_total") == calls
    summary = query(
        database_url, "SELECT sum(calls), sum(cost_usd), sum(input_tokens) FROM daily_usage_summary"
    )[0]
    assert summary == (calls, cost, input_tokens)
