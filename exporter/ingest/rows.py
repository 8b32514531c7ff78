"""A call as `api_calls` stores it: the table's columns, the binary COPY tuple of a call, the
call's key, and `CallBatch`, calls as the writer takes them. Made where the calls were decoded
(a decode worker), written by `exporter.ingest.storage`."""

from __future__ import annotations

import json
import struct
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from typing import Any

import orjson
from psycopg import adapt, adapters, pq
from psycopg.adapt import PyFormat
from psycopg.types.json import Jsonb

# psycopg's C row encoder, what its own `Copy.write_row` runs. It is private: psycopg is pinned
# below its next minor version (pyproject.toml) and tests check that it exists and encodes as
# the public path does. Worth it: encode_row_public costs about 4 us more per span, 5% of the
# CPU that decoding, pricing and encoding a span takes (80 us).
try:
    from psycopg._copy_base import format_row_binary as _format_row_binary
except ImportError:  # a psycopg without it: the public path, slower, same bytes
    _format_row_binary = None

from exporter.ingest.duplicates import key_of, lookup_line
from exporter.ingest.leases import LEASE_ID_ATTRIBUTE, RESERVED_ATTRIBUTE, settlements
from exporter.ingest.metrics import MetricTotals, summarize_calls
from exporter.ingest.model import LLMCall
from exporter.ingest.summaries import Totals, ten_minute_totals

COLUMNS = (
    "trace_id", "span_id", "parent_span_id", "timestamp", "service_name", "provider", "model",
    "response_model", "gen_ai_operation", "operation", "correlation_id", "input_tokens",
    "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
    "total_tokens", "cost_usd", "cost_source", "duration_ms", "time_to_first_chunk_ms", "success",
    "error_type", "error_message", "usage_source", "server_address", "span_name", "attributes",
    "price_ref", "cache_write_1h_tokens", "service_tier",
)  # fmt: skip
COLUMN_TYPES = (
    "text", "text", "text", "timestamptz", "text", "text", "text", "text", "text", "text", "text",
    "int8", "int8", "int8", "int8", "int8", "int8", "numeric", "text", "float8", "float8", "bool",
    "text", "text", "text", "text", "text", "jsonb", "text", "int8", "text",
)  # fmt: skip
COLUMN_LIST = ", ".join(f'"{c}"' for c in COLUMNS)
BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, no extension
BINARY_TRAILER = b"\xff\xff"
_BINARY_FORMATS = [PyFormat.BINARY] * len(COLUMNS)
_FIELD_COUNT = struct.pack(">h", len(COLUMNS))  # each binary tuple starts with it
_NULL_FIELD = struct.pack(">i", -1)  # a NULL is a length of -1 and no bytes
_field_length = struct.Struct(">i").pack
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Attributes are stored as one jsonb document of at most this many bytes: past it, the keys
# that do not fit are left out (in the span's order) and ATTRIBUTES_CUT counts them.
MAX_ATTRIBUTES_JSON_BYTES = 64 * 1024
ATTRIBUTES_CUT = "nexus.attributes_left_out"


def call_key(trace_id: str, span_id: str, timestamp: datetime) -> str:
    """The idempotency key (the unique key of api_calls) as one string."""
    return f"{trace_id}{span_id}{(timestamp - _EPOCH) // _MICROSECOND}"


def span_id_of(key: str) -> str:
    return key[32:48]  # ids are checked to be 32 and 16 hex characters before they get here


@dataclass(slots=True)
class CallBatch:
    """Calls as the writer takes them: their binary COPY tuples, what finding the other spans of
    their calls needs of them (their keys first), and what storing all of them moves
    (summaries, metrics). Cheap to build where the calls were decoded and to
    pass between processes (a few large strings, not a thousand small ones); the writer never
    needs the calls themselves."""

    data: bytes  # the binary COPY tuples, one after another
    ends: array[int]  # where each tuple ends in `data`
    joined_lookups: str  # duplicates.lookup_line of each call, one per line
    months: frozenset[date]  # the api_calls partitions the rows go to
    totals: Totals | None = None  # ten_minute_totals, for when every row is new
    metrics: MetricTotals | None = None  # summarize_calls, likewise
    first: datetime | None = None
    last: datetime | None = None
    # What the calls took from budget leases (exporter.usage.leases), for when every row is new.
    leases: dict[Any, Decimal] | None = None

    @classmethod
    def of(cls, calls: Sequence[LLMCall], rows: list[bytes] | None = None) -> CallBatch:
        """The batch of `calls`, whose `rows` (encode_row of each) may be made already."""
        rows = [encode_row(c) for c in calls] if rows is None else rows
        return cls.packed(
            rows,
            lookups_for(calls),
            frozenset(d.replace(day=1) for d in {c.timestamp.date() for c in calls}),
            totals=dict(ten_minute_totals(calls)),
            metrics=summarize_calls(calls),
            first=min((c.timestamp for c in calls), default=None),
            last=max((c.timestamp for c in calls), default=None),
            leases=settlements(
                (c.attributes[LEASE_ID_ATTRIBUTE], c.attributes.get(RESERVED_ATTRIBUTE))
                for c in calls
                if LEASE_ID_ATTRIBUTE in c.attributes
            ),
        )

    @classmethod
    def packed(
        cls, rows: Sequence[bytes], lookups: Sequence[str], months: frozenset[date], **totals: Any
    ) -> CallBatch:
        ends = array("Q", accumulate(map(len, rows)))
        return cls(b"".join(rows), ends, "\n".join(lookups), months, **totals)

    @property
    def rows(self) -> list[bytes]:
        data, start, rows = self.data, 0, []
        for end in self.ends:
            rows.append(data[start:end])
            start = end
        return rows

    @property
    def lookups(self) -> list[str]:
        return self.joined_lookups.split("\n") if self.ends else []

    @property
    def keys(self) -> list[str]:
        return [key_of(line) for line in self.lookups]

    def __len__(self) -> int:
        return len(self.ends)


