"""The writer stores on several connections at once: a write held up holds up only its own
connection, and two connections writing the same spans in opposite orders (a deadlock that
PostgreSQL breaks by rolling one back) still store each span once and answer every request."""

from __future__ import annotations

import asyncio
import logging

import psycopg
import pytest

from exporter.ingest import storage
from exporter.ingest.metrics import ExporterMetrics
from exporter.ingest.model import LLMCall
from exporter.ingest.normalize import to_llm_call
from exporter.ingest.otlp import iter_raw_spans
from exporter.ingest.rows import CallBatch
from exporter.ingest.writer import CallWriter
from tests.hostile.payloads import llm_attributes, new_span, request
from tests.support import query

pytestmark = pytest.mark.e2e

# Enough rows that two COPYs of them in opposite orders overlap and meet in the middle.
CROSSED_SPANS = 2000
CROSSED_TRIES = 5
# How long a request held behind another one's write is watched for not being stored.
HELD_SECONDS = 1.5


def _calls(count: int, service: str = "writer-tests") -> tuple[list[LLMCall], set[str]]:
    spans = [new_span(llm_attributes(input_tokens=500, output_tokens=50)) for _ in range(count)]
    calls = [to_llm_call(raw) for raw in iter_raw_spans(request(spans, service))]
    assert all(calls)
    return calls, {s.span_id.hex() for s in spans}  # type: ignore[return-value]


def _stored(database_url: str, ids: set[str]) -> list[str]:
    """The span ids of `ids` in api_calls, each as often as stored."""
    rows = query(
        database_url, "SELECT span_id FROM api_calls WHERE span_id = ANY(%s)", (list(ids),)
    )
    return sorted(r[0] for r in rows)


@pytest.mark.parametrize("connections", [1, 2])
async def test_a_write_held_up_holds_up_only_its_connection(
    database_url: str, connections: int
) -> None:
    """A request whose write waits (here on a key another transaction holds uncommitted)
    keeps the next request from being stored only when the writer has one connection. (The
    next request's calls are of another service: calls of one service, model and hour share
    a row of the performance summary, which two writes at once take one after the other.)"""
    held, held_ids = _calls(50)
    free, free_ids = _calls(50, service="writer-tests-other")
    writer = CallWriter(database_url, ExporterMetrics(), batch_max_rows=50, connections=connections)
    await writer.start()
    try:
        async with await psycopg.AsyncConnection.connect(database_url) as other:
            # The first held call's row, written and left uncommitted: the writer's COPY of it
            # waits for this transaction.
            await storage._copy(other, storage._COPY_DIRECT, [CallBatch.of(held[:1]).data])
            first = writer.submit(CallBatch.of(held))
            await asyncio.sleep(0.2)  # the first connection takes it and waits on the key
            second = writer.submit(CallBatch.of(free))
            done, _ = await asyncio.wait({second}, timeout=HELD_SECONDS * connections)
            assert bool(done) == (connections > 1)
            assert not first.done()
            await other.rollback()
        assert (await asyncio.wait_for(first, 10)).stored == 50
        assert (await asyncio.wait_for(second, 10)).stored == 50
    finally:
        await writer.stop()
    assert _stored(database_url, held_ids | free_ids) == sorted(held_ids | free_ids)


async def test_the_same_spans_at_once_in_opposite_orders_are_stored_once(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two requests with the same spans, one reversed, written at once on two connections:
    each waits for a key the other holds, PostgreSQL rolls one back, and the writer writes it
    again (its rows now duplicates) instead of answering 503. Tried until the deadlock happens
    (the COPYs must overlap), which the test asserts it did."""
    caplog.set_level(logging.INFO, logger="exporter.ingest.storage")
    metrics = ExporterMetrics()
    writer = CallWriter(database_url, metrics, batch_max_rows=CROSSED_SPANS, connections=2)
    await writer.start()
    tries = 0
    try:
        while tries < CROSSED_TRIES and "rolled back by the database (40P01)" not in caplog.text:
            tries += 1
            calls, ids = _calls(CROSSED_SPANS)
            both = (writer.submit(CallBatch.of(calls)), writer.submit(CallBatch.of(calls[::-1])))
            results = await asyncio.wait_for(asyncio.gather(*both), 60)
            assert sorted((r.stored, r.duplicates, len(r.refused)) for r in results) == [
                (0, CROSSED_SPANS, 0),
                (CROSSED_SPANS, 0, 0),
            ]
            assert _stored(database_url, ids) == sorted(ids)
    finally:
        await writer.stop()
    assert "rolled back by the database (40P01)" in caplog.text, "the writes never deadlocked"
    registry = metrics.registry
    assert registry.get_sample_value("nexus_exporter_storage_up") == 1
    assert registry.get_sample_value("nexus_exporter_rows_written_total") == tries * CROSSED_SPANS
    assert (
        registry.get_sample_value("nexus_exporter_spans_duplicate_total") == tries * CROSSED_SPANS
    )


async def test_a_write_rolled_back_on_every_attempt_is_sent_again_and_the_database_stays_up(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With one attempt allowed, the write PostgreSQL rolls back to break the deadlock is not
    tried again: its request is answered 503 (to be sent again), saying why, and the writer
    goes on: storage still up, the same connection, the rollback counted. Sent again, its
    spans are the duplicates of the ones the other write stored."""
    monkeypatch.setattr(storage, "WRITE_ATTEMPTS", 1)
    metrics = ExporterMetrics()
    writer = CallWriter(database_url, metrics, batch_max_rows=CROSSED_SPANS, connections=2)
    await writer.start()
    try:
        for _ in range(CROSSED_TRIES):
            calls, ids = _calls(CROSSED_SPANS)
            both = (writer.submit(CallBatch.of(calls)), writer.submit(CallBatch.of(calls[::-1])))
            results = await asyncio.gather(*both, return_exceptions=True)
            refused = [r for r in results if isinstance(r, storage.StorageUnavailable)]
            if refused:
                break
        assert len(refused) == 1, "the writes never deadlocked"
        assert str(refused[0]) == (
            "the database rolled the write back on 1 attempt in a row, to break deadlocks with"
            " another write of the same spans: send again"
        )
        registry = metrics.registry
        assert registry.get_sample_value("nexus_exporter_storage_up") == 1
        assert registry.get_sample_value("nexus_exporter_writes_rolled_back_total") == 1
        again = await asyncio.wait_for(writer.submit(CallBatch.of(calls)), 60)
        assert (again.stored, again.duplicates) == (0, CROSSED_SPANS)
    finally:
        await writer.stop()
    assert _stored(database_url, ids) == sorted(ids)


async def test_storage_is_up_from_the_start_when_the_database_answers(database_url: str) -> None:
    """An idle exporter whose database answers said storage down (0) until its first write:
    the exporter-health dashboard read "No"."""
    metrics = ExporterMetrics()
    writer = CallWriter(database_url, metrics)
    await writer.start()
    try:
        assert metrics.registry.get_sample_value("nexus_exporter_storage_up") == 1
    finally:
        await writer.stop()


async def test_a_database_down_at_start_is_storage_down_and_the_writer_starts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = ExporterMetrics()
    writer = CallWriter("postgresql://nexus@127.0.0.1:1/nexus", metrics)
    await writer.start()
    try:
        assert metrics.registry.get_sample_value("nexus_exporter_storage_up") == 0
        assert "database unavailable at start: connection failed" in caplog.text
        failed = writer.submit(CallBatch.of(_calls(1)[0]))
        with pytest.raises(storage.StorageUnavailable, match="database unavailable"):
            await asyncio.wait_for(failed, 30)
    finally:
        await writer.stop()
