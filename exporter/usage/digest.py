"""The daily digest: yesterday's spend, tokens, calls, top operations and models, budget state,
read from the database and sent to Telegram (`nexus-otel digest --send`, and daily by serve)."""

from __future__ import annotations

import asyncio
import html
import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from exporter.alerting import TelegramError, send_telegram
from exporter.core.settings import Settings
from exporter.usage.periods import day_bounds

log = logging.getLogger(__name__)
TOP = 3
STATE_ICONS = {"ok": "🟢", "warning": "🟠", "exceeded": "🔴"}


@dataclass(frozen=True)
class Ranked:
    name: str
    calls: int
    cost_usd: Decimal


@dataclass(frozen=True)
class BudgetState:
    name: str
    period: str
    spend_usd: Decimal
    amount_usd: Decimal
    usage_pct: Decimal
    state: str


@dataclass(frozen=True)
class Digest:
    day: date
    timezone: str
    calls: int
    failed_calls: int
    unpriced_calls: int
    cost_usd: Decimal
    input_tokens: int
    output_tokens: int
    top_operations: list[Ranked]
    top_models: list[Ranked]
    budgets: list[BudgetState]


def yesterday(zone: str, now: datetime | None = None) -> date:
    return ((now or datetime.now(ZoneInfo(zone))).astimezone(ZoneInfo(zone))).date() - timedelta(
        days=1
    )


def build_digest(database_url: str, day: date, zone: str) -> Digest:
    with psycopg.connect(database_url) as conn:
        start, end = day_bounds(conn, day, zone)
        window = {"start": start, "end": end}
        totals = conn.execute(
            """SELECT count(*), count(*) FILTER (WHERE NOT success),
                      count(*) FILTER (WHERE cost_usd IS NULL), coalesce(sum(cost_usd), 0),
                      coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0)
               FROM api_calls WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s""",
            window,
        ).fetchone()
        assert totals is not None
        operations = _top(conn, "operation", window)
        models = _top(conn, "model || ' (' || provider || ')'", window)
        budgets = conn.execute(
            """SELECT name, period, spend_usd, amount_usd, usage_pct, state
               FROM v_budget_status ORDER BY usage_pct DESC, name"""
        ).fetchall()
    return Digest(
        day,
        zone,
        int(totals[0]),
        int(totals[1]),
        int(totals[2]),
        Decimal(totals[3]),
        int(totals[4]),
        int(totals[5]),
        operations,
        models,
        [BudgetState(*row) for row in budgets],
    )


def _top(conn: psycopg.Connection[Any], column: str, window: dict[str, Any]) -> list[Ranked]:
    rows = conn.execute(
        f"""SELECT {column} AS name, count(*), coalesce(sum(cost_usd), 0) AS cost
            FROM api_calls WHERE "timestamp" >= %(start)s AND "timestamp" < %(end)s
            GROUP BY 1 ORDER BY cost DESC, count(*) DESC, name LIMIT {TOP}""",
        window,
    ).fetchall()
    return [Ranked(str(name), int(calls), Decimal(cost)) for name, calls, cost in rows]


def usd(amount: Decimal) -> str:
    """Dollars with cents, or four decimals for sub-dollar amounts that would read as $0.00."""
    if amount == 0 or abs(amount) >= 1:
        return f"${amount:,.2f}"
    return f"${amount:,.4f}"


def _calls(count: int) -> str:
    return f"{count:,} call" if count == 1 else f"{count:,} calls"


def render_digest(digest: Digest) -> str:
    """The digest as a Telegram HTML message."""
    e = html.escape
    lines = [
        f"📊 <b>LLM digest for {digest.day:%a %d %b %Y}</b> ({e(digest.timezone)})",
        f"Spend: <b>{usd(digest.cost_usd)}</b> · {_calls(digest.calls)} "
        f"({digest.failed_calls:,} failed, {digest.unpriced_calls:,} unpriced)",
        f"Tokens: {digest.input_tokens:,} in · {digest.output_tokens:,} out",
    ]
    for title, ranked in (
        ("Top operations", digest.top_operations),
        ("Top models", digest.top_models),
    ):
        if ranked:
            lines += ["", f"<b>{title}</b>"]
            lines += [
                f"{i}. {e(r.name)} — {usd(r.cost_usd)} · {_calls(r.calls)}"
                for i, r in enumerate(ranked, 1)
            ]
    if digest.budgets:
        lines += ["", "<b>Budgets now</b>"]
        lines += [
            f"{STATE_ICONS.get(b.state, '•')} {e(b.name)} ({e(b.period)}): {usd(b.spend_usd)} "
            f"of {usd(b.amount_usd)} ({b.usage_pct:.0f}%)"
            for b in digest.budgets
        ]
    if digest.calls == 0:
        lines.insert(1, "No LLM calls were stored that day.")
    return "\n".join(lines)


def send_digest(settings: Settings, database_url: str, day: date | None = None) -> str:
    """Builds yesterday's (or `day`'s) digest and sends it to Telegram; returns its text."""
    zone = settings.timezone
    text = render_digest(build_digest(database_url, day or yesterday(zone), zone))
    send_telegram(settings, text)
    return text


def seconds_until(at: datetime, zone: str, now: datetime) -> float:
    """Seconds from `now` to the next `at.time()` in `zone` (today's if still ahead)."""
    local = now.astimezone(ZoneInfo(zone))
    target = local.replace(hour=at.hour, minute=at.minute, second=at.second, microsecond=0)
    if target <= local:
        target = datetime.combine(local.date() + timedelta(days=1), at.time(), local.tzinfo)
    # Same-zone subtraction is wall-clock time: compare in UTC to count a DST hour right.
    return (target.astimezone(UTC) - local.astimezone(UTC)).total_seconds()


async def run_daily_digest(settings: Settings, database_url: str) -> None:
    """Sends the digest every day at settings.digest_time (local time in settings.timezone)."""
    at = datetime.combine(date.today(), settings.digest_time)
    while True:
        await asyncio.sleep(seconds_until(at, settings.timezone, datetime.now(UTC)))
        try:
            await asyncio.to_thread(send_digest, settings, database_url)
            log.info("daily digest sent to Telegram")
        except (TelegramError, psycopg.Error) as exc:
            log.warning("daily digest not sent: %s", exc)
        await asyncio.sleep(1)  # past the moment: never twice for one day
