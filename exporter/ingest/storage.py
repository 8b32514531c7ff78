"""Durable, idempotent, batched writes of LLM calls to PostgreSQL.

Requests hand their calls to one `CallWriter` (`exporter.ingest.writer`), which groups whatever is
queued into one transaction (group commit) and answers each request only once its rows are
committed. Rows go in with a binary COPY straight into `api_calls`; only when that hits a unique
key (a replay) does the batch take the slower COPY-into-temp-table and INSERT ... ON CONFLICT DO
NOTHING path. The summaries (per day, hour and ten minutes: `exporter.ingest.summaries`) are
updated in the same transaction from the rows that were actually new, so a replay never counts
twice. Two spans of one call (two instrumentations of one request) keep one row: in the same
transaction, `exporter.ingest.duplicates.resolve` sets the other aside, and the summaries move
by the rows that stay.

A span is identified by its trace and span id alone: each monthly partition has a unique key on
(trace_id, span_id), so a copy whose start time moved stays one row inside a month. Across a
month boundary two partitions are involved: rows within CROSS_MONTH_WINDOW of a boundary always
take the slower path, which also looks for the same ids within that window in the other month.
Two copies further apart than that, in two months, are both stored.

Rows the database refuses (SQLSTATE classes 22 data exception, 23 integrity, 54 program limit)
are split off by bisection and reported one by one; any other error means the database is
unavailable, and the writer answers 503.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import errors
from psycopg.rows import namedtuple_row

from exporter.ingest.duplicates import (
    counted_already,
    facts_of,
    key_of,
    lookups_of,
    resolve,
)
from exporter.ingest.leases import LEASE_ID_ATTRIBUTE, RESERVED_ATTRIBUTE, settle, settlements
from exporter.ingest.metrics import MetricTotals, summarize_calls
from exporter.ingest.rows import (
    BINARY_SIGNATURE,
    BINARY_TRAILER,
    COLUMN_LIST,
    CallBatch,
    call_key,
)
from exporter.ingest.summaries import (
    Totals,
    difference,
    hour_of,
    merged,
    ten_minute_totals,
    upserts,
)

log = logging.getLogger(__name__)

_COPY_DIRECT = f"COPY api_calls ({COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_COPY_STAGE = f"COPY nexus_stage ({COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_CREATE_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS nexus_stage (LIKE api_calls INCLUDING DEFAULTS) "
    "ON COMMIT DELETE ROWS"
)
# What the summaries and metrics need of each row that turned out new, by LLMCall's names.
_FACTS = (
    "trace_id", "span_id", "timestamp", "service_name", "provider", "model", "gen_ai_operation",
    "operation", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "duration_ms", "success", "error_type",
)  # fmt: skip
# Copies of one span close to a month boundary can land in two partitions, whose unique keys
# cannot see each other: rows this close to a boundary are checked against the other month.
CROSS_MONTH_WINDOW = timedelta(hours=1)
# DISTINCT ON: one row per span among the staged ones, whatever their start times (the earliest).
# The NOT EXISTS runs only for rows within the window of a month boundary, as one index probe
# each (OFFSET 0 keeps it a per-row subplan, never a join scanning api_calls).
_INSERT_NEW = (
    f"INSERT INTO api_calls ({COLUMN_LIST}) SELECT DISTINCT ON (trace_id, span_id) "
    f"{COLUMN_LIST} FROM nexus_stage s WHERE date_trunc('month', s.\"timestamp\" - %(window)s, "
    "'UTC') = date_trunc('month', s.\"timestamp\" + %(window)s, 'UTC') OR NOT EXISTS (SELECT "
    'FROM api_calls a WHERE a.trace_id = s.trace_id AND a.span_id = s.span_id AND a."timestamp"'
    ' BETWEEN s."timestamp" - %(window)s AND s."timestamp" + %(window)s OFFSET 0) '
    'ORDER BY trace_id, span_id, "timestamp" ON CONFLICT DO NOTHING RETURNING '
    + ", ".join(f'"{c}"' for c in _FACTS)
    + f", attributes ->> '{LEASE_ID_ATTRIBUTE}' AS lease_id,"
    f" attributes ->> '{RESERVED_ATTRIBUTE}' AS lease_reserved"
)
# Each batch of new calls is announced on this channel (LISTEN/NOTIFY) once committed: the
# API's live feed. The message only says where the rows are (their time span and the batch's
# ingested_at, which is the transaction's now()), so announcing costs the writer nothing per row.
NOTIFY_CHANNEL = "nexus_calls"
_NOTIFY = (
    "SELECT pg_notify('nexus_calls', json_build_object('ingested_at', now(), 'first', %s::text,"
    " 'last', %s::text, 'rows', %s::int)::text)"
)


class StorageUnavailable(RuntimeError):
    """The database cannot take writes now; the sender should retry later."""


class QueueFull(StorageUnavailable):
    """More rows are waiting than the queue allows: backpressure, not growth."""


class PartlyWritten(Exception):
    """The database failed (the `__cause__`) while rows refused together were being stored in
    parts, after some parts were committed (`written`): those rows are stored and must be
    counted; the others are not, and their requests are to be sent again."""

    def __init__(self, written: Written) -> None:
        super().__init__(f"{written.stored} rows stored before the database failed")
        self.written = written


class RolledBackTooOften(psycopg.OperationalError):
    """PostgreSQL rolled a write back WRITE_ATTEMPTS times in a row to break deadlocks with
    other writes of the same spans (the `__cause__`: the last rollback). The database is up:
    the write's requests are answered 503, to be sent again, and nothing else changes."""

    def __init__(self, attempts: int) -> None:
        super().__init__(
            f"the database rolled the write back on {attempts} attempt{'s' * (attempts != 1)}"
            " in a row, to break deadlocks with another write of the same spans"
        )
        self.attempts = attempts


