"""Spans that are no model call (HTTP, database, anything an app sends beside its LLM calls)
are each counted as ignored and stored nowhere, a provider's attribute name inside a value or a
key spoiled by NUL included; one with an attribute that is no KeyValue is refused and named;
every span that names a provider, in any spelling, or is an OpenInference LLM span, is stored."""

from __future__ import annotations

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import (
    BROKEN_KEY_VALUE,
    encoded_request,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
    service_attribute,
    with_attributes,
)
from tests.support import ExporterProcess, metric_samples

pytestmark = pytest.mark.e2e


def _ignored(exporter: ExporterProcess) -> float:
    text = httpx.get(f"{exporter.base_url}/metrics", timeout=10).text
    [(_, value)] = metric_samples(text, "nexus_exporter_spans_ignored_total")
    return value


def test_spans_beside_calls_are_ignored_and_calls_in_every_spelling_stored(
    exporter: ExporterProcess, database_url: str
) -> None:
    current = new_span(llm_attributes())
    deprecated = new_span(
        {
            "gen_ai.system": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.usage.prompt_tokens": 120,
            "gen_ai.usage.completion_tokens": 30,
        }
    )
    openinference = new_span(
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "llama-3.3-70b-versatile",
            "server.address": "api.groq.com",
            "llm.token_count.prompt": 90,
            "llm.token_count.completion": 10,
        }
    )
    http = new_span({"http.request.method": "GET", "url.path": "/api/posts/7"}, "GET /api")
    # A provider's attribute name inside a value, not as a key: no model call either.
    database = new_span({"db.system": "postgresql", "db.statement": "SELECT 'gen_ai.system'"})
    # NUL is stored as U+FFFD: this key is no provider's name.
    nul_key = new_span({"gen_ai.sys\x00tem": "groq", "gen_ai.usage.input_tokens": 5})
    calls, others = [current, deprecated, openinference], [http, database, nul_key]
    before = _ignored(exporter)
    response = post(exporter.base_url, request([*calls, *others]).SerializeToString())
    assert response.status_code == 200, response.content
    assert rejected_spans(response) == 0
    assert stored_span_ids(database_url, [*calls, *others]) == {s.span_id.hex() for s in calls}
    assert _ignored(exporter) - before == len(others)


def test_a_span_beside_calls_with_an_attribute_that_is_no_key_value_is_refused_named(
    exporter: ExporterProcess, database_url: str
) -> None:
    broken, call = new_span({"http.request.method": "GET"}, "GET /"), new_span(llm_attributes())
    body = encoded_request(
        ([service_attribute("beside")], [with_attributes(broken, BROKEN_KEY_VALUE), _spans(call)])
    )
    response = post(exporter.base_url, body)
    assert response.status_code == 200, response.content
    assert rejected_spans(response) == 1
    reply = ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.error_message == (
        f"span {broken.span_id.hex()}: an attribute is not a valid OTLP KeyValue"
    )
    assert stored_span_ids(database_url, [broken, call]) == {call.span_id.hex()}


def _spans(span: Span) -> bytes:
    return span.SerializeToString()
