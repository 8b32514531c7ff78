"""Spans that cannot be LLM calls, told from their bytes without decoding their attributes.

Most spans an app's tracing sends are not LLM calls (HTTP, database, queue spans), and their
attribute values are mostly unique (URLs, statements, sizes): decoding them was most of the
cost of such a span, only to find it has no provider. A span is an LLM call only if one of its
attribute keys is one of `normalize.CALL_KEYS`; a decoded key is its encoded bytes read as UTF-8
(or, cut or repaired, a text that is no such key), so a span none of whose bytes holds those
keys (here: `gen_ai.`, `llm.` or `openinference.span.kind`, one of which each key holds) is
no call.

Such a span is skipped only when every one of its attributes is known to decode: a span that
would be refused for an unreadable attribute is still refused, named, as before. That is known
when the span parses as a plain OTLP Span (strict UTF-8, every value well formed): a C parse of
its bytes, 1.5 µs for an HTTP span of 25 attributes, which cost 3 µs to decode when every value
was cached already and about 20 when the values were new.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from exporter.ingest.normalize import CALL_KEYS

# Searched for instead of the keys themselves: each key holds one of them, so a span without
# any holds no key; three searches instead of five, and a call's span holds `gen_ai.` or
# `llm.` early (found at its first such attribute, not at its provider's).
_NEEDLES = (b"gen_ai.", b"llm.", b"openinference.span.kind")
assert all(any(needle.decode() in key for needle in _NEEDLES) for key in CALL_KEYS)


class NotCalls:
    """Called with a span of a LazyRequest: True when the span is no LLM call and every one of its
    attributes would decode, so it need not be decoded; `count` counts them."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, span: Any) -> bool:
        # The whole span, attributes and all (as received: they are kept encoded), in one C call;
        # its name, events or ids holding a key's bytes only costs the span a full decode.
        encoded = span.SerializeToString()
        for needle in _NEEDLES:  # the likeliest first: a call stops at its first
            if needle in encoded:
                return False
        try:
            Span.FromString(encoded)
        except (DecodeError, RecursionError, ValueError):
            return False  # decoded as before: its unreadable attribute refuses it, named
        self.count += 1
        return True
