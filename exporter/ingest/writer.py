"""The writer ingest hands its calls to: one queue, a few database connections, group commit.

Requests queue their `CallBatch`es; each of the writer's connections takes whatever is queued
(up to a transaction's worth of rows), stores it with `write_isolating` in one transaction and
answers each request only once its rows are committed. With one connection PostgreSQL stores on
one core, whatever the machine has; two write at once (the rule that keeps one row per call
holds across writers: exporter.ingest.duplicates). A row the database refuses is refused alone;
a transaction the database rolled back to break a deadlock is written again; only a database that
cannot be reached makes requests wait for a retry (503).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import psycopg

from exporter.ingest.metrics import ExporterMetrics
from exporter.ingest.rows import CallBatch, span_id_of
from exporter.ingest.storage import (
    PartlyWritten,
    QueueFull,
    RolledBackTooOften,
    StorageUnavailable,
    WriteResult,
    Written,
    write_isolating,
)
from nexus_otel._secrets import scrub_text

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    batch: CallBatch
    future: asyncio.Future[WriteResult] = field(repr=False)


class CallWriter:
    """A few database connections, one queue, group commit. Answers only after commit."""

    def __init__(
        self,
        database_url: str,
        metrics: ExporterMetrics,
        *,
        batch_max_rows: int = 5000,
        queue_max_rows: int = 50_000,
        connections: int = 2,
    ) -> None:
        self._url = database_url
        self._metrics = metrics
        self._batch_max_rows = batch_max_rows
        self._queue_max_rows = queue_max_rows
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._queued_rows = 0
        self._conns: list[psycopg.AsyncConnection[Any] | None] = [None] * connections
        self._months: set[date] = set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        # Connected now, so an idle exporter whose database answers says so (storage_up 1); a
        # database down at start is reported by the first write that finds it down.
        try:
            await self._connection(0)
            self._metrics.storage_up.set(1)
        except (psycopg.OperationalError, OSError) as exc:
            log.warning("database unavailable at start: %s", exc)
        self._tasks = [
            asyncio.create_task(self._run(slot), name=f"nexus-call-writer-{slot}")
            for slot in range(len(self._conns))
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        while not self._queue.empty():
            self._queue.get_nowait().future.set_exception(StorageUnavailable("shutting down"))
        for slot in range(len(self._conns)):
            await self._drop_connection(slot)

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def full(self) -> bool:
        return self._queued_rows >= self._queue_max_rows

    def submit(self, batch: CallBatch) -> asyncio.Future[WriteResult]:
        """Queues calls; the future resolves once they are committed. Raises QueueFull."""
        if self._queued_rows + len(batch) > self._queue_max_rows and self._queued_rows:
            raise QueueFull(f"{self._queued_rows} rows are already waiting for the database")
        future: asyncio.Future[WriteResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(batch, future))
        self._set_queued(self._queued_rows + len(batch))
        return future

    def _set_queued(self, rows: int) -> None:
        self._queued_rows = rows
        self._metrics.queue_depth.set(rows)

    async def _run(self, slot: int) -> None:
        while True:
            group = [await self._queue.get()]
            rows = len(group[0].batch)
            while rows < self._batch_max_rows and not self._queue.empty():
                group.append(self._queue.get_nowait())
                rows += len(group[-1].batch)
            try:
                await self._write_group(slot, group)
            finally:
                self._set_queued(self._queued_rows - rows)

    async def _write_group(self, slot: int, group: list[_Pending]) -> None:
        live = [p for p in group if not p.future.done()]  # a timed-out request gave up
        batches = [p.batch for p in live]
        started = time.perf_counter()
        try:
            result = await self._write(slot, batches)
        except PartlyWritten as exc:  # rows refused, some parts stored, then the database failed
            self._count_stored(exc.written)
            await self._failed(slot, live, exc.__cause__ or exc)
            return
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            # Row errors never get here (write_isolating reports them per row, whatever their
            # class): this is the database being unreachable, shutting down, out of resources.
            await self._failed(slot, live, exc)
            return
        except Exception as exc:
            log.exception("writing %d calls failed", sum(len(b) for b in batches))
            await self._drop_connection(slot)
            self._months.clear()  # a partition may have been dropped under us
            _fail(live, StorageUnavailable(f"write failed: {exc}"))
            return
        self._metrics.storage_up.set(1)
        self._metrics.write_duration.observe(time.perf_counter() - started)
        self._count(batches, result)
        _resolve(live, result)

    async def _write(self, slot: int, batches: list[CallBatch]) -> Written:
        conn = await self._connection(slot)
        await self._ensure_partitions(conn, batches)
        return await write_isolating(conn, batches)

    async def _failed(self, slot: int, live: list[_Pending], exc: BaseException) -> None:
        """Answers the write's requests 503: the database is unavailable, or (RolledBackTooOften)
        only this write could not be stored."""
        if isinstance(exc, RolledBackTooOften):  # the database is up: only this write lost
            self._metrics.writes_rolled_back.inc(exc.attempts)
            log.warning("%s: its requests are answered 503, to be sent again", exc)
            _fail(live, StorageUnavailable(f"{exc}: send again"))
            return
        await self._drop_connection(slot)
        self._metrics.storage_up.set(0)
        log.warning("database unavailable: %s", exc)
        _fail(live, StorageUnavailable(f"database unavailable: {exc}"))

    def _count_stored(self, result: Written) -> None:
        """The metrics of rows committed. When a write failed after some were (PartlyWritten),
        this is all that is counted: its requests are answered 503 and sent again, and the
        rows stored now are duplicates then, never counted again."""
        self._metrics.rows_written.inc(result.stored)
        self._metrics.writes_rolled_back.inc(result.rolled_back)
        self._metrics.spans_set_aside.inc(result.set_aside)
        for totals in result.metrics:
            self._metrics.apply(totals)

    def _count(self, batches: list[CallBatch], result: Written) -> None:
        self._count_stored(result)
        # Counted over the whole group: a span repeated by two requests of one group is a
        # duplicate too, though only one of them reaches the table.
        rows = sum(len(b) for b in batches)
        not_stored = rows - result.stored - len(result.refused)
        self._metrics.spans_duplicate.inc(not_stored - len(result.set_aside_keys))
        if result.refused:
            log.warning(
                "the database refused %d rows: %s",
                len(result.refused),
                scrub_text(next(iter(result.refused.values()))),  # it may quote a value
            )
            self._metrics.spans_rejected.labels("refused_by_database").inc(len(result.refused))
            self._months.clear()  # in case a partition was dropped under us: check them again

    async def _connection(self, slot: int) -> psycopg.AsyncConnection[Any]:
        conn = self._conns[slot]
        if conn is None or conn.closed:
            conn = await psycopg.AsyncConnection.connect(
                self._url, autocommit=True, connect_timeout=5
            )
            self._conns[slot] = conn
        return conn

    async def _drop_connection(self, slot: int) -> None:
        conn, self._conns[slot] = self._conns[slot], None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _ensure_partitions(
        self, conn: psycopg.AsyncConnection[Any], batches: list[CallBatch]
    ) -> None:
        months = set().union(*(b.months for b in batches)) - self._months
        for month in sorted(months):
            await conn.execute("SELECT nexus_ensure_partition(%s)", (month,))
            self._months.add(month)


def _fail(pending: list[_Pending], error: Exception) -> None:
    for p in pending:
        if not p.future.done():
            p.future.set_exception(error)


def _resolve(pending: list[_Pending], result: Written) -> None:
    new_keys = result.new_keys
    for p in pending:
        if p.future.done():
            continue
        if new_keys is None:  # every row was new
            p.future.set_result(WriteResult(stored=len(p.batch), duplicates=0))
            continue
        keys = p.batch.keys
        stored = set_aside = 0
        for key in keys:
            if key in new_keys:
                new_keys.discard(key)  # a span sent twice (in one request or two) counts once
                stored += 1
            elif key in result.set_aside_keys:
                result.set_aside_keys.discard(key)
                set_aside += 1
        refused = [(span_id_of(k), result.refused[k]) for k in keys if k in result.refused]
        duplicates = len(keys) - stored - set_aside - len(refused)
        p.future.set_result(WriteResult(stored, duplicates, refused=refused, set_aside=set_aside))
