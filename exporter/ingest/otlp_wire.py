"""The OTLP trace request read three ways: lazily (each span's attributes kept encoded, read
one pair at a time), tolerantly (when a body fails the strict parse: text as bytes, every
attribute list kept encoded), and one attribute depth-bounded (a value nested past what is
read stays unparsed). Each has the wire format of the messages it stands for. Most attribute
pairs are read straight from their bytes (`scalar_pair`)."""

from __future__ import annotations

import binascii
import struct
from collections.abc import Callable
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor_pb2 import FieldDescriptorProto as _Field
from google.protobuf.message import Message
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from exporter.ingest.model import TRUNCATED_MARKER, AttributeValue

# Values nested deeper are read as None: no attribute an LLM span carries nests so far.
MAX_VALUE_DEPTH = 8
SCALAR_KINDS = frozenset({"int_value", "double_value", "bool_value"})
_REPLACEMENT = "\ufffd"

_Edit = Callable[[str, _Field], None]
_KEY_VALUE = "." + KeyValue.DESCRIPTOR.full_name


def _request_class(edit: _Edit) -> type[Message]:
    """ExportTraceServiceRequest with its fields' types changed by `edit` to ones of the same
    wire format (a message or a string read as bytes), so it parses the same bodies."""
    pool = descriptor_pool.DescriptorPool()
    for module in (common_pb2, resource_pb2, trace_pb2, trace_service_pb2):
        file = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file)
        messages = list(file.message_type)
        while messages:
            message = messages.pop()
            messages.extend(message.nested_type)
            for field in message.field:
                edit(message.name, field)
        pool.Add(file)
    name = ExportTraceServiceRequest.DESCRIPTOR.full_name
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def _as_bytes(field: _Field) -> None:
    field.type = _Field.TYPE_BYTES
    field.ClearField("type_name")


def _lazy_span_attributes(message: str, field: _Field) -> None:
    if message == "Span" and field.name == "attributes":
        _as_bytes(field)


def _tolerant(message: str, field: _Field) -> None:
    # Text read as bytes (invalid UTF-8 parses) and every attribute list kept encoded (however
    # deep a value nests, it is not parsed here): the rest of a request nests a fixed few levels.
    if field.type == _Field.TYPE_STRING or field.type_name == _KEY_VALUE:
        _as_bytes(field)


# Each span's attributes stay encoded KeyValue bytes, decoded one pair at a time (most of them
# from the decoded-attribute cache) instead of as a message object per pair and per value.
LazyRequest = _request_class(_lazy_span_attributes)
# Read only when a body fails to parse as LazyRequest: invalid UTF-8 or a value nested past
# the parser's depth limit anywhere then costs no more than the span (or resource) holding it.
TolerantRequest = _request_class(_tolerant)


_ANY_VALUE_SCALARS = (
    ("string_value", 1, _Field.TYPE_BYTES),
    ("bool_value", 2, _Field.TYPE_BOOL),
    ("int_value", 3, _Field.TYPE_INT64),
    ("double_value", 4, _Field.TYPE_DOUBLE),
    ("bytes_value", 7, _Field.TYPE_BYTES),
)


def _bounded_key_value_class() -> type[Message]:
    """KeyValue read tolerantly: text as bytes, and a value parsed only as deep as `otlp.any_value`
    reads one (`MAX_VALUE_DEPTH`); deeper arrays and lists stay bytes, never parsed. Messages
    KeyValue<d>, AnyValue<d>, ArrayValue<d> and KeyValueList<d> stand for depth d."""
    file = descriptor_pb2.FileDescriptorProto(
        name="nexus_bounded_values.proto", package="nexus.bounded", syntax="proto3"
    )
    optional, repeated = _Field.LABEL_OPTIONAL, _Field.LABEL_REPEATED
    for depth in range(MAX_VALUE_DEPTH + 1):
        pair = file.message_type.add(name=f"KeyValue{depth}")
        pair.field.add(name="key", number=1, type=_Field.TYPE_BYTES, label=optional)
        pair.field.add(
            name="value",
            number=2,
            type=_Field.TYPE_MESSAGE,
            label=optional,
            type_name=f".nexus.bounded.AnyValue{depth}",
        )
        value = file.message_type.add(name=f"AnyValue{depth}")
        value.oneof_decl.add(name="value")
        for name, number, kind in _ANY_VALUE_SCALARS:
            value.field.add(name=name, number=number, type=kind, label=optional, oneof_index=0)
        for name, number, container in (
            ("array_value", 5, "ArrayValue"),
            ("kvlist_value", 6, "KeyValueList"),
        ):
            field = value.field.add(name=name, number=number, label=optional, oneof_index=0)
            if depth == MAX_VALUE_DEPTH:
                field.type = _Field.TYPE_BYTES
                continue
            field.type, field.type_name = _Field.TYPE_MESSAGE, f".nexus.bounded.{container}{depth}"
            item = "AnyValue" if container == "ArrayValue" else "KeyValue"
            file.message_type.add(name=f"{container}{depth}").field.add(
                name="values",
                number=1,
                type=_Field.TYPE_MESSAGE,
                label=repeated,
                type_name=f".nexus.bounded.{item}{depth + 1}",
            )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("nexus.bounded.KeyValue0"))