# Errors about the rows themselves, not about the database being reachable: retrying the same
# rows would fail the same way. Told apart by SQLSTATE class, not by exception class: psycopg
# raises "index row size exceeds maximum" (54000) as OperationalError, like a lost connection.
# 22: data exception (a value out of range, text PostgreSQL refuses); 23: integrity constraint
# violation (a CHECK, no partition for the row); 54: program limit exceeded (a row too large).
ROW_ERROR_CLASSES = frozenset({"22", "23", "54"})
# Isolating refused rows by bisection costs about 2 log2(n) writes per refused row; past this
# many writes in one group the rows not yet isolated are refused too, so a batch full of bad
# rows costs a bounded time, not one transaction per row.
ISOLATION_MAX_WRITES = 256
# Transactions PostgreSQL rolled back to break a deadlock are written again, up to this many
# attempts in all (see _write_whole); past it, the database is treated as unavailable (503).
WRITE_ATTEMPTS = 5
_RETRY_PAUSE_SECONDS = (0.05, 0.2)  # before the next attempt, times the attempts made


def is_row_error(exc: BaseException) -> bool:
    """Whether `exc` is about the rows written (see ROW_ERROR_CLASSES), not the database."""
    if isinstance(exc, UnicodeError):
        return True
    sqlstate = exc.sqlstate if isinstance(exc, psycopg.Error) else None
    return sqlstate is not None and sqlstate[:2] in ROW_ERROR_CLASSES


@dataclass
class WriteResult:
    """What became of one request's calls."""

    stored: int  # newly stored
    duplicates: int  # already there before
    refused: list[tuple[str, str]] = field(default_factory=list)  # (span id, why) the database
    set_aside: int = 0  # another span of the same call was kept (exporter.ingest.duplicates)


@dataclass
class Written:
    """What one write did: the keys that were new (None: every row), the metric totals to
    apply, rows stored, and the rows the database refused (key -> why)."""

    new_keys: set[str] | None
    metrics: list[MetricTotals]
    stored: int
    refused: dict[str, str] = field(default_factory=dict)
    set_aside_keys: set[str] = field(default_factory=set)  # written now, set aside at once
    set_aside: int = 0  # spans set aside now (exporter.ingest.duplicates), these and older
    rolled_back: int = 0  # transactions PostgreSQL rolled back (deadlocks) and written again


_HOUR = timedelta(hours=1)
_MICROSECOND = timedelta(microseconds=1)


