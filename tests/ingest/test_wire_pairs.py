"""The attribute pairs read straight from their bytes (`otlp_wire.scalar_pair`) read as the
protobuf parser reads them, and every pair it does not read is left to the parser."""

from __future__ import annotations

import math
import struct

from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from exporter.ingest import otlp
from exporter.ingest.model import AttributeValue
from exporter.ingest.otlp_wire import scalar_pair

_VALUES = st.one_of(
    st.text(max_size=160).map(lambda s: AnyValue(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.sampled_from([0, 1, 127, 128, 16383, 16384, 2**21, 2**56, 2**63 - 1]).map(
        lambda i: AnyValue(int_value=i)
    ),
    st.floats(allow_nan=True).map(lambda f: AnyValue(double_value=f)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
    st.just(AnyValue()),
)


def _same(read: AttributeValue, parsed: AttributeValue) -> bool:
    if isinstance(parsed, float) and isinstance(read, float):
        return struct.pack("<d", read) == struct.pack("<d", parsed)  # NaN, -0.0 bit for bit
    return type(read) is type(parsed) and read == parsed


def _check(item: bytes) -> None:
    read = scalar_pair(item)
    if read is None:
        return
    parsed = otlp._parsed_pair(item)  # raises for a pair the parser cannot read at all
    assert read[0] == parsed[0] and _same(read[1], parsed[1]), (item, read, parsed)


@given(st.text(max_size=140), _VALUES)
def test_a_pair_is_read_as_the_parser_reads_it(key: str, value: AnyValue) -> None:
    item = KeyValue(key=key, value=value).SerializeToString()
    _check(item)
    if 0 < len(key.encode()) < 120 and value.WhichOneof("value") in ("int_value", "double_value"):
        number = getattr(value, value.WhichOneof("value"))
        if not (isinstance(number, int) and number < 0) and not math.isnan(number):
            assert scalar_pair(item) is not None  # the common pairs take the short way


@given(st.text(max_size=40), _VALUES, st.data())
def test_a_spoiled_pair_is_read_as_the_parser_reads_it_or_left_to_it(
    key: str, value: AnyValue, data: st.DataObject
) -> None:
    item = bytearray(KeyValue(key=key, value=value).SerializeToString())
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(item)))
        what = data.draw(st.sampled_from(["set", "insert", "delete"]))
        byte = data.draw(st.integers(0, 255))
        if what == "insert":
            item.insert(at, byte)
        elif at < len(item):
            if what == "set":
                item[at] = byte
            else:
                del item[at]
    try:
        _check(bytes(item))
    except otlp.UnreadableValue:
        raise AssertionError(f"read a pair the parser refuses: {bytes(item)!r}") from None


def test_pairs_written_otherwise_are_left_to_the_parser() -> None:
    for item in (
        b"\n\x01k\x12\x02\x18\x80",  # a varint that does not end
        b"\n\x01k\x12\x0b\x18" + b"\xff" * 9 + b"\x01",  # ten bytes: a negative integer
        b"\n\x01k\x12\x04\x0a\x02\xed\xa0",  # a surrogate: not UTF-8
        b"\n\x02\xc3\x28\x12\x03\x0a\x01a",  # a key that is not UTF-8
        b"\x12\x03\x0a\x01a\n\x01k",  # the value before the key
    ):
        assert scalar_pair(item) is None
    assert scalar_pair(b"\n\x01k\x12\x03\x18\x80\x00") == ("k", 0)  # a longer varint, as read
    assert scalar_pair(b"\n\x03a\x00b\x12\x03\x0a\x01\x00") == ("a\ufffdb", "\ufffd")