BoundedKeyValue = _bounded_key_value_class()


# Attribute keys are names (the conventions' longest is under 100 characters): a longer one is
# cut, ending in TRUNCATED_MARKER, so the per-key caches of every later step stay small.
MAX_ATTRIBUTE_KEY_CHARS = 256


def bounded_key(key: str) -> str:
    if len(key) <= MAX_ATTRIBUTE_KEY_CHARS:
        return key
    return key[: MAX_ATTRIBUTE_KEY_CHARS - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER


def storable(text: str) -> str:
    """PostgreSQL text and jsonb cannot hold NUL, valid as it is in UTF-8: replace it."""
    return text.replace("\x00", _REPLACEMENT) if "\x00" in text else text


def repaired_text(text: bytes | str) -> str:
    """Text of a tolerant read: each invalid UTF-8 sequence becomes U+FFFD, as the JSON path
    does with lone surrogates, and NUL as in `storable`."""
    return storable(text.decode("utf-8", "replace") if isinstance(text, bytes) else text)


def bounded_value(value: Any, depth: int) -> AttributeValue:
    """`any_value` of a `BoundedKeyValue`'s value: the same result, with text repaired."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return repaired_text(value.string_value)
    if kind in SCALAR_KINDS:
        return getattr(value, kind)  # type: ignore[no-any-return]
    if kind == "bytes_value":
        return binascii.hexlify(value.bytes_value).decode()
    if kind is None or depth >= MAX_VALUE_DEPTH:
        return None
    if kind == "array_value":
        return [bounded_value(item, depth + 1) for item in value.array_value.values]
    return [
        [repaired_text(kv.key), bounded_value(kv.value, depth + 1)]
        for kv in value.kvlist_value.values
    ]


_double = struct.Struct("<d").unpack_from


def scalar_pair(item: bytes) -> tuple[str, AttributeValue] | None:
    """The pair of an encoded KeyValue as SDKs write most of them (a key and a value of under 128
    bytes each, the value one string, non-negative integer or double), read as the parser reads
    it; None for any other pair, which is left to the parser. Every attribute value not cached
    yet comes here first: building a message per pair and per value costs twice as much."""
    size = len(item)
    # Field 1 (key) and 2 (value), each length-delimited, each length a one-byte varint.
    if size < 6 or item[0] != 0x0A or item[1] > 0x7F:
        return None
    at = item[1] + 2
    if at + 4 > size or item[at] != 0x12 or item[at + 1] > 0x7F or item[at + 1] + at + 2 != size:
        return None
    kind, at = item[at + 2], at + 3
    try:
        if kind == 0x0A:  # AnyValue field 1: string_value
            if item[at] > 0x7F or item[at] + at + 1 != size:
                return None
            value: AttributeValue = storable(item[at + 1 :].decode())
        elif kind == 0x21 and size - at == 8:  # field 4: double_value, 8 bytes
            value = _double(item, at)[0]
        elif kind == 0x18 and size - at <= 9:  # field 3: int_value, a varint under 2^63
            value = _varint(item, at, size - 1)
            if value is None:
                return None
        else:
            return None
        key = item[2 : item[1] + 2].decode()
    except UnicodeDecodeError:  # the parser refuses it: the pair is read tolerantly
        return None
    return storable(key), value


def _varint(item: bytes, at: int, last: int) -> int | None:
    """The varint from `at` to `last`, the end of `item`, or None when it does not end there."""
    end = item[last]
    if end > 0x7F:
        return None
    if at == last:  # most counts: one byte, or two
        return end
    if at + 1 == last:
        first = item[at]
        return (first & 0x7F) | end << 7 if first > 0x7F else None
    value = shift = 0
    for byte in item[at:last]:
        if byte < 0x80:
            return None  # ends before the message does
        value |= (byte & 0x7F) << shift
        shift += 7
    return value | end << shift