async def write_batch(conn: psycopg.AsyncConnection[Any], batches: Sequence[CallBatch]) -> Written:
    """Stores the batches' rows in one transaction, with the summaries they move. Idempotent:
    rows already stored (or set aside as another span's duplicate) are left alone and counted
    nowhere."""
    data = [batch.data for batch in batches]
    rows = sum(len(batch) for batch in batches)
    if all(b.totals is not None and b.metrics is not None for b in batches) and not any(
        _near_month_boundary(hour_of(start)) for b in batches for (start, *_) in b.totals or ()
    ):
        try:
            async with conn.transaction():
                await _copy(conn, _COPY_DIRECT, data)
                lookups = "\n".join(b.joined_lookups for b in batches)
                first = min(b.first for b in batches if b.first)
                last = max(b.last for b in batches if b.last)
                await settle(conn, _lease_totals(b.leases for b in batches))
                gone = await resolve(conn, lookups, first, last)
                if gone:  # two spans of one call: the summaries from the rows kept
                    keys = [key for b in batches for key in b.keys]
                    return await _keeping(conn, await facts_of(conn, keys), gone, set(keys))
                totals = merged(b.totals for b in batches if b.totals)
                await _summarize(conn, totals, first, last, rows)
            return Written(None, [b.metrics for b in batches if b.metrics], rows)
        except errors.UniqueViolation:
            pass  # a replay (that transaction is undone): only the new rows count
    async with conn.transaction():
        facts = await _insert_new_only(conn, data)
        await settle(conn, settlements((f.lease_id, f.lease_reserved) for f in facts if f.lease_id))
        written = {call_key(f.trace_id, f.span_id, f.timestamp) for f in facts}
        gone = []
        if written:
            starts = [f.timestamp for f in facts]
            lookups = lookups_of(written, (line for b in batches for line in b.lookups))
            gone = await resolve(conn, lookups, min(starts), max(starts))
        return await _keeping(conn, facts, gone, written)


async def _keeping(
    conn: psycopg.AsyncConnection[Any], facts: list[Any], gone: list[Any], written: set[str]
) -> Written:
    """The summaries moved by the rows just written (keys `written`, `facts` of them) that
    stayed, less the rows stored before that a span of their call replaced (`gone` holds
    both kinds). The Prometheus metrics move by the new rows kept only: counters never go
    down, and a call counted with its first span is not counted again."""
    gone_keys = {_key(g) for g in gone}
    kept = [f for f in facts if _key(f) not in gone_keys]
    replaced = [g for g in gone if _key(g) not in written]
    counted = counted_already(kept, replaced)
    totals = difference(ten_minute_totals(kept), ten_minute_totals(replaced))
    if totals:
        first = min((f.timestamp for f in kept), default=None)
        last = max((f.timestamp for f in kept), default=None)
        await _summarize(conn, totals, first, last, len(kept))
    return Written(
        {_key(f) for f in kept},
        [summarize_calls(f for f in kept if (f.trace_id, f.span_id) not in counted)],
        len(kept),
        set_aside_keys=written & {_key(g) for g in gone if g.set_aside},
        set_aside=sum(1 for g in gone if g.set_aside),
    )


def _lease_totals(parts: Iterable[dict[Any, Decimal] | None]) -> dict[Any, Decimal]:
    """The batches' lease settlements added up. Every row written (kept, or set aside as
    another span of its call) settles: its call's cost is in the spend either way."""
    totals: dict[Any, Decimal] = {}
    for part in parts:
        for lease, amount in (part or {}).items():
            totals[lease] = totals.get(lease, Decimal(0)) + amount
    return totals


def _key(row: Any) -> str:
    return call_key(row.trace_id, row.span_id, row.timestamp)


def _near_month_boundary(hour: datetime) -> bool:
    """Whether calls of this UTC hour are within CROSS_MONTH_WINDOW of another month."""
    return hour.month != (hour - CROSS_MONTH_WINDOW).month or (
        hour.month != (hour + _HOUR + CROSS_MONTH_WINDOW - _MICROSECOND).month
    )


async def _summarize(
    conn: psycopg.AsyncConnection[Any],
    totals: Totals,
    first: datetime | None,
    last: datetime | None,
    rows: int,
) -> None:
    """Moves the summaries by the ten-minute totals and announces the rows (if any), in one
    round trip."""
    async with conn.pipeline():
        for statement, columns in upserts(totals):
            await conn.execute(statement, columns)
        if rows and first is not None and last is not None:
            await conn.execute(_NOTIFY, (first.isoformat(), last.isoformat(), rows))


async def write_isolating(
    conn: psycopg.AsyncConnection[Any], batches: Sequence[CallBatch]
) -> Written:
    """Like write_batch, but a row the database refuses is split off (by bisection) and
    reported, so it cannot take the rest of its batch, or other requests' rows, down with it.
    Errors that are not about the rows (is_row_error) are raised."""
    return await _whole_or_in_halves(conn, batches, [ISOLATION_MAX_WRITES - 1])


