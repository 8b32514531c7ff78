"""OTLP/HTTP trace payloads: bodies in (protobuf or JSON, gzip or not), RawSpans out."""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from exporter.ingest.model import AttributeValue, RawSpan
from exporter.ingest.otlp_wire import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_VALUE_DEPTH,
    SCALAR_KINDS,
    BoundedKeyValue,
    LazyRequest,
    TolerantRequest,
    bounded_key,
    bounded_value,
    repaired_text,
    scalar_pair,
    storable,
)

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = (PROTOBUF, JSON)
_EXCEPTION_EVENT = "exception"
_REPLACEMENT = "\ufffd"
_SURROGATE = re.compile("[\ud800-\udfff]")
# gzip senders may concatenate members (the gzip tool does, appending); a few are plenty, and
# each costs a new inflater, so a body of thousands of empty members is refused.
_MAX_GZIP_MEMBERS = 64
# SDKs batch an instrumentation's spans under its scope: when none of the first this many spans of
# a scope could be skipped, the rest of the scope is decoded without asking (see iter_raw_spans).
_SKIP_TRIES = 32


# Decoded attributes by their encoded bytes: most key-value pairs (provider, model, operation,
# server) repeat on span after span, and a dict lookup costs a fraction of decoding one. Bounded
# in bytes, not entries, so unique large values cannot grow a process: a value encoded in more
# than _DECODED_MAX_ITEM_BYTES is never kept (large values are almost never repeated), and
# the cache is emptied when its estimated size would pass _DECODED_BUDGET_BYTES.
class _DecodedPairs(dict[bytes, tuple[str, AttributeValue]]):
    """The cache; a pair not in it is decoded (and kept, if it may be) on lookup."""

    __slots__ = ()

    def __missing__(self, item: bytes) -> tuple[str, AttributeValue]:
        return _decode_key_value(item)


_DECODED = _DecodedPairs()
_DECODED_BUDGET_BYTES = 4 * 1024 * 1024  # per process
_DECODED_MAX_ITEM_BYTES = 1024
# What an entry costs besides its text (measured with tracemalloc: 200-230 bytes for a short
# int or string attribute, of which about 1.5x the encoded length is text): the key's bytes
# object, the pair's tuple, the key and value objects' headers and the dict's slot.
_ENTRY_OVERHEAD_BYTES = 160
_decoded_bytes = 0
_lookup = _DECODED.__getitem__


class PayloadError(ValueError):
    """A body that cannot be decoded; `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[type[PayloadError], tuple[str, int]]:
        # Raised in decoding worker processes: keep the status on the way back.
        return PayloadError, (str(self), self.status)


class UnreadableValue(PayloadError):
    """A part of one span (or of one resource, for its spans) that cannot be read: the span is
    rejected alone, or, for callers that take no rejections, the request is refused."""


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
    return _inflate(body, encoding, limit)


def _inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """Every member of a gzip body (a deflate body has one), all within `limit` together."""
    window = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    members: list[bytes] = []
    inflated = 0
    while True:
        inflater = zlib.decompressobj(window)
        try:
            members.append(inflater.decompress(body, limit + 1 - inflated))
        except zlib.error as exc:
            raise PayloadError(f"body is not valid {encoding}: {exc}") from None
        inflated += len(members[-1])
        if inflated > limit:
            raise PayloadError(f"body inflates past the {limit}-byte limit", 413)
        if not inflater.eof:
            raise PayloadError(f"body is truncated {encoding}")
        body = inflater.unused_data
        if not body:
            return b"".join(members) if len(members) > 1 else members[0]
        # What follows one gzip member can only be another (RFC 1952 section 2.2).
        if encoding != "gzip" or not body.startswith(b"\x1f\x8b"):
            raise PayloadError(
                f"body has {len(body)} bytes of trailing garbage after its {encoding} data"
            )
        if len(members) >= _MAX_GZIP_MEMBERS:
            raise PayloadError(f"body has more than {_MAX_GZIP_MEMBERS} gzip members")


def parse_request(body: bytes, media: str) -> Message:
    """The request message; protobuf spans keep their attributes encoded until
    `iter_raw_spans`, which rejects a span whose attributes are malformed."""
    if media == PROTOBUF:
        request = LazyRequest()
        try:
            request.ParseFromString(body)
        except (DecodeError, RecursionError, ValueError):
            # Invalid UTF-8 or a deep value outside the spans' own attributes; or not OTLP.
            return _parse_tolerantly(body)
        return request
    return _parse_json(body)


def _parse_tolerantly(body: bytes) -> Message:
    request = TolerantRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        # Not for its text or its depth, then: the wire format itself is broken.
        raise PayloadError(f"malformed OTLP protobuf: {exc}") from None
    return request


def _parse_json(body: bytes) -> ExportTraceServiceRequest:
    try:
        try:
            document = json.loads(body)
        except UnicodeDecodeError:
            # Invalid UTF-8 becomes U+FFFD, as in protobuf bodies: it costs only its value.
            document = json.loads(body.decode("utf-8", "replace"))
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


def _repair(value: Any, depth: int = 0) -> Any:
    """`value` as it would read after its spans' repairs; `depth` counts the AnyValues above
    it, and one nested past `MAX_VALUE_DEPTH` (read as None anyway) becomes empty, so a deep
    value does not take the batch past the parser's depth limit."""
    if isinstance(value, str):
        return _SURROGATE.sub(_REPLACEMENT, value)
    if isinstance(value, list):
        return [_repair(v, depth) for v in value]
    if isinstance(value, dict):
        if "arrayValue" in value or "kvlistValue" in value:
            if depth >= MAX_VALUE_DEPTH:
                return {}
            depth += 1
        fixed = {_repair(k): _repair(v, depth) for k, v in value.items()}
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


