"""Hostile OTLP requests, one kind each: every one gets a 4xx or an OTLP partial success, the
exporter stays up, and the valid spans of the same batch are stored."""

from __future__ import annotations

import gzip
import json
import socket
import time
import zlib
from decimal import Decimal

import httpx
import psycopg
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from exporter.ingest.rows import CallBatch
from exporter.ingest.storage import write_isolating
from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import (
    JSON,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
    to_json,
)
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e

LIMIT = 32 * 1024 * 1024  # the exporter's default NEXUS_MAX_BODY_BYTES


def _valid(count: int = 2) -> list:
    return [new_span(llm_attributes(input_tokens=500, output_tokens=50)) for _ in range(count)]


def test_nul_characters_are_stored_replaced_and_the_batch_kept(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(
        llm_attributes(**{"gen_ai.request.model": "llama\x00x", "note\x00key": "a\x00b"}),
        name="chat\x00",
    )
    valid = _valid()
    response = post(
        exporter.base_url, request([hostile, *valid], "nul\x00service").SerializeToString()
    )
    assert response.status_code == 200 and rejected_spans(response) == 0
    assert len(stored_span_ids(database_url, [hostile, *valid])) == 3
    [(service, model, name, attributes)] = query(
        database_url,
        "SELECT service_name, model, span_name, attributes FROM api_calls WHERE span_id = %s",
        (hostile.span_id.hex(),),
    )
    assert (service, model, name) == ("nul\ufffdservice", "llama\ufffdx", "chat\ufffd")
    assert attributes["note\ufffdkey"] == "a\ufffdb"


def test_lone_surrogates_in_json_are_replaced_and_the_batch_kept(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(llm_attributes(**{"gen_ai.request.model": "MODEL"}))
    valid = _valid()
    text = json.dumps(to_json(request([hostile, *valid]))).replace("MODEL", "m\\udc80\\ud800")
    response = post(exporter.base_url, text.encode(), JSON)
    assert response.status_code == 200, response.text
    assert len(stored_span_ids(database_url, [hostile, *valid])) == 3
    [(model,)] = query(
        database_url, "SELECT model FROM api_calls WHERE span_id = %s", (hostile.span_id.hex(),)
    )
    assert model == "m\ufffd\ufffd"


def test_counts_and_costs_past_their_range_cost_only_themselves(
    exporter: ExporterProcess, database_url: str
) -> None:
    huge_tokens = new_span(llm_attributes(input_tokens=2**53, output_tokens=2**53))
    huge_cost = new_span(
        llm_attributes(**{"gen_ai.request.model": "mine", "gen_ai.usage.cost": 1e30})
    )
    valid = _valid()
    response = post(
        exporter.base_url, request([huge_tokens, huge_cost, *valid]).SerializeToString()
    )
    assert response.status_code == 200
    assert rejected_spans(response) == 1
    assert b"is not a token count (0 to 100,000,000)" in response.content
    assert stored_span_ids(database_url, [huge_tokens, huge_cost, *valid]) == {
        s.span_id.hex() for s in (huge_cost, *valid)
    }
    # A reported cost past $1,000 is not believed: the call is stored, unpriced.
    [(cost, claimed)] = query(
        database_url,
        "SELECT cost_usd, attributes ->> 'nexus.cost.ignored_reported_usd' FROM api_calls"
        " WHERE span_id = %s",
        (huge_cost.span_id.hex(),),
    )
    assert (cost, claimed) == (None, "1E+30")


async def test_a_row_the_database_refuses_is_split_off_from_its_batch(database_url: str) -> None:
    """The safety net under normalization: rows PostgreSQL refuses are reported, one by one."""
    from exporter.ingest.normalize import to_llm_call
    from exporter.ingest.otlp import iter_raw_spans

    spans = _valid(7)
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request(spans))]
    assert all(calls)
    calls[3].cost_usd = Decimal(10) ** 9  # beyond numeric(20, 12)
    calls[5].service_name = "bad\x00name"
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        result = await write_isolating(conn, [CallBatch.of(calls)])  # type: ignore[arg-type]
    refused = {key[32:48]: why for key, why in result.refused.items()}
    assert list(refused) == [calls[3].span_id, calls[5].span_id]
    assert "numeric field overflow" in refused[calls[3].span_id]
    assert result.stored == 5
    stored = {c.span_id for c in calls} - set(refused)
    assert stored_span_ids(database_url, spans) == stored


@pytest.mark.parametrize("value", ['"9223372036854775808"', '"-9223372036854775809"', "1e400"])
def test_an_intvalue_beyond_int64_in_json_is_rejected_alone(
    exporter: ExporterProcess, database_url: str, value: str
) -> None:
    hostile = new_span(llm_attributes(input_tokens=7))
    valid = _valid()
    text = json.dumps(to_json(request([hostile, *valid])))
    text = text.replace('"intValue": "7"', f'"intValue": {value}')
    response = post(exporter.base_url, text.encode(), JSON)
    assert response.status_code == 200, response.text
    assert rejected_spans(response) == 1
    assert "is not a token count" in response.json()["partialSuccess"]["errorMessage"]
    assert stored_span_ids(database_url, [hostile, *valid]) == {s.span_id.hex() for s in valid}


def test_json_that_no_repair_saves_is_a_clear_400(exporter: ExporterProcess) -> None:
    document = to_json(request([new_span(llm_attributes())]))
    document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["kind"] = {"not": "a kind"}
    response = post(exporter.base_url, json.dumps(document).encode(), JSON)
    assert response.status_code == 400
    assert "malformed OTLP JSON" in response.json()["message"]


