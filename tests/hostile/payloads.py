"""Hand-built OTLP requests, so tests can put any value of any type anywhere."""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
from google.protobuf import json_format
from google.protobuf.internal.encoder import _VarintBytes
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from exporter.ingest import otlp

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, str):
        return AnyValue(string_value=value)
    if isinstance(value, bytes):
        return AnyValue(bytes_value=value)
    if isinstance(value, Mapping):
        result = AnyValue()
        result.kvlist_value.values.extend(key_values(value))
        return result
    result = AnyValue()
    result.array_value.values.extend(any_value(v) for v in value)
    return result


def key_values(attributes: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def llm_attributes(input_tokens: Any = 100, output_tokens: Any = 20, **extra: Any) -> dict:
    return {
        "gen_ai.provider.name": "groq",
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "llama-3.3-70b-versatile",
        "gen_ai.usage.input_tokens": input_tokens,
        "gen_ai.usage.output_tokens": output_tokens,
        **extra,
    }


def new_span(attributes: Mapping[str, Any], name: str = "chat llama") -> Span:
    start = time.time_ns()
    return Span(
        trace_id=os.urandom(16),
        span_id=os.urandom(8),
        name=name,
        kind=Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=start,
        end_time_unix_nano=start + 250_000_000,
        attributes=key_values(attributes),
    )


def request(
    spans: Sequence[Span], service_name: str = "hostile-tests"
) -> ExportTraceServiceRequest:
    message = ExportTraceServiceRequest()
    resource_spans = message.resource_spans.add()
    resource_spans.resource.attributes.extend(key_values({"service.name": service_name}))
    resource_spans.scope_spans.add().spans.extend(spans)
    return message


# Requests written by hand, byte by byte: the protobuf library refuses to build the values
# some tests send. A KeyValue cut short: its key declares 5 bytes and 2 follow; no reading
# makes it one.
BROKEN_KEY_VALUE = b"\x0a\x05ab"


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return bytes([number << 3 | 2]) + _VarintBytes(len(payload)) + payload


# How deep the tests nest a value: past the protobuf parser's limit of 100 nested messages
# (each array level is two: AnyValue and ArrayValue) and json_format's limit of 100.
DEEP = 120


def deep_key_value(key: str, levels: int = DEEP) -> bytes:
    """An encoded KeyValue whose value is an array in an array ... `levels` deep."""
    value = field(1, b"bottom")  # AnyValue{string_value}
    for _ in range(levels):
        value = field(5, field(1, value))  # AnyValue{array_value{values: [value]}}
    return field(1, key.encode()) + field(2, value)


def with_attributes(span: Span, *encoded: bytes) -> bytes:
    """The span's bytes with more attributes (field 9) appended, as encoded KeyValues."""
    return span.SerializeToString() + b"".join(field(9, item) for item in encoded)


def encoded_request(*resources: tuple[list[bytes], list[bytes]]) -> bytes:
    """An ExportTraceServiceRequest of (resource attributes, spans) pairs, all encoded."""
    body = b""
    for attributes, spans in resources:
        resource = b"".join(field(1, item) for item in attributes)
        scope = b"".join(field(2, span) for span in spans)
        body += field(1, field(1, resource) + field(2, scope))
    return body


def service_attribute(name: str) -> bytes:
    return KeyValue(key="service.name", value=AnyValue(string_value=name)).SerializeToString()


def to_json(message: ExportTraceServiceRequest) -> dict[str, Any]:
    """OTLP/JSON as the spec writes it: hex ids."""
    document = json_format.MessageToDict(message)
    for resource_spans in document.get("resourceSpans", []):
        for scope_spans in resource_spans.get("scopeSpans", []):
            for span in scope_spans.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = base64.b64decode(span[key]).hex()
    return document


def span_key(span: Span) -> tuple[str, str]:
    return span.trace_id.hex(), span.span_id.hex()


def post(
    base_url: str, body: bytes, content_type: str = PROTOBUF, **headers: str
) -> httpx.Response:
    return httpx.post(
        f"{base_url}/v1/traces",
        content=body,
        headers={"Content-Type": content_type, **headers},
        timeout=60,
    )


def post_json(base_url: str, document: Any) -> httpx.Response:
    return post(base_url, json.dumps(document).encode(), JSON)


def rejected_spans(response: httpx.Response) -> int:
    """partial_success.rejected_spans of a 200 answer, in either encoding."""
    if response.headers["content-type"].startswith(JSON):
        return int(response.json().get("partialSuccess", {}).get("rejectedSpans", 0))
    decoded = otlp.ExportTraceServiceResponse()
    decoded.ParseFromString(response.content)
    return decoded.partial_success.rejected_spans


# Classic and PostgreSQL-specific injection attempts. Each is just an odd value when the query
# is parameterized or properly quoted; pg_sleep ones would show up as a slow answer.
SQL_INJECTIONS = (
    "' OR '1'='1",
    "' OR 1=1 --",
    "x') OR ('1'='1",
    "'; DROP TABLE injection_canary; --",
    "1; DROP TABLE injection_canary",
    "$$; DROP TABLE injection_canary; $$",
    "\\'; DROP TABLE injection_canary; --",
    "' UNION SELECT usename, passwd FROM pg_shadow --",
    "'||(SELECT pg_sleep(10))||'",
    "1) OR pg_sleep(10) IS NULL --",
    "%' OR '%'='",
    '" OR ""="',
    "groq' AND 1=0 UNION ALL SELECT NULL --",
)