_TRANSFORMERS: dict[bool, Any] = {}


def _transformer(jsonb_as_bytes: bool = False) -> Any:
    """psycopg's Transformer with the binary dumpers of api_calls' column types, as
    `Copy.set_types(COLUMN_TYPES)` sets them, made once per process; `jsonb_as_bytes`: the
    attributes as the jsonb bytes encode_row makes, framed as bytea (the same in binary COPY)."""
    if jsonb_as_bytes not in _TRANSFORMERS:
        context = adapt.AdaptersMap(adapters)
        if jsonb_as_bytes:  # by psycopg's C dumper of bytes, not dbapi20's bytea one, in Python
            context.register_dumper(bytes, adapters.get_dumper(bytes, PyFormat.BINARY))
        types = ["bytea" if t == "jsonb" and jsonb_as_bytes else t for t in COLUMN_TYPES]
        transformer = _TRANSFORMERS[jsonb_as_bytes] = adapt.Transformer(context)
        transformer.set_dumper_types([adapters.types[t].oid for t in types], pq.Format.BINARY)
    return _TRANSFORMERS[jsonb_as_bytes]


def encode_row_public(call: LLMCall) -> bytes:
    """The call as one binary COPY tuple, through psycopg's public interfaces only: each value
    dumped by its column type's binary dumper, framed as PostgreSQL's COPY BINARY format says
    (a field count, then each field's length, -1 for NULL, and bytes)."""
    fields = _transformer().dump_sequence(call_row(call), _BINARY_FORMATS)
    return _FIELD_COUNT + b"".join(
        [_NULL_FIELD if f is None else _field_length(len(f)) + f for f in fields]
    )


def encode_row(call: LLMCall) -> bytes:
    """The call as one binary COPY tuple of api_calls, byte for byte what `encode_row_public`
    makes (and psycopg's `Copy.write_row`). Raises psycopg.DataError (or TypeError) for a value
    its column cannot take."""
    if _format_row_binary is None:
        return encode_row_public(call)
    out = bytearray()
    # The attributes' jsonb made here, not by psycopg's Jsonb dumper, which is Python-level.
    jsonb = b"\x01" + _json(call.attributes)  # jsonb in binary: its format's version, then JSON
    _format_row_binary(call_row(call, jsonb), _transformer(jsonb_as_bytes=True), out)
    return bytes(out)


def lookups_for(calls: Sequence[LLMCall]) -> list[str]:
    """duplicates.lookup_line of each call."""
    return [
        lookup_line(call_key(c.trace_id, c.span_id, c.timestamp), c.parent_span_id, c.attributes)
        for c in calls
    ]


def call_row(call: LLMCall, jsonb: bytes | None = None) -> tuple[Any, ...]:
    """The row's values; the attributes as Jsonb, or as their binary `jsonb` value when given."""
    return (
        call.trace_id, call.span_id, call.parent_span_id, call.timestamp, call.service_name,
        call.provider, call.model, call.response_model, call.gen_ai_operation, call.operation,
        call.correlation_id, call.input_tokens, call.output_tokens, call.cache_read_tokens,
        call.cache_write_tokens, call.reasoning_tokens, call.total_tokens, call.cost_usd,
        call.cost_source, call.duration_ms, call.time_to_first_chunk_ms, call.success,
        call.error_type, call.error_message, call.usage_source, call.server_address,
        call.span_name, Jsonb(call.attributes, _json) if jsonb is None else jsonb, call.price_ref,
        call.cache_write_1h_tokens, call.service_tier,
    )  # fmt: skip


def _json(value: Any) -> bytes:
    document = _dumps(value)
    return document if len(document) <= MAX_ATTRIBUTES_JSON_BYTES else _bounded_json(value)


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)  # several times faster than json.dumps, same document
    except TypeError:  # what orjson refuses (integers beyond 64 bits): the standard encoder
        return json.dumps(value).encode()


def _bounded_json(value: dict[str, Any]) -> bytes:
    """The attributes that fit MAX_ATTRIBUTES_JSON_BYTES, in order, and how many were left out."""
    room = MAX_ATTRIBUTES_JSON_BYTES - len(_dumps({ATTRIBUTES_CUT: len(value)})) - 2
    kept: dict[str, Any] = {}
    for key, item in value.items():
        size = len(_dumps({key: item}))  # "{" + "key":value + "}": the comma's byte is spare
        if size <= room:
            kept[key] = item
            room -= size - 1
    kept[ATTRIBUTES_CUT] = len(value) - len(kept)
    return _dumps(kept)
