"""OTLP/HTTP trace payloads: bodies in (protobuf or JSON, gzip or not), RawSpans out."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Iterator
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.model import AttributeValue, RawSpan

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)
_EXCEPTION_EVENT = "exception"
_MAX_VALUE_DEPTH = 8
_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
_SCALAR_KINDS = frozenset({"int_value", "double_value", "bool_value"})


# Decoded attributes by their encoded bytes: most key-value pairs (provider, model, operation,
# server) repeat on span after span, and a dict lookup costs a fraction of decoding one.
_DECODED: dict[bytes, tuple[str, AttributeValue]] = {}
_DECODED_MAX = 16_384  # about 4 MB per process


def _lazy_request_class() -> type[Message]:
    """ExportTraceServiceRequest, except that each span's attributes stay encoded KeyValue
    bytes. The wire format is the same (both are length-delimited field 9), so it parses the
    same bodies; the attributes are then decoded one pair at a time, most of them from
    `_DECODED`, instead of as a message object per pair and per value."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        for message in file.message_type:
            if message.name == "Span":
                for field in message.field:
                    if field.name == "attributes":
                        field.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
                        field.ClearField("type_name")
        pool.Add(file)
    name = ExportTraceServiceRequest.DESCRIPTOR.full_name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


_LazyRequest = _lazy_request_class()


class PayloadError(ValueError):
    """A body that cannot be decoded; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[PayloadError], tuple[str, int]]:
        # Raised in decoding worker processes: keep the status on the way back.
        return PayloadError, (str(self), self.status)


def media_type(content_type: str | None) -> str | None:
    """`application/json; charset=utf-8` -> `application/json`; None when unsupported."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    return base if base in CONTENT_TYPES else None


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undoes Content-Encoding, refusing anything that inflates past `limit` (gzip bombs)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > limit:
            raise PayloadError(f"body of {len(body)} bytes exceeds the {limit}-byte limit", 413)
        return body
    if encoding not in ("gzip", "deflate"):
        raise PayloadError(f"unsupported Content-Encoding {encoding!r}: use gzip or identity", 415)
    window = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(window)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise PayloadError(f"body is not valid {encoding}: {exc}") from None
    if len(data) > limit:
        raise PayloadError(f"body inflates past the {limit}-byte limit", 413)
    if not inflater.eof:
        raise PayloadError(f"body is truncated {encoding}")
    return data


def parse_request(body: bytes, media: str) -> Message:
    """The request message; protobuf spans keep their attributes encoded until
    `iter_raw_spans`, which raises PayloadError if one of them is malformed."""
    if media == PROTOBUF:
        request = _LazyRequest()
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError) as exc:
            raise PayloadError(f"malformed OTLP protobuf: {exc}") from None
        return request
    return _parse_json(body)


def _parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise PayloadError(f"malformed OTLP JSON: {exc}") from None
    if not isinstance(document, dict):
        raise PayloadError("malformed OTLP JSON: the body must be an object")
    try:
        _hex_ids_to_base64(document)
        try:
            return _parse_dict(document)
        except json_format.ParseError:
            # Keep the batch when one value spoils it: a lone surrogate (JSON escapes can spell
            # one; protobuf strings refuse it) becomes U+FFFD, as a UTF-8 decoder would make
            # it, and an intValue beyond int64 becomes a string, which the span's own checks
            # then reject alone. Anything else is still a 400.
            return _parse_dict(_repair(document))
    except (json_format.ParseError, RecursionError, TypeError, AttributeError) as exc:
        raise PayloadError(f"malformed OTLP JSON: {exc}") from None


def _parse_dict(document: dict[str, Any]) -> ExportTraceServiceRequest:
    return json_format.ParseDict(document, ExportTraceServiceRequest(), ignore_unknown_fields=True)


