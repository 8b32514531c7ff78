"""A malformed part of a request costs no more than the span holding it (a resource's, its
spans): invalid UTF-8 is repaired to U+FFFD in either encoding, a value nested past the
parser's depth limit is read as deep as any value is, an attribute that is not a KeyValue at
all rejects its span alone. Multi-member gzip bodies are read whole, trailing garbage is a 400,
and the decode workers' attribute cache is bounded in bytes."""

from __future__ import annotations

import gzip
import json
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from exporter.ingest import otlp
from exporter.ingest.model import TRUNCATED_MARKER
from exporter.ingest.otlp_wire import MAX_ATTRIBUTE_KEY_CHARS
from exporter.service import TRIM_SECONDS
from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import (
    BROKEN_KEY_VALUE,
    DEEP,
    JSON,
    deep_key_value,
    encoded_request,
    key_values,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
    service_attribute,
    to_json,
    with_attributes,
)
from tests.support import ExporterProcess, decode_workers, query, start_exporter

pytestmark = pytest.mark.e2e


def _valid(count: int = 2) -> list[Span]:
    return [new_span(llm_attributes(input_tokens=500, output_tokens=50)) for _ in range(count)]


def _stored(database_url: str, span: Span) -> tuple:
    [row] = query(
        database_url,
        "SELECT service_name, model, span_name, error_message, attributes "
        "FROM api_calls WHERE span_id = %s",
        (span.span_id.hex(),),
    )
    return row


def _spoiled(text: str) -> str:
    """`text` as stored once its 2nd and 3rd bytes were made invalid UTF-8 (0xFF 0xFE)."""
    return text[:1] + "\ufffd\ufffd" + text[3:]


@pytest.mark.parametrize("everywhere", [False, True], ids=["in-span-attributes", "everywhere"])
def test_invalid_utf8_in_protobuf_is_repaired_and_the_batch_kept(
    exporter: ExporterProcess, database_url: str, everywhere: bool
) -> None:
    """Wherever it is (a span attribute's value or key; or also the span name, status message,
    an exception event's attributes, the resource's), invalid UTF-8 becomes U+FFFD, as a lone
    surrogate in JSON does, and every span is kept."""
    hostile = new_span(
        llm_attributes(**{"gen_ai.request.model": "MODEL", "KEY": "plain"}), name="NAME"
    )
    hostile.status.CopyFrom(Status(code=Status.STATUS_CODE_ERROR, message="STATUS"))
    event = hostile.events.add(name="exception")
    event.attributes.extend(key_values({"exception.type": "EXCTYPE"}))
    other = new_span({"http.url": "MODEL"})  # not an LLM call: ignored, but no harm to others
    valid = _valid()
    body = request([hostile, other, *valid], "SERVICE").SerializeToString()
    spoiled = ["MODEL", "KEY"] + (["NAME", "STATUS", "SERVICE", "EXCTYPE"] if everywhere else [])
    for word in spoiled:
        invalid = word[:1].encode() + b"\xff\xfe" + word[3:].encode()  # the same length
        body = body.replace(word.encode(), invalid)
    response = post(exporter.base_url, body)
    assert response.status_code == 200, response.content
    assert rejected_spans(response) == 0
    assert stored_span_ids(database_url, [hostile, other, *valid]) == {
        s.span_id.hex() for s in [hostile, *valid]
    }
    stored = _stored(database_url, hostile)
    expected = [_spoiled(w) if w in spoiled else w for w in ["SERVICE", "MODEL", "NAME", "STATUS"]]
    assert list(stored[:4]) == expected
    assert stored[4]["K\ufffd\ufffd"] == "plain"
    assert [_stored(database_url, s)[0] for s in valid] == [expected[0]] * 2


