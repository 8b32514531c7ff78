"""Property-based fuzzing of POST /v1/traces on a running exporter: whatever arrives, the answer
is a 4xx or a 200 (with a partial success for bad spans), never a 5xx, and the valid spans of a
batch are stored even when a hostile span rides along."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.ingest.normalize import MAX_TOKENS_PER_CALL
from tests.hostile.conftest import stored_span_ids
from tests.hostile.payloads import (
    JSON,
    PROTOBUF,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
    to_json,
)
from tests.support import ExporterProcess

pytestmark = pytest.mark.e2e

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
KNOWN_KEYS = (
    "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.total_tokens",
    "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.reasoning.output_tokens", "gen_ai.usage.prompt_tokens",
    "llm.token_count.prompt", "gen_ai.usage.cost", "operation.cost", "llm.cost.total",
    "gen_ai.response.model", "gen_ai.system", "gen_ai.operation.name", "nexus.operation",
    "nexus.correlation_id", "nexus.usage.source", "nexus.time_to_first_chunk", "server.address",
    "error.type", "url.full", "http.request.header.authorization", "gen_ai.prompt",
)  # fmt: skip
values = st.recursive(
    st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.sampled_from([-1, 0, 2**53, 2**53 + 1, 2**62, 2**63 - 1, -(2**63)]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=50),
        st.sampled_from(["NaN", "inf", "-1", "1e400", "12.5", "9223372036854775808", "\x00"]),
        st.booleans(),
        st.binary(max_size=16),
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
attribute_maps = st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=40), values)


def _valid_spans() -> list:
    return [new_span(llm_attributes(input_tokens=321, output_tokens=12)) for _ in range(2)]


@FUZZ
@given(
    input_tokens=values,
    output_tokens=values,
    provider=st.text(max_size=20) | st.sampled_from(["groq", "anthropic", "gcp.gemini", "x"]),
    model=st.text(max_size=60),
    extra=attribute_maps,
    service=st.text(max_size=30),
    encoding=st.sampled_from([PROTOBUF, JSON]),
)
def test_a_hostile_span_costs_no_valid_span(
    exporter: ExporterProcess,
    database_url: str,
    input_tokens: object,
    output_tokens: object,
    provider: str,
    model: str,
    extra: dict,
    service: str,
    encoding: str,
) -> None:
    attributes = {
        **llm_attributes(input_tokens, output_tokens),
        "gen_ai.provider.name": provider,
        "gen_ai.request.model": model,
        **extra,
    }
    hostile = new_span(attributes)
    valid = _valid_spans()
    message = request([valid[0], hostile, valid[1]], service)
    if encoding == PROTOBUF:
        body = message.SerializeToString()
    else:
        body = json.dumps(to_json(message)).encode()
    response = post(exporter.base_url, body, encoding)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(encoding)
    stored = stored_span_ids(database_url, [*valid, hostile])
    assert {s.span_id.hex() for s in valid} <= stored
    rejected = rejected_spans(response)
    assert rejected in (0, 1)
    assert not (rejected and hostile.span_id.hex() in stored)


@FUZZ
@given(
    start=st.integers(min_value=0, max_value=2**64 - 1),
    end=st.integers(min_value=0, max_value=2**64 - 1),
)
def test_any_start_and_end_time_is_stored_or_rejected(
    exporter: ExporterProcess, database_url: str, start: int, end: int
) -> None:
    hostile = new_span(llm_attributes())
    hostile.start_time_unix_nano, hostile.end_time_unix_nano = start, end
    valid = _valid_spans()
    response = post(exporter.base_url, request([hostile, *valid]).SerializeToString())
    assert response.status_code == 200, response.text
    assert {s.span_id.hex() for s in valid} <= stored_span_ids(database_url, valid)
    stored = stored_span_ids(database_url, [hostile])
    assert bool(stored) != bool(rejected_spans(response))


@FUZZ
@given(body=st.binary(max_size=2048), encoding=st.sampled_from([PROTOBUF, JSON]))
def test_random_bytes_get_a_400_or_an_answer(
    exporter: ExporterProcess, body: bytes, encoding: str
) -> None:
    response = post(exporter.base_url, body, encoding)
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        assert "malformed" in response.text


@FUZZ
@given(data=st.data())
def test_a_truncated_batch_is_refused_or_read_as_far_as_it_goes(
    exporter: ExporterProcess, data: st.DataObject
) -> None:
    body = request(_valid_spans()).SerializeToString()
    cut = data.draw(st.integers(min_value=1, max_value=len(body) - 1))
    response = post(exporter.base_url, body[:cut])
    assert response.status_code in (200, 400), response.text


@FUZZ
@given(
    tokens=st.floats(allow_nan=True, allow_infinity=True)
    | st.integers(min_value=-(2**63), max_value=-1)
)
def test_negative_nan_and_infinite_counts_are_rejected_alone(
    exporter: ExporterProcess, database_url: str, tokens: float
) -> None:
    valid_count = isinstance(tokens, float) and math.isfinite(tokens) and tokens.is_integer()
    # The output's 20 tokens count in the call's total, which is bounded too.
    valid_count = valid_count and 0 <= tokens <= MAX_TOKENS_PER_CALL - 20
    hostile = new_span(llm_attributes(input_tokens=tokens))
    valid = _valid_spans()
    response = post(exporter.base_url, request([hostile, *valid]).SerializeToString())
    assert response.status_code == 200
    assert len(stored_span_ids(database_url, valid)) == 2
    if valid_count:
        assert rejected_spans(response) == 0
    else:
        assert rejected_spans(response) == 1
        assert b"is not a token count" in response.content or b"tokens in all" in response.content
