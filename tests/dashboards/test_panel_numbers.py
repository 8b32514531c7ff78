"""Each dashboard panel's numbers equal the same numbers computed here, in Python, from the rows
the stack stored (read back from api_calls) and the content it seeded: a panel summing with the
wrong aggregate, inverting a ratio or reading the wrong hours fails, however much data it shows.

Time ranges as Grafana sends them: "today" panels count from UTC midnight to now; hourly panels
count every row of each hour from the one holding the range's start (they read hourly summaries).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from nexus_otel.attributes import BUDGET_EXCEEDED_ERROR
from tests.dashboards.board_runner import DASHBOARD_SPAN, SCRAPE, Result, Stack, run_board, stack
from tests.dashboards.grafana_expand import TimeRange, parse_interval

pytestmark = pytest.mark.e2e
__all__ = ["stack"]  # the fixture

# Lower bounds of the time-to-first-chunk buckets in ms, as the performance summary documents
# them (migrations/007_performance_summary.sql); the last bucket is open.
TTFC_BOUNDS = [0, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800,
               900, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000, 5000, 7500, 10000, 15000,
               20000, 30000, 60000]  # fmt: skip
# Ratios come back as PostgreSQL numeric divisions (rounded to 16 or more significant digits) or
# float8: equal when within this of the exact fraction. Sums of money and counts are exact.
RATIO_DIGITS = Fraction(1, 10**12)
Row = dict[str, Any]


@dataclass(frozen=True)
class Stored:
    calls: list[Row]
    now: datetime
    window: TimeRange  # the dashboards' range

    def in_hours(self, time_range: TimeRange | None = None) -> list[Row]:
        """Rows of every hour from the one holding the range's start to the range's end."""
        tr = time_range or self.window
        first = _hour(tr.start)
        return [c for c in self.calls if first <= _hour(c["timestamp"]) <= tr.end]

    def between(self) -> list[Row]:
        return [c for c in self.calls if self.window.start <= c["timestamp"] <= self.window.end]


def _hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _same_ratio(value: Any, exact: Fraction | None) -> bool:
    if value is None or exact is None:
        return value is None and exact is None
    return abs(Fraction(str(value)) - exact) <= RATIO_DIGITS * max(1, abs(exact))


def _ratio(numerator: Any, denominator: Any) -> Fraction | None:
    if not denominator:
        return None
    return Fraction(str(numerator)) / Fraction(str(denominator))


def _cost(rows: Iterable[Row]) -> Decimal | None:
    """Spend of priced calls; None when no call was priced (never $0)."""
    priced = [c["cost_usd"] for c in rows if c["cost_usd"] is not None]
    return sum(priced, Decimal(0)) if priced else None


def _by_time(result: Result, column: str) -> dict[tuple[int, str], Any]:
    """A time-series panel's values by (epoch seconds, metric)."""
    return {(int(r["time"]), r["metric"]): r[column] for r in result.rows}


def _stored(stack: Stack, now: datetime) -> Stored:
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        calls = conn.execute("SELECT * FROM api_calls").fetchall()
    return Stored(calls, now, TimeRange.last(DASHBOARD_SPAN, now, SCRAPE))


def _boards(stack: Stack, *names: str) -> tuple[Stored, dict[str, Result]]:
    """The boards' panel results and the stored rows, at one `now`."""
    now = datetime.now(UTC)
    results: dict[str, Result] = {}
    for name in names:
        results.update(run_board(name, stack, {}, now=now))
    return _stored(stack, now), results


# --- overview -----------------------------------------------------------------------------------


def _today_vs_yesterday(
    stored: Stored, value: Callable[[list[Row]], Any]
) -> tuple[Any, Fraction | None]:
    midnight = stored.now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = [c for c in stored.calls if c["timestamp"] >= midnight]
    yesterday = [
        c
        for c in stored.calls
        if midnight - timedelta(days=1) <= c["timestamp"] < stored.now - timedelta(days=1)
    ]
    now_value, then = value(today), value(yesterday)
    change = _ratio(100 * ((now_value or 0) - then), then) if then is not None else None
    return now_value or 0, change


def _assert_budget_usage(stored: Stored, shown: dict[str, Any]) -> None:
    """Each budget seeded by the stack: its spend in the current period over its limit."""
    midnight = stored.now.replace(hour=0, minute=0, second=0, microsecond=0)
    month = midnight.replace(day=1)
    anthropic = [c for c in stored.calls if c["provider"] == "anthropic"]
    budgets = {  # as seeded: (spend in the current period, limit)
        "anthropic-monthly": (_cost(c for c in anthropic if c["timestamp"] >= month), 20),
        "daily-total": (_cost(c for c in stored.calls if c["timestamp"] >= midnight), "0.05"),
    }
    assert shown.keys() == budgets.keys()
    for name, (spend, limit) in budgets.items():
        assert _same_ratio(shown[name], _ratio(spend, limit)), name