def attributes_dict(key_values: Any) -> dict[str, AttributeValue]:
    # The hot loop of ingest: scalar values, by far the most common, are read inline.
    result: dict[str, AttributeValue] = {}
    for kv in key_values:
        key, value = kv.key, kv.value
        if "\x00" in key:
            key = storable(key)
        if len(key) > MAX_ATTRIBUTE_KEY_CHARS:
            key = bounded_key(key)
        kind = value.WhichOneof("value")
        if kind == "string_value":
            text = value.string_value
            result[key] = storable(text) if "\x00" in text else text
        elif kind in SCALAR_KINDS:
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
    if depth >= MAX_VALUE_DEPTH:
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


def iter_raw_spans(
    request: Message,
    unreadable: list[str] | None = None,
    skip: Callable[[Any], bool] | None = None,
) -> Iterator[RawSpan]:
    """The spans of a request from `parse_request` (or a plain ExportTraceServiceRequest). A span
    that cannot be read is left out, its rejection ("span <id>: <why>") added to `unreadable`;
    without that list, it raises PayloadError instead. A span of a LazyRequest for which
    `skip(span)` is true is left out undecoded; when it kept the first _SKIP_TRIES spans of a
    scope (an instrumentation's scope of LLM calls), the rest of that scope is not asked."""
    if isinstance(request, TolerantRequest):
        yield from _iter_tolerant(request, unreadable)
        return
    read_attributes: Callable[[Any], dict[str, AttributeValue]] = encoded_attributes_dict
    if not isinstance(request, LazyRequest):
        read_attributes, skip = attributes_dict, None
    for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
        resource = attributes_dict(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name
            asking, kept = skip, 0
            for span in scope_spans.spans:
                if asking is not None:
                    if asking(span):
                        kept = -1  # a scope with spans to skip: every span is asked
                        continue
                    if kept >= 0:
                        kept += 1
                        asking = None if kept == _SKIP_TRIES else asking
                try:
                    attributes = read_attributes(span.attributes)
                except UnreadableValue as exc:
                    _refuse(span, str(exc), unreadable)
                    continue
                yield _raw_span(span, attributes, resource, scope_name)


def _iter_tolerant(request: Message, unreadable: list[str] | None) -> Iterator[RawSpan]:
    """The spans of a `TolerantRequest`: text repaired, each attribute list decoded apart, so
    what cannot be read costs its span (or, for a resource's attributes, that resource's spans)."""
    for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
        problem = ""
        try:
            resource = encoded_attributes_dict(resource_spans.resource.attributes)
        except UnreadableValue as exc:
            resource, problem = {}, f"its resource's attributes: {exc}"
        for scope_spans in resource_spans.scope_spans:
            scope_name = repaired_text(scope_spans.scope.name)
            for span in scope_spans.spans:
                try:
                    if problem:
                        raise UnreadableValue(problem)
                    attributes = encoded_attributes_dict(span.attributes)
                    yield _raw_span(
                        span,
                        attributes,
                        resource,
                        scope_name,
                        repaired_text,
                        encoded_attributes_dict,
                    )
                except UnreadableValue as exc:
                    _refuse(span, str(exc), unreadable)


def _refuse(span: Any, reason: str, unreadable: list[str] | None) -> None:
    rejection = f"span {span.span_id.hex()}: {reason}"
    if unreadable is None:
        raise PayloadError(f"malformed OTLP protobuf: {rejection}")
    unreadable.append(rejection)


def _raw_span(
    span: Any,
    attributes: dict[str, AttributeValue],
    resource: dict[str, AttributeValue],
    scope_name: str,
    text: Callable[[Any], str] = storable,
    read_attributes: Callable[[Any], dict[str, AttributeValue]] = attributes_dict,
) -> RawSpan:
    """`text` and `read_attributes` read the span's text and its events' attributes: as
    messages parsed strictly, or as the bytes of a `TolerantRequest`."""
    status = span.status
    # In RawSpan's order: passed by keyword, its fields cost 0.6 us more, a sixth of this call.
    raw = RawSpan(
        span.trace_id.hex(),  # trace_id
        span.span_id.hex(),  # span_id
        span.parent_span_id.hex() or None,  # parent_span_id
        text(span.name),  # name
        span.kind,
        span.start_time_unix_nano,
        span.end_time_unix_nano,
        status.code,  # status_code
        text(status.message),  # status_message
        attributes,
        resource,  # resource_attributes
        text(scope_name),
    )
    for event in span.events or ():  # an iterator over no events costs more than the test
        if text(event.name) == _EXCEPTION_EVENT:
            details = read_attributes(event.attributes)
            raw.exception_type = _str_or_none(details.get("exception.type"))
            raw.exception_message = _str_or_none(details.get("exception.message"))
    return raw


def _str_or_none(value: AttributeValue) -> str | None:
    return None if value is None else str(value)


def encoded_attributes_dict(encoded: Any) -> dict[str, AttributeValue]:
    """Attributes from encoded KeyValue messages, as `attributes_dict` reads them; raises
    UnreadableValue for a pair that is not a KeyValue even read tolerantly."""
    # The pairs looked up and the dict built in C, with no Python loop: dict() of pairs keeps
    # a key's first place and its last value, as assigning them one by one does.
    return dict(map(_lookup, encoded))


def _decode_key_value(item: bytes) -> tuple[str, AttributeValue]:
    global _decoded_bytes
    pair = scalar_pair(item)
    if pair is None:
        pair = _parsed_pair(item)
    if len(pair[0]) > MAX_ATTRIBUTE_KEY_CHARS:  # only for pairs not seen before: no cost after
        pair = (bounded_key(pair[0]), pair[1])
    size = len(item)
    if size <= _DECODED_MAX_ITEM_BYTES:  # inline: run for every value not cached yet
        value = pair[1]
        cost = size + size + _ENTRY_OVERHEAD_BYTES
        if value.__class__ is list:
            cost += _list_bytes(value)
        _decoded_bytes += cost
        if _decoded_bytes > _DECODED_BUDGET_BYTES:
            _DECODED.clear()
            _decoded_bytes = cost
        _DECODED[item] = pair
    return pair


def _parsed_pair(item: bytes) -> tuple[str, AttributeValue]:
    try:
        key_value = KeyValue.FromString(item)
    except (DecodeError, RecursionError, ValueError):
        return _decode_tolerantly(item)  # invalid UTF-8, or nested past the parser's limit
    key = key_value.key
    return storable(key) if "\x00" in key else key, any_value(key_value.value)


def _decode_tolerantly(item: bytes) -> tuple[str, AttributeValue]:
    try:
        key_value = BoundedKeyValue.FromString(item)
    except (DecodeError, RecursionError, ValueError):
        raise UnreadableValue("an attribute is not a valid OTLP KeyValue") from None
    return repaired_text(key_value.key), bounded_value(key_value.value, 0)


def _list_bytes(value: list[Any]) -> int:
    """What a decoded array or key-value list holds beyond its text, which is counted apart;
    bounded work, as only values encoded in at most _DECODED_MAX_ITEM_BYTES get here."""
    size = sys.getsizeof(value)
    for item in value:
        if isinstance(item, list):
            size += _list_bytes(item)
        elif item is not None and not isinstance(item, bool):
            size += _SCALAR_OBJECT_BYTES
    return size


# A str's header (a non-ASCII one's; text is counted apart), an int's or a float's object.
_SCALAR_OBJECT_BYTES = 80


def decoded_cache_bytes() -> int:
    """The estimated bytes the decoded-attribute cache holds (at most _DECODED_BUDGET_BYTES)."""
    return _decoded_bytes


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