def test_largest_int64_count_is_rejected_alone(
    exporter: ExporterProcess, database_url: str
) -> None:
    hostile = new_span(llm_attributes(input_tokens=2**63 - 1))
    valid = _valid()
    response = post(exporter.base_url, request([hostile, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 1
    assert b"is not a token count" in response.content
    assert stored_span_ids(database_url, [hostile, *valid]) == {s.span_id.hex() for s in valid}


def test_unknown_provider_and_model_are_stored_unpriced(
    exporter: ExporterProcess, database_url: str
) -> None:
    span = new_span(
        llm_attributes(**{"gen_ai.provider.name": "acme-llm", "gen_ai.request.model": "zz-9"})
    )
    response = post(exporter.base_url, request([span]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    rows = query(
        database_url,
        "SELECT provider, model, input_tokens, cost_usd FROM api_calls WHERE span_id = %s",
        (span.span_id.hex(),),
    )
    assert rows == [("acme-llm", "zz-9", 100, None)]


def _nest(span: Span, depth: int) -> None:
    """An attribute whose value is `depth` key-value lists deep."""
    value = span.attributes.add(key="deep").value
    for _ in range(depth):
        entry = value.kvlist_value.values.add(key="k")
        value = entry.value
    value.string_value = "leaf"


def test_deep_nesting_is_bounded_or_refused(exporter: ExporterProcess, database_url: str) -> None:
    deep = new_span(llm_attributes())
    _nest(deep, 25)  # 75 messages deep: decodes; stored cut at a fixed depth
    valid = _valid()
    response = post(exporter.base_url, request([deep, *valid]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    assert len(stored_span_ids(database_url, [deep, *valid])) == 3
    [(depth,)] = query(
        database_url,
        "SELECT jsonb_path_query_first(attributes, 'strict $.deep') IS NOT NULL "
        "FROM api_calls WHERE span_id = %s",
        (deep.span_id.hex(),),
    )
    assert depth
    message = request([])
    deeper = message.resource_spans[0].scope_spans[0].spans.add()
    deeper.CopyFrom(new_span(llm_attributes()))
    _nest(deeper, 500)  # past the protobuf decoder's depth limit: read to the same fixed depth
    response = post(exporter.base_url, message.SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    assert len(stored_span_ids(database_url, [deeper])) == 1
    # A document nested past what a JSON parser reads is no document: refused whole.
    json_bomb = b'{"resourceSpans": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"
    response = post(exporter.base_url, json_bomb, JSON)
    assert response.status_code == 400
    assert "malformed OTLP JSON" in response.json()["message"]


def test_huge_attributes_are_stored_bounded(exporter: ExporterProcess, database_url: str) -> None:
    many = {f"extra.{i}": i for i in range(50_000)}
    span = new_span(llm_attributes(**{"big": "x" * 8_000_000, **many}))
    response = post(exporter.base_url, request([span]).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    [(size, keys)] = query(
        database_url,
        "SELECT pg_column_size(attributes), (SELECT count(*) FROM jsonb_object_keys(attributes)) "
        "FROM api_calls WHERE span_id = %s",
        (span.span_id.hex(),),
    )
    assert size < 64_000 and keys <= 64


def test_a_body_over_the_limit_is_a_413(exporter: ExporterProcess) -> None:
    response = post(exporter.base_url, b"\x00" * (LIMIT + 1))
    assert response.status_code == 413
    assert b"limit" in response.content


def test_a_huge_valid_batch_is_stored_whole(exporter: ExporterProcess, database_url: str) -> None:
    spans = _valid(20_000)
    response = post(exporter.base_url, request(spans).SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0
    [(count,)] = query(
        database_url,
        "SELECT count(*) FROM api_calls WHERE span_id = ANY(%s)",
        ([s.span_id.hex() for s in spans],),
    )
    assert count == 20_000


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_a_compression_bomb_is_a_413_without_inflating_it(
    exporter: ExporterProcess, encoding: str
) -> None:
    inflated = 1024 * 1024 * 1024  # 1 GiB of zeros, about 1 MB compressed
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31 if encoding == "gzip" else 15)
    block = b"\x00" * (16 * 1024 * 1024)
    bomb = b"".join(compressor.compress(block) for _ in range(inflated // len(block)))
    bomb += compressor.flush()
    started = time.monotonic()
    response = post(exporter.base_url, bomb, **{"Content-Encoding": encoding})
    assert response.status_code == 413
    assert b"inflates past" in response.content
    assert time.monotonic() - started < 10


def test_broken_compression_and_unknown_encodings_are_refused(exporter: ExporterProcess) -> None:
    body = gzip.compress(request(_valid()).SerializeToString())
    assert post(exporter.base_url, body[:-12], **{"Content-Encoding": "gzip"}).status_code == 400
    assert post(exporter.base_url, body, **{"Content-Encoding": "br"}).status_code == 415
    assert post(exporter.base_url, body, "text/plain").status_code == 415


def test_slow_clients_do_not_hold_up_others(exporter: ExporterProcess, database_url: str) -> None:
    host, port = exporter.base_url.removeprefix("http://").split(":")
    slow = []
    for i in range(100):
        sock = socket.create_connection((host, int(port)))
        if i % 2:  # headers that never end
            sock.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/")
        else:  # a body that never arrives
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000000\r\n\r\n\x0a"
            )
        slow.append(sock)
    try:
        spans = _valid()
        started = time.monotonic()
        response = post(exporter.base_url, request(spans).SerializeToString())
        assert response.status_code == 200
        assert time.monotonic() - started < 5
        assert len(stored_span_ids(database_url, spans)) == 2
        assert httpx.get(f"{exporter.base_url}/health", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()