def test_overview_numbers_equal_the_stored_rows(stack: Stack) -> None:
    stored, results = _boards(stack, "overview")
    headline = {
        "Tokens today": lambda rows: sum(c["total_tokens"] for c in rows),
        "Cost today": _cost,
        "Calls today": len,
    }
    for title, value in headline.items():
        expected, change = _today_vs_yesterday(stored, value)
        (row,) = results[f"{title}/A"].rows
        assert row[title] == expected, title
        assert _same_ratio(row["vs yesterday"], change), (title, row, change)

    hours = stored.in_hours()
    (rate,) = results["Success rate/A"].rows
    successes = sum(1 for c in hours if c["success"])
    assert _same_ratio(rate["Success rate"], _ratio(successes, len(hours))), rate

    day = TimeRange.last(parse_interval("24h"), stored.now, SCRAPE)
    tokens: dict[tuple[int, str], int] = defaultdict(int)
    for c in stored.in_hours(day):
        tokens[(_epoch(_hour(c["timestamp"])), c["provider"])] += (
            c["input_tokens"] + c["output_tokens"]
        )
    shown = {
        (int(r["time"]), r["metric"]): r["tokens"]
        for r in results["Token usage per provider (24 h)/A"].rows
    }
    assert shown == tokens

    recent = sorted(  # the 50 latest (fewer are stored in the range)
        (c["timestamp"], c["provider"], c["model"], c["operation"] or None, c["total_tokens"],
         c["cost_usd"], c["duration_ms"],
         "ok" if c["success"] else c["error_type"] or "error")
        for c in stored.between()
    )[-50:]  # fmt: skip
    shown_calls = [tuple(r.values()) for r in results["Recent calls/A"].rows]
    assert sorted(shown_calls, key=repr) == sorted(recent, key=repr)

    shown_budgets = {r["Budget"]: r["Used"] for r in results["Budgets/A"].rows}
    _assert_budget_usage(stored, shown_budgets)

    history = [
        (r["Alert"], r["Status"], r["Severity"], r["Summary"])
        for r in results["Alert history/A"].rows
    ]
    assert history == [("LLMBudgetWarning", "firing", "warning", "daily-total at 80 %")]

    # Prometheus: a provider whose stored calls all succeeded shows exactly 1 at every point;
    # one with failures among them shows less than 1 wherever a failure is in the window. Calls
    # a budget blocked never reached the provider: they are no failure of it.
    failing = {
        c["provider"]
        for c in stored.calls
        if not c["success"] and c["error_type"] != BUDGET_EXCEEDED_ERROR
    }
    for series in results["Success rate per provider/A"].rows:
        provider = series["metric"]["gen_ai_provider_name"]
        # No call in a window is 0 / 0: NaN, a gap in the chart.
        points = {float(v) for _, v in series["values"]}
        points = {p for p in points if not math.isnan(p)}
        if provider in failing:
            assert min(points) < 1, provider
        else:
            assert points == {1.0}, provider


# --- costs --------------------------------------------------------------------------------------


def test_cost_numbers_equal_the_stored_rows(stack: Stack) -> None:
    stored, results = _boards(stack, "costs")
    hours = stored.in_hours()
    priced = [c for c in hours if c["cost_usd"] is not None]
    assert results["Spend/A"].rows == [{"Spend": _cost(hours)}]
    assert results["Priced calls/A"].rows == [{"Priced": len(priced)}]
    assert results["Unpriced calls/A"].rows == [{"Unpriced": len(hours) - len(priced)}]
    (average,) = results["Average cost per priced call/A"].rows
    assert _same_ratio(average["Average"], _ratio(_cost(hours), len(priced)))

    for column, label in (("provider", "provider"), ("model", "model"),
                          ("operation", "operation"), ("service_name", "service")):  # fmt: skip
        groups: dict[str, list[Row]] = defaultdict(list)
        for c in hours:
            groups[c[column] or "(none)"].append(c)
        shown = {r[label]: r["Spend"] for r in results[f"Spend by {label}/A"].rows}
        assert shown == {key: _cost(rows) for key, rows in groups.items()}, label

    per_hour: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for c in hours:
        per_hour[(_epoch(_hour(c["timestamp"])), c["provider"])].append(c)
    shown_hours = _by_time(results["Spend per provider/A"], "spend")
    assert shown_hours == {key: _cost(rows) for key, rows in per_hour.items()}

    burn = sorted(results["Budget burn (current period)/A"].rows, key=lambda r: r["time"])
    _assert_budget_usage(stored, {r["metric"]: r["used"] for r in burn})  # the latest point

    in_range = [c for c in stored.between() if c["cost_usd"] is not None]
    costliest = sorted((c["cost_usd"] for c in in_range), reverse=True)[:20]
    expensive = results["Most expensive calls/A"].rows
    assert [r["Cost"] for r in expensive] == costliest
    keys = {(c["timestamp"], c["model"], c["cost_usd"], c["correlation_id"]) for c in in_range}
    assert all((r["Time"], r["Model"], r["Cost"], r["Correlation"]) in keys for r in expensive)


# --- performance --------------------------------------------------------------------------------


