"""Budgets read their periods as the range totals do (migration 015): whole hours and whole ten
minutes from the summaries, at most five minutes of raw rows at each end; and their spend, calls
and the moment they were exceeded equal the raw rows' exactly, in every zone and scope."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from exporter.ingest.summaries import TEN_MINUTES, floor_to
from exporter.usage.totals import _rest_of_ten_minutes, _ten_minutes_of, split_range
from tests.api.conftest import MODEL_A, MODEL_B, call_spec, sending_to
from tests.support import query

DAY = datetime(2026, 11, 16, tzinfo=UTC)  # a Monday: weekly periods begin at its local start
MICROSECOND = timedelta(microseconds=1)
FIVE_MINUTES = timedelta(minutes=5)
_PIECES = (
    "SELECT r.i, p.kind, p.piece_start, p.piece_end"
    " FROM unnest(%s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY AS r(a, b, i)"
    " CROSS JOIN LATERAL nexus_usage_pieces(r.a, r.b) p ORDER BY r.i, p.piece_start"
)


def _python_pieces(start: datetime, end: datetime) -> list[tuple[str, datetime, datetime]]:
    """The cut of exporter.usage.totals, as (kind, start, end) in order."""
    if start >= end:
        return []
    hours, edges = split_range(start, end)
    tens, raw = _ten_minutes_of(edges)
    rest, short = _rest_of_ten_minutes(raw)
    long_ = [p for p in raw if p not in short]
    assert len(rest) == len(long_)
    pieces = [("h", *hours)] if hours[0] < hours[1] else []
    pieces += [("t", *t) for t in tens] + [("e", *p) for p in short] + [("c", *p) for p in long_]
    return sorted(pieces, key=lambda p: p[1])


def _ranges(rng: random.Random, count: int) -> list[tuple[datetime, datetime]]:
    """Ranges to the microsecond, from none at all to two days; and the awkward ones."""
    ranges = []
    for _ in range(count):
        start = DAY + timedelta(microseconds=rng.randrange(3 * 86_400 * 10**6))
        if rng.random() < 0.3:  # on a ten-minute or hour boundary
            start = floor_to(start, rng.choice((TEN_MINUTES, timedelta(hours=1))))
        length = rng.choice((1, 10**6, 300 * 10**6, 600 * 10**6, 2 * 86_400 * 10**6))
        end = start + timedelta(microseconds=rng.randrange(0, length + 1))
        if rng.random() < 0.2:
            end = floor_to(end, rng.choice((TEN_MINUTES, timedelta(hours=1))))
        ranges.append((start, end))
    t = DAY + timedelta(hours=12, minutes=10)
    ranges += [
        (t, t),  # empty
        (t, t - MICROSECOND),  # backwards
        (t, t + FIVE_MINUTES),  # five minutes exactly: read as it is
        (t, t + FIVE_MINUTES + MICROSECOND),  # a microsecond more: its ten minutes less the rest
        (t - MICROSECOND, t + MICROSECOND),  # across a boundary
        (DAY, DAY + timedelta(days=1)),  # whole hours only
    ]
    return ranges


@pytest.mark.parametrize("seed", range(3))
def test_pieces_are_the_totals_cut_and_read_five_minutes_of_raw_rows_at_most(
    database_url: str, seed: int
) -> None:
    """nexus_usage_pieces cuts every range exactly as the range totals do, its pieces cover the
    range without overlap, and the raw rows read (a piece, or the rest of its ten minutes) are
    five minutes at most at either end."""
    ranges = _ranges(random.Random(seed), 2000)
    rows = query(database_url, _PIECES, ([a for a, _ in ranges], [b for _, b in ranges]))
    by_range: dict[int, list[tuple[str, datetime, datetime]]] = {}
    for i, kind, a, b in rows:
        by_range.setdefault(i - 1, []).append((kind, a, b))
    for i, (start, end) in enumerate(ranges):
        pieces = by_range.get(i, [])
        assert pieces == _python_pieces(start, end), (start, end)
        if start < end:
            assert [p[1] for p in pieces[1:]] == [p[2] for p in pieces[:-1]], (start, end)
            assert (pieces[0][1], pieces[-1][2]) == (start, end)
        raw_read = [
            b - a if kind == "e" else TEN_MINUTES - (b - a)
            for kind, a, b in pieces
            if kind in ("e", "c")
        ]
        assert len(raw_read) <= 2 and all(t <= FIVE_MINUTES for t in raw_read), (start, end)
        for kind, a, b in pieces:
            unit = {"h": timedelta(hours=1), "t": TEN_MINUTES}.get(kind)
            if unit:
                assert floor_to(a, unit) == a and floor_to(b, unit) == b, (kind, a, b)
            else:  # within one ten minutes
                assert floor_to(a, TEN_MINUTES) == floor_to(b - MICROSECOND, TEN_MINUTES)


ZONES = ("UTC", "Asia/Kolkata", "Asia/Kathmandu", "America/New_York", "Australia/Lord_Howe")
SCOPES: tuple[dict[str, str], ...] = (
    {},
    {"provider": "anthropic"},
    {"model": MODEL_B},
    {"service_name": "carousel-bot", "operation": "caption"},
    {"provider": "openai", "model": MODEL_A, "operation": "fact_generation"},
)


@pytest.fixture(scope="module")
def calls(database_url: str) -> Iterator[None]:
    """900 calls over three days at random microseconds through the real ingest path (so the
    summaries are the writer's), of two services, providers, models and operations, one in
    eleven of unknown price; and budgets of every period, zone and scope above."""
    rng = random.Random(7)
    with sending_to(database_url) as send:
        for service in ("carousel-bot", "digest"):
            specs = [
                call_spec(
                    DAY
                    - timedelta(days=1)
                    + timedelta(microseconds=rng.randrange(3 * 86_400 * 10**6)),
                    None if rng.random() < 1 / 11 else f"0.{rng.randrange(1, 10**6):06d}",
                    provider=rng.choice(("openai", "anthropic")),
                    model=rng.choice((MODEL_A, MODEL_B)),
                    operation=rng.choice(("fact_generation", "caption")),
                )
                for _ in range(450)
            ]
            for i in range(0, len(specs), 150):
                send(specs[i : i + 150], service_name=service)
    with psycopg.connect(database_url, autocommit=True) as conn:
        for n, (period, zone, scope) in enumerate(
            (p, z, s) for p in ("daily", "weekly", "monthly") for z in ZONES for s in SCOPES
        ):
            columns = ["name", "period_type", "timezone", "budget_usd", *scope]
            values = [f"b{n}", period, zone, Decimal(5 + n % 7 * 9), *scope.values()]
            conn.execute(
                f"INSERT INTO cost_budgets ({', '.join(columns)})"  # type: ignore[arg-type]
                f" VALUES ({', '.join(['%s'] * len(values))})",
                values,
            )
    yield


_RAW_SPEND = """
SELECT b.id, coalesce(sum(coalesce(a.cost_usd, 0)), 0), count(a.*),
       count(a.*) FILTER (WHERE a.cost_usd IS NULL)
FROM cost_budgets b
CROSS JOIN LATERAL nexus_period_bounds(b.period_type, b.timezone, %(at)s) p
LEFT JOIN api_calls a ON a."timestamp" >= p.period_start
    AND a."timestamp" < least(%(at)s, p.period_end)
    AND (b.service_name IS NULL OR a.service_name = b.service_name)
    AND (b.provider IS NULL OR a.provider = b.provider)
    AND (b.model IS NULL OR a.model = b.model)
    AND (b.operation IS NULL OR a.operation = b.operation)
GROUP BY b.id ORDER BY b.id
"""
_RAW_SCOPE = """
      AND (%(service_name)s::text IS NULL OR a.service_name = %(service_name)s)
      AND (%(provider)s::text IS NULL OR a.provider = %(provider)s)
      AND (%(model)s::text IS NULL OR a.model = %(model)s)
      AND (%(operation)s::text IS NULL OR a.operation = %(operation)s)
"""
_RAW_TOTAL = (
    'SELECT coalesce(sum(a.cost_usd), 0) FROM api_calls a WHERE a."timestamp" >= %(from)s'
    f' AND a."timestamp" < %(until)s{_RAW_SCOPE}'
)
_MICRO_USD = Decimal("0.000001")
_RAW_EXCEEDED_AT = f"""
SELECT min(c."timestamp") FROM (
    SELECT a."timestamp", sum(a.cost_usd) OVER (ORDER BY a."timestamp") AS spent
    FROM api_calls a
    WHERE a."timestamp" >= %(from)s AND a."timestamp" < %(until)s AND a.cost_usd IS NOT NULL
    {_RAW_SCOPE}
) c WHERE c.spent >= %(amount)s
"""


def _moments(rng: random.Random) -> list[datetime]:
    """Instants across the calls' days: random microseconds, and a few on boundaries."""
    moments = [DAY + timedelta(microseconds=rng.randrange(2 * 86_400 * 10**6)) for _ in range(6)]
    return [
        *moments,
        DAY + timedelta(hours=18, minutes=25),  # on a ten-minute mark
        DAY + timedelta(hours=18, minutes=35, microseconds=1),
        DAY + timedelta(hours=19),  # on an hour
        DAY + timedelta(hours=5, minutes=44, seconds=59),  # near Kathmandu's day start
    ]


@pytest.mark.parametrize("seed", range(2))
def test_budget_spend_and_status_equal_the_raw_rows(
    database_url: str, calls: None, seed: int
) -> None:
    """Every budget's spend, calls and calls of unknown price at any instant equal the raw
    rows of its period so far; the forecast's hour before too (nexus_budget_status)."""
    for at in _moments(random.Random(seed)):
        spend = query(
            database_url,
            "SELECT id, spend_usd, calls, unpriced_calls FROM nexus_budget_spend(%s) ORDER BY id",
            (at,),
        )
        raw = query(database_url, _RAW_SPEND, {"at": at})
        assert spend == raw, at
        assert any(row[2] for row in raw), "no period with calls tests nothing"
        status = query(
            database_url,
            "SELECT id, spend_usd, forecast_usd FROM nexus_budget_status(%s, NULL, false)"
            " ORDER BY id",
            (at,),
        )
        assert [s[:2] for s in status] == [r[:2] for r in raw], at


@pytest.mark.parametrize("seed", range(2))
def test_exceeded_at_is_the_call_that_took_the_spend_to_the_amount(
    database_url: str, calls: None, seed: int
) -> None:
    """For any range and amount, the moment a scope's spend first reached the amount equals the
    raw rows' running sum, whether it falls in a whole hour, a whole ten minutes or an edge."""
    rng = random.Random(100 + seed)
    checked = found = 0
    for _ in range(60):
        start = DAY - timedelta(days=1) + timedelta(microseconds=rng.randrange(86_400 * 10**6))
        until = start + timedelta(microseconds=rng.randrange(2 * 86_400 * 10**6))
        scope: dict[str, str | None] = dict.fromkeys(("service_name", "provider", "model"))
        scope |= {"operation": None, **rng.choice(SCOPES)}
        args: dict[str, Any] = {"from": start, "until": until, "amount": 0, **scope}
        total = query(database_url, _RAW_TOTAL, args)[0][0]
        # Most amounts reached somewhere inside the range, some never.
        args["amount"] = (total * Decimal(rng.randrange(1, 1300)) / 1000).quantize(_MICRO_USD)
        ours = query(
            database_url,
            "SELECT nexus_budget_exceeded_at(%(from)s, %(until)s, %(amount)s,"
            " %(service_name)s, %(provider)s, %(model)s, %(operation)s)",
            args,
        )
        assert ours == query(database_url, _RAW_EXCEEDED_AT, args), args
        checked, found = checked + 1, found + (ours[0][0] is not None)
    assert 10 < found < checked, "both outcomes must be tested"


@pytest.mark.parametrize(
    ("minute", "bucket", "moved"),
    [
        (47, 20, True),  # a whole ten minutes of the partial hour: from its summary
        (47, 40, True),  # seven minutes into ten: their summary less the rest of them
        (43, 40, False),  # three minutes into ten: raw rows
        (47, -60, False),  # within a whole hour: from the hourly summary
    ],
)
def test_budgets_read_whole_ten_minutes_from_their_summary(
    database_url: str, calls: None, minute: int, bucket: int, moved: bool
) -> None:
    """Where a daily UTC budget's spend comes from at HH:`minute`: a dollar added to the
    ten-minute summary `bucket` minutes past the hour (not to the raw rows, in a transaction
    rolled back) shows in the spend exactly where that summary is read."""
    hour = DAY + timedelta(hours=18)
    at = hour + timedelta(minutes=minute)
    spend = (
        "SELECT s.spend_usd FROM nexus_budget_spend(%s) s JOIN cost_budgets b ON b.id = s.id"
        " WHERE b.name = 'b0'"  # daily, UTC, any scope
    )
    with psycopg.connect(database_url) as conn:
        before = conn.execute(spend, (at,)).fetchone()
        changed = conn.execute(
            "UPDATE ten_minute_usage_summary SET cost_usd = cost_usd + 1"
            " WHERE ctid = (SELECT ctid FROM ten_minute_usage_summary WHERE bucket = %s LIMIT 1)",
            (hour + timedelta(minutes=bucket),),
        ).rowcount
        after = conn.execute(spend, (at,)).fetchone()
        conn.rollback()
    assert changed == 1 and before and after
    assert after[0] - before[0] == (1 if moved else 0)


def test_budget_reads_never_scan_a_partition_of_calls(database_url: str) -> None:
    """The raw pieces' bounds are computed in the statement, so the planner cannot tell they
    are minutes long: at 10 million calls it scanned a whole monthly partition for them (1 to
    3 s per budget read; `make bench ARGS="--only api"`). The functions that read them run
    without sequential scans."""
    settings = query(
        database_url,
        "SELECT proname, proconfig FROM pg_proc"
        " WHERE proname IN ('nexus_budget_spend', 'nexus_budget_exceeded_at') ORDER BY 1",
    )
    assert settings == [
        ("nexus_budget_exceeded_at", ["enable_seqscan=off"]),
        ("nexus_budget_spend", ["enable_seqscan=off"]),
    ]