async def _whole_or_in_halves(
    conn: psycopg.AsyncConnection[Any], batches: Sequence[CallBatch], writes_left: list[int]
) -> Written:
    """The batches written whole or, refused, their rows in halves (_isolate)."""
    try:
        return await _write_whole(conn, batches)
    except (psycopg.Error, UnicodeError) as exc:
        if not is_row_error(exc):
            raise
        reason = _reason(exc)
    rows = [row for batch in batches for row in batch.rows]
    lookups = [line for batch in batches for line in batch.lookups]
    months = frozenset(m for batch in batches for m in batch.months)
    return await _isolate(conn, rows, lookups, months, reason, writes_left)


async def _write_whole(conn: psycopg.AsyncConnection[Any], batches: Sequence[CallBatch]) -> Written:
    """write_batch, written again when PostgreSQL rolled its transaction back (nothing of it
    kept) to break a deadlock: two writers storing the same spans in different orders (a
    batch sent twice at once, reordered) each wait for the other's uncommitted key. The
    transaction PostgreSQL kept goes on meanwhile; written again at once, the same rows would
    likely cross it again, so each attempt waits a little longer first (with jitter)."""
    rolled_back = 0
    while True:
        try:
            written = await write_batch(conn, batches)
        except psycopg.OperationalError as exc:
            if not _rolled_back(exc):
                raise
            rolled_back += 1
            if rolled_back == WRITE_ATTEMPTS:
                raise RolledBackTooOften(rolled_back) from exc
            log.info("write rolled back by the database (%s): writing it again", exc.sqlstate)
            await asyncio.sleep(rolled_back * random.uniform(*_RETRY_PAUSE_SECONDS))
            continue
        written.rolled_back = rolled_back
        return written


def _rolled_back(exc: psycopg.Error) -> bool:
    """Whether PostgreSQL rolled the transaction back for it to be tried again (SQLSTATE class
    40: a deadlock, a serialization failure; psycopg raises the deadlock as OperationalError)."""
    return (exc.sqlstate or "")[:2] == "40"


def _reason(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


async def _isolate(
    conn: psycopg.AsyncConnection[Any],
    rows: list[bytes],
    lookups: list[str],
    months: frozenset[date],
    reason: str,
    writes_left: list[int],
) -> Written:
    """Stores what it can of rows the database refused together (`lookups`: theirs, as
    CallBatch holds them), in halves."""
    if len(rows) == 1:
        return Written(set(), [], 0, {key_of(lookups[0]): reason})
    middle = len(rows) // 2
    halves: list[Written] = []
    for part in (slice(None, middle), slice(middle, None)):
        if writes_left[0] <= 0:
            why = (
                f"not stored: the database refused rows written with it ({reason}), and"
                f" {ISOLATION_MAX_WRITES} writes did not isolate them"
            )
            halves.append(Written(set(), [], 0, dict.fromkeys(map(key_of, lookups[part]), why)))
            continue
        writes_left[0] -= 1
        half = CallBatch.packed(rows[part], lookups[part], months)
        try:
            halves.append(await _whole_or_in_halves(conn, [half], writes_left))
        except PartlyWritten as exc:  # committed deeper down, then the database failed
            raise PartlyWritten(_joined([*halves, exc.written])) from exc.__cause__
        except (psycopg.Error, UnicodeError) as exc:  # not about the rows
            if any(h.stored or h.set_aside or h.rolled_back for h in halves):
                raise PartlyWritten(_joined(halves)) from exc
            raise
    return _joined(halves)


def _joined(parts: list[Written]) -> Written:
    """What the parts of one write did, together."""
    return Written(
        set().union(*(p.new_keys or () for p in parts)),
        [totals for p in parts for totals in p.metrics],
        sum(p.stored for p in parts),
        {key: why for p in parts for key, why in p.refused.items()},
        set().union(*(p.set_aside_keys for p in parts)),
        sum(p.set_aside for p in parts),
        sum(p.rolled_back for p in parts),
    )


async def _copy(conn: psycopg.AsyncConnection[Any], statement: str, data: list[bytes]) -> None:
    """COPY of encoded tuples (CallBatch.data), as one binary COPY stream."""
    async with conn.cursor().copy(statement) as copy:
        await copy.write(b"".join((BINARY_SIGNATURE, *data, BINARY_TRAILER)))


async def _insert_new_only(conn: psycopg.AsyncConnection[Any], data: list[bytes]) -> list[Any]:
    await conn.execute(_CREATE_STAGE)
    await _copy(conn, _COPY_STAGE, data)
    cursor = conn.cursor(row_factory=namedtuple_row)
    facts = await (await cursor.execute(_INSERT_NEW, {"window": CROSS_MONTH_WINDOW})).fetchall()
    await conn.execute("TRUNCATE nexus_stage")
    return facts
