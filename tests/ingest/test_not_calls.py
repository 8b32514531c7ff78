"""Spans that are no LLM calls are skipped undecoded: exactly those that decoding would have
found to be none, and never one that decoding would refuse."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from exporter.ingest import decode, otlp
from exporter.ingest.decode import DecodeOptions, decode_body
from exporter.ingest.normalize import CALL_KEYS, to_llm_call
from exporter.ingest.not_calls import NotCalls
from tests.hostile.payloads import (
    BROKEN_KEY_VALUE,
    deep_key_value,
    encoded_request,
    llm_attributes,
    new_span,
    request,
    service_attribute,
    with_attributes,
)

_OPTIONS = DecodeOptions(max_body_bytes=32 * 1024 * 1024)
_HTTP = {"http.request.method": "GET", "url.path": "/api/posts/8317", "http.route": "/api/posts"}
# A string value that is not UTF-8: read tolerantly (U+FFFD), so decoded, never refused.
_NOT_UTF8 = b"\x0a\x08url.path\x12\x04\x0a\x02\xff\xfe"


def _body(*scopes: Sequence[Span | bytes]) -> bytes:
    """A request with a scope of spans (messages, or their bytes) per argument, each scope in a
    resource of its own."""
    return encoded_request(
        *(
            (
                [service_attribute("s")],
                [s if isinstance(s, bytes) else s.SerializeToString() for s in spans],
            )
            for spans in scopes
        )
    )


def _calls() -> list[Span]:
    openinference = {"openinference.span.kind": "LLM", "llm.model_name": "llama-3.3-70b-versatile",
                     "server.address": "api.groq.com", "llm.token_count.prompt": 9,
                     "llm.token_count.completion": 2}  # fmt: skip
    older = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o-mini",
             "gen_ai.usage.prompt_tokens": 12, "gen_ai.usage.completion_tokens": 3}  # fmt: skip
    return [
        new_span(llm_attributes()),
        new_span(older),
        new_span(openinference),
        new_span({**openinference, "openinference.span.kind": "llm"}),  # upper case by spec
        new_span(
            {
                "llm.provider": "anthropic",
                "llm.model_name": "claude-3-5-haiku",
                "llm.token_count.prompt": 4,
            }
        ),
    ]


def test_the_spans_skipped_are_the_ones_decoding_finds_no_calls_and_the_rest_are_kept() -> None:
    skipped = [
        new_span(_HTTP, "GET /api/posts"),
        new_span({"db.system": "postgresql", "db.statement": "SELECT * FROM t WHERE id = 4471"}),
        # an OpenLLMetry workflow span with no provider: no call, whatever its kind
        new_span({"traceloop.span.kind": "workflow", "traceloop.workflow.name": "crew"}),
    ]
    decoded = [
        new_span({"db.statement": "SELECT 'gen_ai.system'"}),  # a call's key, in a value
        new_span(_HTTP, "llm.provider"),  # in its name
        new_span({"openinference.span.kind": "CHAIN"}),  # the key, no LLM kind
        new_span({"gen_ai.sys\x00tem": "groq", "gen_ai.usage.input_tokens": 5}),  # NUL: no key
        new_span({"gen_ai.tool.name": "search"}),  # another gen_ai attribute
        new_span(llm_attributes(**{"gen_ai.operation.name": "invoke_agent"})),  # no model call
        new_span(llm_attributes(**{"traceloop.span.kind": "agent"})),  # no model call either
    ]
    not_utf8, deep = new_span(_HTTP, "GET /x"), new_span(_HTTP, "GET /deep")
    broken = new_span(_HTTP, "GET /broken")
    calls = _calls()
    spans = [*calls, *skipped, *decoded]
    body = _body(
        [
            *spans,
            with_attributes(not_utf8, _NOT_UTF8),
            with_attributes(deep, deep_key_value("http.route")),  # past the parser's depth
            with_attributes(broken, BROKEN_KEY_VALUE),
        ]
    )

    skip, unreadable = NotCalls(), []
    raws = list(otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF), unreadable, skip))

    assert skip.count == len(skipped)
    assert [r.span_id for r in raws] == [
        s.span_id.hex() for s in [*spans, not_utf8, deep] if s not in skipped
    ]
    assert unreadable == [f"span {broken.span_id.hex()}: an attribute is not a valid OTLP KeyValue"]
    # Decoded, the skipped spans are no calls; so are the others but the calls.
    everything = otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF), [])
    found = {raw.span_id: to_llm_call(raw) for raw in everything}
    assert {i for i, call in found.items() if call is not None} == {s.span_id.hex() for s in calls}


class _NeverSkips(NotCalls):
    def __call__(self, span: Any) -> bool:
        return False


def _conversion(body: bytes) -> tuple[Any, ...]:
    result = decode_body(body, otlp.PROTOBUF, None, _OPTIONS)
    rows = result.batch.data if result.batch is not None else b""
    return result.received, result.ignored, result.rejections, rows


def test_a_request_converts_to_the_same_rows_counts_and_refusals_skipping_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls = _calls()
    others = [
        new_span({**_HTTP, "url.path": f"/api/posts/{n}"}, "GET /api/posts") for n in range(40)
    ]
    broken = new_span(_HTTP, "GET /broken")
    body = _body(
        [*calls[:2], *others[:20], with_attributes(broken, BROKEN_KEY_VALUE)],
        [*others[20:], *calls[2:], with_attributes(new_span(_HTTP), _NOT_UTF8)],
    )
    skipping = _conversion(body)
    monkeypatch.setattr(decode, "NotCalls", _NeverSkips)
    assert skipping == _conversion(body)
    received, ignored, rejections, _ = skipping
    assert (received, ignored, len(rejections)) == (
        len(calls) + len(others) + 2,
        len(others) + 1,
        1,
    )


class _Asked:
    def __init__(self) -> None:
        self.asked: list[str] = []

    def __call__(self, span: Any) -> bool:
        self.asked.append(span.span_id.hex())
        return NotCalls()(span)


def test_a_scope_whose_first_spans_are_all_kept_is_not_asked_about_the_rest() -> None:
    calls = [new_span(llm_attributes(input_tokens=n + 1)) for n in range(otlp._SKIP_TRIES + 8)]
    late_http = new_span(_HTTP, "GET /late")
    mixed = [new_span(_HTTP, "GET /first"), *calls]
    asked = _Asked()
    parsed = otlp.parse_request(_body([*calls, late_http], mixed), otlp.PROTOBUF)
    raws = [r.span_id for r in otlp.iter_raw_spans(parsed, [], asked)]

    # The first scope: its first spans are calls, so the rest, the late HTTP span included,
    # are decoded without asking (and found to be no call). The second one is asked span by span.
    first = [s.span_id.hex() for s in calls[: otlp._SKIP_TRIES]]
    assert asked.asked == first + [s.span_id.hex() for s in mixed]
    assert raws == [s.span_id.hex() for s in [*calls, late_http, *calls]]


def test_every_key_that_makes_a_call_keeps_its_span() -> None:
    for key in CALL_KEYS:
        parsed = otlp.parse_request(_body([new_span({key: "LLM", "other": 1})]), otlp.PROTOBUF)
        assert not NotCalls()(parsed.resource_spans[0].scope_spans[0].spans[0]), key


def test_a_skipped_span_s_values_are_never_decoded() -> None:
    unique = {**_HTTP, "url.path": "/api/posts/never-decoded-7781"}
    body = _body([new_span(unique, "GET /api/posts")])
    pair = KeyValue(
        key="url.path", value=AnyValue(string_value=unique["url.path"])
    ).SerializeToString()
    otlp._DECODED.pop(pair, None)
    skip = NotCalls()
    assert list(otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF), [], skip)) == []
    assert skip.count == 1 and pair not in otlp._DECODED
    list(otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF), []))
    assert pair in otlp._DECODED  # decoded, when not skipped


def test_json_requests_are_read_whole() -> None:
    """Only protobuf bodies keep attributes encoded; a parsed request is never skipped."""
    skip = _Asked()
    raws = list(otlp.iter_raw_spans(request([new_span(_HTTP)]), [], skip))
    assert len(raws) == 1 and skip.asked == []
