"""hourly_performance_summary, kept by the database from the rows each statement inserted: a
replayed call counts once, a rolled-back write leaves nothing, and the longest texts the exporter
stores (multi-byte, every one at its bound) still fit its key."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from exporter.core.db import ensure_partitions_around
from exporter.ingest.normalize import (
    MAX_ERROR_TYPE,
    MAX_MODEL,
    MAX_OPERATION,
    MAX_PROVIDER,
    MAX_SERVICE_NAME,
)

pytestmark = pytest.mark.e2e
_RANDOM = random.Random(23)


def _wide(length: int) -> str:
    """Characters of four bytes in UTF-8 (the widest), drawn at random so they do not compress."""
    return "".join(chr(_RANDOM.randrange(0x20000, 0x2A6DF)) for _ in range(length))


_INSERT = """
INSERT INTO api_calls (trace_id, span_id, "timestamp", service_name, provider, model,
    gen_ai_operation, operation, correlation_id, input_tokens, output_tokens, total_tokens,
    cost_usd, duration_ms, time_to_first_chunk_ms, success, error_type, usage_source)
VALUES (%(trace)s, %(span)s, %(at)s, %(service)s, %(provider)s, %(model)s, 'chat',
    %(operation)s, 'item-1', 100, %(output)s, 100 + %(output)s, 0.25, 1500, %(ttfc)s,
    %(success)s, %(error)s, 'response')
ON CONFLICT DO NOTHING
"""


def _call(span: str, **changes: Any) -> dict[str, Any]:
    return {
        "trace": "a" * 32, "span": span, "at": datetime(2026, 12, 6, 10, 30, tzinfo=UTC),
        "service": "bot", "provider": "groq", "model": "m", "operation": "caption",
        "output": 50, "ttfc": 120.0, "success": True, "error": None, **changes,
    }  # fmt: skip


def _summary(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT error_type, ttfc_bucket_ms, calls, generated_tokens, generation_ms, content_calls,"
        " content_priced, content_cost_usd FROM hourly_performance_summary ORDER BY 1, 2"
    ).fetchall()


def test_replays_count_once_and_rollbacks_leave_nothing(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE api_calls, hourly_performance_summary")
        ensure_partitions_around(conn, datetime(2026, 12, 6).date())
        conn.execute(_INSERT, _call("0000000000000001"))
        conn.execute(_INSERT, _call("0000000000000001"))  # the same call again
        conn.execute(_INSERT, _call("0000000000000002", ttfc=None, success=False, error="Boom"))
        with pytest.raises(psycopg.errors.DivisionByZero), conn.transaction():
            conn.execute(_INSERT, _call("0000000000000003"))
            conn.execute("SELECT 1 / 0")
        assert _summary(conn) == [
            # succeeded: 50 tokens in 1,500 - 120 ms, first chunk in the 100-125 ms bucket
            ("", 100.0, 1, 50, 1380.0, 1, 1, 0.25),
            ("Boom", -1.0, 1, 0, 0.0, 1, 1, 0.25),
        ]


def test_the_longest_texts_fit_the_summary_key(database_url: str) -> None:
    longest = _call(
        "0000000000000004", success=False, service=_wide(MAX_SERVICE_NAME),
        provider=_wide(MAX_PROVIDER), model=_wide(MAX_MODEL), operation=_wide(MAX_OPERATION),
        error=_wide(MAX_ERROR_TYPE),
    )  # fmt: skip
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("TRUNCATE api_calls, hourly_performance_summary")
        ensure_partitions_around(conn, datetime(2026, 12, 6).date())
        conn.execute(_INSERT, longest)
        conn.execute(_INSERT, {**longest, "span": "0000000000000005"})
        (row,) = _summary(conn)
        assert row[:3] == (longest["error"], 100.0, 2)