def _quantile(q: float, values: list[float]) -> float:
    """histogram_quantile over TTFC_BOUNDS: the bucket holding rank q * n, linear inside it."""
    counts = [0] * len(TTFC_BOUNDS)
    for value in values:
        counts[max(i for i, bound in enumerate(TTFC_BOUNDS) if bound <= value)] += 1
    rank, before = q * len(values), 0
    for i, count in enumerate(counts):
        if count and before + count >= rank:
            if i == len(TTFC_BOUNDS) - 1:
                return TTFC_BOUNDS[i]
            low, high = TTFC_BOUNDS[i], TTFC_BOUNDS[i + 1]
            return low + (high - low) * (rank - before) / count
        before += count
    raise AssertionError("no values")


def test_performance_numbers_equal_the_stored_rows(stack: Stack) -> None:
    stored, results = _boards(stack, "performance")
    hours = stored.in_hours()

    generating = [c for c in hours if c["success"] and c["output_tokens"] > 0]
    speed: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for c in generating:
        speed[(_epoch(_hour(c["timestamp"])), c["model"])].append(c)
    shown = _by_time(results["Generation speed by model/A"], "tokens_per_second")
    assert shown.keys() == speed.keys()
    for key, rows in speed.items():
        seconds = (
            sum(
                Fraction(c["duration_ms"]) - Fraction(c["time_to_first_chunk_ms"] or 0)
                for c in rows
            )
            / 1000
        )
        assert _same_ratio(shown[key], _ratio(sum(c["output_tokens"] for c in rows), seconds)), key

    first_chunks: dict[int, list[float]] = defaultdict(list)
    for c in hours:
        if c["time_to_first_chunk_ms"] is not None:
            first_chunks[_epoch(_hour(c["timestamp"]))].append(c["time_to_first_chunk_ms"])
    rows = results["Time to first chunk/A"].rows
    assert {int(r["time"]) for r in rows} == first_chunks.keys()
    for r in rows:
        values = first_chunks[int(r["time"])]
        for q, column in ((0.5, "p50"), (0.95, "p95")):
            assert _same_ratio(r[column], Fraction(_quantile(q, values))), (column, values)

    errors: dict[tuple[str, str, str], list[Row]] = defaultdict(list)
    for c in hours:
        if not c["success"]:
            errors[(c["provider"], c["model"], c["error_type"] or "error")].append(c)
    shown_errors = {
        (r["Provider"], r["Model"], r["Error"]): (r["Calls"], r["Last seen"])
        for r in results["Errors by type/A"].rows
    }
    assert shown_errors == {
        key: (len(rows), max(c["timestamp"] for c in rows)) for key, rows in errors.items()
    }


# --- content ROI --------------------------------------------------------------------------------


def test_content_roi_numbers_equal_the_stored_rows(stack: Stack) -> None:
    stored, results = _boards(stack, "roi")
    with psycopg.connect(stack.database_url, row_factory=dict_row) as conn:
        content = conn.execute("SELECT * FROM carousel_performance").fetchall()
    cost: dict[str, list[Row]] = defaultdict(list)
    for c in stored.calls:
        if c["correlation_id"]:
            cost[c["correlation_id"]].append(c)
    published = [
        item
        for item in content
        if stored.window.start <= item["published_at"] <= stored.window.end
        and item["correlation_id"] in cost
    ]

    def engagement(item: Row) -> int:
        return int(item["likes"] + item["comments"] + item["shares"] + item["saves"])

    spend = sum((_cost(cost[i["correlation_id"]]) or Decimal(0)) for i in published)
    assert results["Content generation spend/A"].rows == [{"Spend": spend}]
    assert results["Engagement/A"].rows == [{"Engagement": sum(map(engagement, published))}]
    assert results["Published items/A"].rows == [{"Items": len(published)}]
    (per,) = results["Cost per engagement/A"].rows
    assert _same_ratio(per["Cost per engagement"], _ratio(spend, sum(map(engagement, published))))

    ranked = results["Content ranked by engagement per dollar/A"].rows
    for row in ranked:
        item = next(i for i in content if i["correlation_id"] == row["Correlation id"])
        item_cost = _cost(cost[item["correlation_id"]])
        assert row["Cost"] == item_cost
        assert row["Engagement"] == engagement(item)
        assert row["LLM calls"] == len(cost[item["correlation_id"]])
        assert _same_ratio(row["Engagement per $"], _ratio(engagement(item), item_cost))
    assert {r["Correlation id"] for r in ranked} == {i["correlation_id"] for i in content}

    content_hours: dict[int, list[Row]] = defaultdict(list)
    for c in stored.in_hours():
        if c["correlation_id"]:
            content_hours[_epoch(_hour(c["timestamp"]))].append(c)
    over_time = results["Spend vs engagement/A"].rows
    assert {int(r["time"]): r["Content spend"] for r in over_time} == {
        hour: _cost(rows) for hour, rows in content_hours.items()
    }
    seconds = int(stored.window.interval.total_seconds())
    published_in_range: dict[int, int] = defaultdict(int)
    for item in content:
        if stored.window.start <= item["published_at"] <= stored.window.end:
            published_in_range[_epoch(item["published_at"]) // seconds * seconds] += engagement(
                item
            )
    engaged = results["Spend vs engagement/B"].rows
    assert {int(r["time"]): r["Engagement"] for r in engaged} == published_in_range