def _repair(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub(_REPLACEMENT, value)
    if isinstance(value, list):
        return [_repair(v) for v in value]
    if isinstance(value, dict):
        fixed = {_repair(k): _repair(v) for k, v in value.items()}
        if "intValue" in fixed and not _is_int64(fixed["intValue"]):
            fixed["stringValue"] = str(fixed.pop("intValue"))
        return fixed
    return value


def _is_int64(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return False
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (ValueError, OverflowError):
        return False
    return number is not None and -(2**63) <= number < 2**63


def _hex_ids_to_base64(document: dict[str, Any]) -> None:
    """OTLP/JSON writes ids as hex; protobuf's JSON mapping reads bytes as base64."""
    for resource_spans in _list(document, "resourceSpans"):
        for scope_spans in _list(resource_spans, "scopeSpans"):
            for span in _list(scope_spans, "spans"):
                _convert_ids(span)
                for link in _list(span, "links"):
                    _convert_ids(link)


def _list(parent: Any, key: str) -> list[Any]:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, list) else []


def _convert_ids(obj: Any) -> None:
    if not isinstance(obj, dict):
        return
    for key in ("traceId", "spanId", "parentSpanId"):
        value = obj.get(key)
        if isinstance(value, str) and value:
            try:
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode()
            except ValueError:
                # Left undecodable on purpose: the span is rejected alone, by its id check.
                obj[key] = ""


def iter_raw_spans(request: Message) -> Iterator[RawSpan]:
    """The spans of a request from `parse_request` (or a plain ExportTraceServiceRequest)."""
    read_attributes = encoded_attributes_dict if isinstance(request, _LazyRequest) else None
    for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
        resource = attributes_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            for span in scope_spans.spans:
                attributes = (read_attributes or attributes_dict)(span.attributes)
                yield _raw_span(span, attributes, resource, scope_name)


def _raw_span(
    span: Any,
    attributes: dict[str, AttributeValue],
    resource: dict[str, AttributeValue],
    scope_name: str,
) -> RawSpan:
    raw = RawSpan(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=storable(span.name),
        kind=span.kind,
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        status_code=span.status.code,
        status_message=storable(span.status.message),
        attributes=attributes,
        resource_attributes=resource,
        scope_name=storable(scope_name),
    )
    for event in span.events:
        if event.name == _EXCEPTION_EVENT:
            details = attributes_dict(event.attributes)
            raw.exception_type = _str_or_none(details.get("exception.type"))
            raw.exception_message = _str_or_none(details.get("exception.message"))
    return raw


def _str_or_none(value: AttributeValue) -> str | None:
    return None if value is None else str(value)


def storable(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL, valid as it is in UTF-8: replace it."""
    return text.replace("\x00", _REPLACEMENT) if "\x00" in text else text


def encoded_attributes_dict(encoded: Any) -> dict[str, AttributeValue]:
    """Attributes from encoded KeyValue messages, as `attributes_dict` reads them."""
    result: dict[str, AttributeValue] = {}
    decoded = _DECODED.get
    for item in encoded:
        pair = decoded(item)
        if pair is None:
            pair = _decode_key_value(item)
        result[pair[0]] = pair[1]
    return result


def _decode_key_value(item: bytes) -> tuple[str, AttributeValue]:
    try:
        key_value = KeyValue.FromString(item)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise PayloadError(f"malformed OTLP protobuf: a span attribute: {exc}") from None
    key = key_value.key
    pair = (storable(key) if "\x00" in key else key, any_value(key_value.value))
    if len(_DECODED) >= _DECODED_MAX:
        _DECODED.clear()
    _DECODED[item] = pair
    return pair


def attributes_dict(key_values: Any) -> dict[str, AttributeValue]:
    # The hot loop of ingest: scalar values, by far the most common, are read inline.
    result: dict[str, AttributeValue] = {}
    for kv in key_values:
        key, value = kv.key, kv.value
        if "\x00" in key:
            key = storable(key)
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            result[key] = storable(text) if "\x00" in text else text
        elif kind in _SCALAR_KINDS:
            result[key] = getattr(value, kind)
        elif kind == "array_value":
            result[key] = _array(value.array_value.values, 0)
        else:
            result[key] = any_value(value)
    return result


def _array(values: Any, depth: int) -> list[AttributeValue]:
    # Arrays of strings (finish reasons, stop sequences) come on most spans: read them inline.
    items: list[AttributeValue] = []
    for item in values:
        kind = item.WhichOneof("value")
        if kind == "string_value":
            text = item.string_value
            items.append(storable(text) if "\x00" in text else text)
        else:
            items.append(any_value(item, depth + 1))
    return items


def any_value(value: AnyValue, depth: int = 0) -> AttributeValue:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return storable(value.string_value)
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bool_value":
        return value.bool_value
    if depth >= _MAX_VALUE_DEPTH:
        return None
    if kind == "array_value":
        return _array(value.array_value.values, depth)
    if kind == "kvlist_value":
        return [
            [storable(kv.key), any_value(kv.value, depth + 1)] for kv in value.kvlist_value.values
        ]
    if kind == "bytes_value":
        return binascii.hexlify(value.bytes_value).decode()
    return None


def encode_response(media: str, rejected: int = 0, message: str = "") -> bytes:
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media == JSON:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def encode_status(media: str | None, code: int, message: str) -> tuple[bytes, str]:
    """An error body as OTLP asks for it: a google.rpc.Status in the request's encoding."""
    status = status_pb2.Status(code=code, message=message)
    if media == PROTOBUF:
        return status.SerializeToString(), PROTOBUF
    return json_format.MessageToJson(status, indent=None).encode(), JSON
