"""Building real OTLP payloads with the OpenTelemetry SDK, for tests and benchmarks."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode


def ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000


def make_spans(
    specs: Sequence[Mapping[str, Any]], service_name: str = "test-service"
) -> list[ReadableSpan]:
    """Finished SDK spans. A spec: attributes, start (datetime), duration_ms, name, error, kind."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("nexus-tests")
    for spec in specs:
        start = ns(spec["start"])
        span = tracer.start_span(
            spec.get("name", "chat model"),
            kind=spec.get("kind", SpanKind.CLIENT),
            attributes=dict(spec.get("attributes", {})),
            start_time=start,
        )
        if spec.get("error"):
            span.set_status(Status(StatusCode.ERROR, spec["error"]))
        span.end(end_time=start + int(spec.get("duration_ms", 100) * 1_000_000))
    provider.shutdown()
    return list(memory.get_finished_spans())


def export_with_sdk(base_url: str, spans: Sequence[ReadableSpan], **kwargs: Any) -> bool:
    """Sends spans the way every app does: the SDK's own OTLP/HTTP exporter."""
    exporter = OTLPSpanExporter(endpoint=f"{base_url}/v1/traces", **kwargs)
    try:
        return exporter.export(spans).name == "SUCCESS"
    finally:
        exporter.shutdown()


def protobuf_body(spans: Sequence[ReadableSpan]) -> bytes:
    return encode_spans(spans).SerializeToString()


def json_body(spans: Sequence[ReadableSpan]) -> bytes:
    """OTLP/JSON as the spec writes it: hex ids, not protobuf's base64."""
    document = json_format.MessageToDict(encode_spans(spans))
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return json.dumps(document).encode()