def test_invalid_utf8_in_json_is_repaired_and_the_batch_kept(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(llm_attributes(**{"gen_ai.request.model": "MODEL"}))
    valid = _valid()
    body = json.dumps(to_json(request([hostile, *valid]))).encode()
    response = post(exporter.base_url, body.replace(b"MODEL", b"M\xff\xfeEL"), JSON)
    assert response.status_code == 200, response.text
    assert rejected_spans(response) == 0
    assert len(stored_span_ids(database_url, [hostile, *valid])) == 3
    assert _stored(database_url, hostile)[1] == "M\ufffd\ufffdEL"


def _read_as_deep_as_any() -> object:
    """What a value nested past the depth any value is read to reads as: eight arrays deep,
    then null."""
    value: object = None
    for _ in range(8):
        value = [value]
    return value


@pytest.mark.parametrize("in_resource", [False, True], ids=["in-spans", "in-resource-too"])
def test_a_value_nested_past_the_parser_limit_is_read_as_deep_as_any(
    exporter: ExporterProcess, database_url: str, in_resource: bool
) -> None:
    """In a span's attributes (LLM span or not) and in a resource's, however deep: every span
    stored, the value read down to its eighth level like any value."""
    hostile, other = new_span(llm_attributes()), new_span({"http.method": "GET"})
    valid, beside = _valid(), _valid(1)
    resource = [
        service_attribute("deep-resource"),
        *([deep_key_value("deep.res")] if in_resource else []),
    ]
    body = encoded_request(
        ([service_attribute("deep-spans")], [with_attributes(hostile, deep_key_value("deep")),
                                    with_attributes(other, deep_key_value("deep")),
                                    *(s.SerializeToString() for s in valid)]),
        (resource, [s.SerializeToString() for s in beside]),
    )  # fmt: skip
    response = post(exporter.base_url, body)
    assert response.status_code == 200, response.content
    assert rejected_spans(response) == 0
    assert stored_span_ids(database_url, [hostile, other, *valid, *beside]) == {
        s.span_id.hex() for s in [hostile, *valid, *beside]
    }
    assert _stored(database_url, hostile)[4]["deep"] == _read_as_deep_as_any()
    assert _stored(database_url, beside[0])[0] == "deep-resource"


def test_a_value_nested_past_the_limit_in_json_is_read_as_deep_as_any(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(llm_attributes(**{"deep": "DEEP"}))
    valid = _valid()
    document = to_json(request([hostile, *valid]))
    deep: dict = {"stringValue": "bottom"}
    for _ in range(DEEP):
        deep = {"arrayValue": {"values": [deep]}}
    text = json.dumps(document).replace('{"stringValue": "DEEP"}', json.dumps(deep))
    response = post(exporter.base_url, text.encode(), JSON)
    assert response.status_code == 200, response.text
    assert rejected_spans(response) == 0
    assert len(stored_span_ids(database_url, [hostile, *valid])) == 3
    assert _stored(database_url, hostile)[4]["deep"] == _read_as_deep_as_any()


_NOT_A_KEY_VALUE = "an attribute is not a valid OTLP KeyValue"


@pytest.mark.parametrize("in_resource", [False, True], ids=["in-spans", "in-resource-too"])
def test_an_attribute_that_is_not_a_key_value_rejects_its_span_alone(
    exporter: ExporterProcess, database_url: str, in_resource: bool
) -> None:
    """In a span's attributes, that span is rejected, named; in a resource's, each of that
    resource's spans is, and the other resources' spans are stored."""
    hostile, valid = new_span(llm_attributes()), _valid()
    orphans, beside = _valid(2), _valid(1)
    body = encoded_request(
        ([service_attribute("unreadable")], [with_attributes(hostile, BROKEN_KEY_VALUE),
                                    *(s.SerializeToString() for s in valid)]),
        ([service_attribute("orphans"), *([BROKEN_KEY_VALUE] if in_resource else [])],
         [s.SerializeToString() for s in orphans]),
        ([service_attribute("beside")], [s.SerializeToString() for s in beside]),
    )  # fmt: skip
    response = post(exporter.base_url, body)
    assert response.status_code == 200, response.content
    rejected = [hostile, *orphans] if in_resource else [hostile]
    assert rejected_spans(response) == len(rejected)
    reply = otlp.ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.error_message == "; ".join(
        [f"span {hostile.span_id.hex()}: {_NOT_A_KEY_VALUE}"]
        + [f"span {s.span_id.hex()}: its resource's attributes: {_NOT_A_KEY_VALUE}"
           for s in rejected[1:]]
    )  # fmt: skip
    everything = [hostile, *valid, *orphans, *beside]
    assert stored_span_ids(database_url, everything) == {
        s.span_id.hex() for s in everything if s not in rejected
    }


def _spans_body(spans: list[Span], service: str) -> bytes:
    return request(spans, service).SerializeToString()


def test_every_member_of_a_gzip_body_is_read(exporter: ExporterProcess, database_url: str) -> None:
    first, second = _valid(2), _valid(3)
    body = gzip.compress(_spans_body(first, "member-1")) + gzip.compress(
        _spans_body(second, "member-2")
    )
    response = post(exporter.base_url, body, **{"Content-Encoding": "gzip"})
    assert response.status_code == 200, response.content
    assert rejected_spans(response) == 0
    # Two members of one protobuf message are one message: the second's spans append.
    assert stored_span_ids(database_url, first + second) == {
        s.span_id.hex() for s in first + second
    }


def test_a_gzip_body_of_more_members_than_the_bound_is_a_400(
    exporter: ExporterProcess, database_url: str
) -> None:
    spans = _valid(1)
    members = [gzip.compress(_spans_body(spans, "members"))] + [gzip.compress(b"")] * 64
    response = post(exporter.base_url, b"".join(members), **{"Content-Encoding": "gzip"})
    assert response.status_code == 400
    assert b"body has more than 64 gzip members" in response.content
    assert stored_span_ids(database_url, spans) == set()
    response = post(exporter.base_url, b"".join(members[:64]), **{"Content-Encoding": "gzip"})
    assert response.status_code == 200 and rejected_spans(response) == 0
    assert stored_span_ids(database_url, spans) == {spans[0].span_id.hex()}


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_trailing_garbage_after_a_compressed_body_is_a_400(
    exporter: ExporterProcess, database_url: str, encoding: str, compress: object
) -> None:
    spans = _valid(2)
    body = compress(_spans_body(spans, "garbage")) + b"garbage"  # type: ignore[operator]
    response = post(exporter.base_url, body, **{"Content-Encoding": encoding})
    assert response.status_code == 400
    assert f"body has 7 bytes of trailing garbage after its {encoding} data".encode() in (
        response.content
    )
    assert stored_span_ids(database_url, spans) == set()


def test_the_attribute_cache_stays_within_its_byte_budget() -> None:
    """Unique 1 MiB values are never kept; unique small ones fill it only to its budget."""
    otlp.encoded_attributes_dict([])  # the module loaded
    for i in range(64):
        text = f"{i:04d}" + "x" * (1 << 20)
        big = KeyValue(key="blob", value=AnyValue(string_value=text)).SerializeToString()
        assert otlp.encoded_attributes_dict([big]) == {"blob": text}
        assert otlp.decoded_cache_bytes() <= otlp._DECODED_BUDGET_BYTES
    assert not any(len(item) > otlp._DECODED_MAX_ITEM_BYTES for item in otlp._DECODED)
    peak = 0
    for i in range(100_000):
        small = KeyValue(key="k", value=AnyValue(string_value=f"{i:0100d}"))
        otlp.encoded_attributes_dict([small.SerializeToString()])
        peak = max(peak, otlp.decoded_cache_bytes())
    assert otlp._DECODED_BUDGET_BYTES - 1024 <= peak <= otlp._DECODED_BUDGET_BYTES


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def _decode_worker(exporter: ExporterProcess) -> int:
    workers = decode_workers(exporter.process.pid)
    assert workers, "no decode worker"
    return workers[0]


def test_unique_large_attribute_values_do_not_grow_a_decode_worker(
    database_url: str, tmp_path: Path
) -> None:
    """384 unique 1 MiB values through one worker: kept by an entry-bounded cache, that worker
    would hold 384 MiB more; bounded in bytes, it holds what one request needs at most."""
    exporter = start_exporter(database_url, tmp_path, {"NEXUS_DECODE_PROCESSES": "1"})
    try:
        worker = _decode_worker(exporter)
        before = _rss_bytes(worker)
        for _ in range(16):
            spans = [new_span({"blob": os.urandom(8).hex() + "x" * (1 << 20)}) for _i in range(24)]
            body = gzip.compress(request(spans).SerializeToString())  # 24 MiB inflated
            response = post(exporter.base_url, body, **{"Content-Encoding": "gzip"})
            assert response.status_code == 200, response.content
        grown = _rss_bytes(worker) - before
    finally:
        exporter.stop()
    # Not zero: the allocator may keep what one request used at its peak, its inflated body,
    # the parsed copy of its values and their decoded text, about 3 x 24 MiB (measured: it
    # kept none). An entry-bounded cache kept all 16 requests' values (measured: 819 MiB).
    assert grown < 96 * 1024 * 1024, f"the decode worker grew by {grown // 1024 // 1024} MiB"


BURST_REQUESTS = 32
BURST_SENDERS = 8


def _send_until_taken(base_url: str, body: bytes) -> None:
    for _ in range(600):
        response = post(base_url, body)
        if response.status_code == 200:
            return
        assert response.status_code == 503, response.content
        time.sleep(0.05)
    raise AssertionError("a burst request was never taken")


def test_the_exporter_gives_a_bursts_memory_back(database_url: str, tmp_path: Path) -> None:
    """Large bodies are copied several times per request, from buffers the allocator keeps
    for reuse; a burst of them must not leave the exporter at the burst's high-water mark
    (given back within seconds: service.TRIM_SECONDS)."""
    exporter = start_exporter(database_url, tmp_path)
    try:
        pid = exporter.process.pid
        spans = [new_span({"blob": os.urandom(8).hex() + "x" * (256 << 10)}) for _ in range(16)]
        body = request(spans).SerializeToString()  # 4 MiB, none of it an LLM call
        _send_until_taken(exporter.base_url, body)
        time.sleep(3 * TRIM_SECONDS)
        before = _rss_bytes(pid)
        with ThreadPoolExecutor(BURST_SENDERS) as senders:
            list(
                senders.map(
                    lambda _: _send_until_taken(exporter.base_url, body), range(BURST_REQUESTS)
                )
            )
        peak = _rss_bytes(pid)
        deadline = time.monotonic() + 10 * TRIM_SECONDS
        while (after := _rss_bytes(pid)) - before > 24 << 20 and time.monotonic() < deadline:
            time.sleep(TRIM_SECONDS / 4)
    finally:
        exporter.stop()
    mib = 1 << 20
    assert after - before <= 24 * mib, (
        f"the exporter kept {(after - before) // mib} MiB of a burst that took it"
        f" {(peak - before) // mib} MiB past {before // mib} MiB"
    )


@pytest.mark.parametrize("content_type", ["protobuf", JSON])
def test_an_over_long_attribute_key_is_stored_cut(
    exporter: ExporterProcess, database_url: str, content_type: str
) -> None:
    """Keys are names: a 100,000-character one is cut with the marker (every per-key cache
    downstream holds at most MAX_ATTRIBUTE_KEY_CHARS a key), its value and its span kept."""
    long_key = "app." + os.urandom(50_000).hex()
    span = new_span(llm_attributes(**{long_key: "kept", "app.short": 7}))
    body = request([span])
    if content_type == JSON:
        response = post(exporter.base_url, json.dumps(to_json(body)).encode(), JSON)
    else:
        response = post(exporter.base_url, body.SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0, response.content
    [(attributes,)] = query(
        database_url, "SELECT attributes FROM api_calls WHERE span_id = %s", (span.span_id.hex(),)
    )
    cut = long_key[: MAX_ATTRIBUTE_KEY_CHARS - len(TRUNCATED_MARKER)] + TRUNCATED_MARKER
    assert attributes[cut] == "kept" and attributes["app.short"] == 7
    assert not any(len(key) > MAX_ATTRIBUTE_KEY_CHARS for key in attributes)
