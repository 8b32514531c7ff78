"""A request's spans are converted a chunk at a time, step by step over each chunk: what comes
out is what converting them one by one gave, refusals in the spans' order included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from exporter.ingest import otlp
from exporter.ingest.decode import CONVERT_CHUNK, DecodeOptions, decode_body
from tests.api.conftest import call_spec
from tests.ingest.otlp_helpers import make_spans, protobuf_body

# A price no call can have: each of its calls costs more than a call may ($1,000,000).
PRICES = """models:
  - model: nexus-test-priceless
    input_mtok: 1000000000000
    output_mtok: 0
"""


def _spec(place: int, now: datetime) -> dict[str, Any]:
    """Every 7th span starts a year ago (outside the window: refused while normalizing), every
    11th costs more than a call may (refused once priced), every 5th is not an LLM call."""
    if place % 5 == 0:
        return {"start": now, "name": f"GET /{place}", "attributes": {"http.method": "GET"}}
    start = now - timedelta(days=365) if place % 7 == 0 else now
    model = "nexus-test-priceless" if place % 11 == 0 else "nexus-test-alpha"
    spec = call_spec(start, None, model=model, input_tokens=place + 1)
    spec["name"] = f"chat {place}"
    return spec


def test_refusals_come_in_the_spans_order_across_chunks_and_steps(tmp_path: Path) -> None:
    (tmp_path / "prices.yaml").write_text(PRICES)
    options = DecodeOptions(32 * 1024 * 1024, False, tmp_path / "prices.yaml", retention_days=90)
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    count = 2 * CONVERT_CHUNK + 37  # three chunks, the last one short
    spans = make_spans([_spec(place, now) for place in range(count)])
    conversion = decode_body(protobuf_body(spans), otlp.PROTOBUF, None, options)

    refused = [s for s in range(count) if s % 5 and (s % 7 == 0 or s % 11 == 0)]
    ids = {place: span.context.span_id.to_bytes(8, "big").hex() for place, span in enumerate(spans)}
    assert [reason.split(":")[0] for reason in conversion.rejections] == [
        f"span {ids[place]}" for place in refused
    ]
    for place, reason in zip(refused, conversion.rejections, strict=True):
        expected = "outside the accepted window" if place % 7 == 0 else "USD is out of range"
        assert expected in reason, (place, reason)
    assert conversion.received == count
    assert conversion.ignored == len([s for s in range(count) if s % 5 == 0])
    stored = [s for s in range(count) if s % 5 and s % 7 and s % 11]
    assert conversion.batch is not None and len(conversion.batch) == len(stored)
    # The rows in the spans' order.
    assert conversion.batch.keys == [
        f"{spans[s].context.trace_id:032x}{ids[s]}{spans[s].start_time // 1000}" for s in stored
    ]
