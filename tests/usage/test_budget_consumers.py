"""Every reader of a budget's state says the same thing: the API, the /metrics gauges (and so
the budget alerts), the digest's budget lines and the SQL the Grafana dashboards run, for budgets
in zones with half- and quarter-hour offsets and a half-hour DST shift, with calls stored through
a real `nexus-otel serve` just around their periods' starts, and calls from a sender whose clock
runs ahead (in the current period but not yet due, and past its end)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest

from exporter.usage.budgets import BudgetCollector
from exporter.usage.digest import build_digest, render_digest, usd
from tests.api.conftest import call_spec
from tests.dashboards.grafana_expand import TimeRange, expand_sql
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.support import ExporterProcess, metric_value, query

ZONES = ("UTC", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe", "America/St_Johns")
PERIODS = ("daily", "weekly", "monthly")
# Amount = the spend the calls make times this, cycling: well under, over the 80 % warning,
# and over the amount.
AMOUNT_FACTORS = (Decimal(4), Decimal("1.1"), Decimal("0.5"))
WARNING_PCT = Decimal(80)
SECOND = timedelta(seconds=1)
HOUR = timedelta(hours=1)
DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
ICONS = {"ok": "🟢", "warning": "🟠", "exceeded": "🔴"}


def local_period(period: str, zone: str, at: datetime) -> tuple[datetime, datetime]:
    """The calendar period holding `at`, from local midnight (none of ZONES skips or repeats
    a midnight) to local midnight, weeks from Monday."""
    tz = ZoneInfo(zone)
    day = at.astimezone(tz).date()
    if period == "daily":
        first, after = day, day + timedelta(days=1)
    elif period == "weekly":
        first = day - timedelta(days=day.weekday())
        after = first + timedelta(days=7)
    else:
        first = day.replace(day=1)
        after = date(first.year + first.month // 12, first.month % 12 + 1, 1)
    return (
        datetime(first.year, first.month, first.day, tzinfo=tz).astimezone(UTC),
        datetime(after.year, after.month, after.day, tzinfo=tz).astimezone(UTC),
    )


@dataclass(frozen=True)
class Expected:
    spend: Decimal
    amount: Decimal

    @property
    def ratio(self) -> Decimal:
        return self.spend / self.amount

    @property
    def state(self) -> str:
        if self.spend >= self.amount:
            return "exceeded"
        return "warning" if self.spend * 100 >= WARNING_PCT * self.amount else "ok"


@dataclass
class Setup:
    calls: list[tuple[datetime, Decimal | None]]
    amounts: dict[str, Decimal]
    budgets: dict[str, tuple[str, str]]  # name -> (period, zone)

    def expected(self, at: datetime) -> dict[str, Expected]:
        """Each budget's spend at `at`, from the calls sent: priced calls in [start, at)."""
        found = {}
        for name, (period, zone) in self.budgets.items():
            start, end = local_period(period, zone, at)
            costs = [c for t, c in self.calls if start <= t < min(at, end) and c is not None]
            found[name] = Expected(sum(costs, Decimal(0)), self.amounts[name])
        return found

    def priced(self, name: str, since: datetime, until: datetime) -> list[tuple[datetime, Decimal]]:
        """The budget's priced calls in [since, until), in time order."""
        return sorted((t, c) for t, c in self.calls if since <= t < until and c is not None)

    def forecast(self, name: str, at: datetime) -> Decimal:
        """Spend at the period's end if the pace of the last hour (or of the period so far,
        when it began less than an hour ago) goes on."""
        start, end = local_period(*self.budgets[name], at)
        window = max(start, at - HOUR)
        spend = sum((c for _, c in self.priced(name, start, at)), Decimal(0))
        recent = sum((c for _, c in self.priced(name, window, at)), Decimal(0))
        seconds = Decimal((at - window).total_seconds())
        return spend + recent * Decimal((end - at).total_seconds()) / seconds

    def exceeded_at(self, name: str, at: datetime) -> datetime | None:
        """The time of the call that took the period's spend to the amount, if any did."""
        start, _ = local_period(*self.budgets[name], at)
        spent = Decimal(0)
        for moment, group in itertools.groupby(self.priced(name, start, at), lambda c: c[0]):
            spent += sum(c for _, c in group)
            if spent >= self.amounts[name]:
                return moment
        return None


@pytest.fixture(scope="module")
def setup(exporter: ExporterProcess, database_url: str) -> Setup:
    now = datetime.now(UTC)
    moments: list[datetime] = []
    for zone, period in itertools.product(ZONES, PERIODS):
        start, end = local_period(period, zone, now)
        moments += [start - SECOND, start, start + SECOND]  # before, at and after the start
        if end - now < timedelta(hours=23):  # a clock running ahead: due later, and too late
            moments += [end - SECOND, end]
    moments += [now - timedelta(minutes=40), now - timedelta(minutes=20)]  # the last hour's pace
    moments = sorted({m for m in moments if m < now or m > now + timedelta(minutes=5)})
    calls: list[tuple[datetime, Decimal | None]] = [
        (moment, Decimal(number + 1) / 64)  # exact in binary: the span carries a float
        for number, moment in enumerate(moments)
    ]
    calls.append((local_period("daily", "UTC", now)[0], None))  # unpriced: never counted
    specs = [call_spec(t, None if c is None else str(c)) for t, c in calls]
    assert export_with_sdk(exporter.base_url, make_spans(specs, "budget-consumers"))
    assert query(database_url, "SELECT count(*) FROM api_calls")[0][0] == len(calls)
    setup = Setup(calls, {}, {})
    for zone, period in itertools.product(ZONES, PERIODS):
        setup.budgets[f"{period}-{zone}"] = (period, zone)
        setup.amounts[f"{period}-{zone}"] = Decimal(1)
    for number, (name, spent) in enumerate(sorted(setup.expected(now).items())):
        amount = spent.spend * AMOUNT_FACTORS[number % len(AMOUNT_FACTORS)]
        setup.amounts[name] = max(amount.quantize(Decimal("0.000001")), Decimal("0.01"))
        period, zone = setup.budgets[name]
        body = {"name": name, "period": period, "amount_usd": str(setup.amounts[name]),
                "timezone": zone, "warning_threshold_pct": str(WARNING_PCT)}  # fmt: skip
        response = httpx.post(f"{exporter.api_url}/api/budgets", json=body)
        assert response.status_code == 201, response.text
    return setup


@dataclass
class Seen:
    before: datetime
    after: datetime
    api: dict[str, dict[str, Any]]
    gauges: str
    digest: Any
    digest_text: str
    grafana: dict[str, list[dict[str, Any]]]


def _panel_sql(board: str, title: str) -> str:
    panels = json.loads((DASHBOARDS / f"{board}.json").read_text())["panels"]
    flat = [p for panel in panels for p in [panel, *panel.get("panels", [])]]
    (panel,) = [p for p in flat if p.get("title") == title]
    (target,) = panel["targets"]
    return str(target["rawSql"])


def _grafana(database_url: str, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The budget panels' queries as Grafana sends them, run on the database."""
    window = TimeRange.last(timedelta(hours=6), now, timedelta(minutes=1))
    found = {}
    for key, board, title in (
        ("costs table", "costs", "Budgets"),
        ("overview", "overview", "Budgets"),
        ("burn", "costs", "Budget burn (current period)"),
    ):
        with psycopg.connect(database_url) as conn:
            cursor = conn.execute(expand_sql(_panel_sql(board, title), [], window))  # type: ignore[call-overload]
            columns = [c.name for c in cursor.description or []]
            found[key] = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
    return found


def _observe(exporter: ExporterProcess, database_url: str) -> Seen:
    before = datetime.now(UTC)
    api = httpx.get(f"{exporter.api_url}/api/budget/status").json()
    gauges = BudgetCollector(database_url, ttl=0).exposition().decode()
    today = datetime.now(UTC).date()
    digest = build_digest(database_url, today, "UTC")
    grafana = _grafana(database_url, datetime.now(UTC))
    return Seen(
        before, datetime.now(UTC), {s["name"]: s for s in api}, gauges, digest,
        render_digest(digest), grafana,
    )  # fmt: skip


@pytest.fixture(scope="module")
def seen(
    exporter: ExporterProcess, database_url: str, setup: Setup
) -> Iterator[tuple[Seen, dict[str, Expected]]]:
    """What every consumer says, read at one moment: read again if a period ended (or a call
    sent ahead fell due) while they were read, which at most one of them can do."""
    for _ in range(2):
        before = datetime.now(UTC)
        observed = _observe(exporter, database_url)
        after = datetime.now(UTC)
        if setup.expected(before) == setup.expected(after):
            yield observed, setup.expected(before)
            return
    pytest.fail("two period boundaries passed while the consumers were read")


def test_the_test_covers_every_state_and_boundary(
    setup: Setup, seen: tuple[Seen, dict[str, Expected]]
) -> None:
    expected = seen[1]
    assert len(expected) == len(ZONES) * len(PERIODS)
    assert {e.state for e in expected.values()} == {"ok", "warning", "exceeded"}
    assert any(t > datetime.now(UTC) for t, _ in setup.calls)  # sent by a clock ahead


def test_the_api_says_what_the_calls_make(seen: tuple[Seen, dict[str, Expected]]) -> None:
    observed, expected = seen
    assert set(observed.api) == set(expected)
    for name, want in expected.items():
        status = observed.api[name]
        assert status["spend_usd"] == float(want.spend), name
        assert status["amount_usd"] == float(want.amount), name
        # A percent is a quotient: every consumer gives the nearest float to the exact one.
        assert status["usage_pct"] == float(want.ratio * 100), name
        assert status["state"] == want.state, name


def test_the_gauges_say_the_same(seen: tuple[Seen, dict[str, Expected]]) -> None:
    observed, expected = seen
    for name, want in expected.items():
        labels = {"budget": name}
        spend = metric_value(observed.gauges, "nexus_budget_spend_usd", **labels)
        ratio = metric_value(observed.gauges, "nexus_budget_usage_ratio", **labels)
        warning = metric_value(observed.gauges, "nexus_budget_warning_ratio", **labels)
        assert spend == float(want.spend), name
        assert metric_value(observed.gauges, "nexus_budget_limit_usd", **labels) == float(
            want.amount
        )
        assert ratio == float(want.ratio), name
        # The state as the budget alerts (prometheus/rules/alerts.yml) read it from the gauges.
        state = "exceeded" if ratio >= 1 else "warning" if ratio >= warning else "ok"
        assert state == want.state, name


def test_the_digest_says_the_same(seen: tuple[Seen, dict[str, Expected]]) -> None:
    observed, expected = seen
    lines = {b.name: b for b in observed.digest.budgets}
    assert set(lines) == set(expected)
    for name, want in expected.items():
        line = lines[name]
        assert (line.spend_usd, line.amount_usd, line.state) == (want.spend, want.amount,
                                                                 want.state), name  # fmt: skip
        assert float(line.usage_pct) == float(want.ratio * 100), name
        period = name.split("-")[0]
        text = (f"{ICONS[want.state]} {name} ({period}): {usd(want.spend)} of {usd(want.amount)}"
                f" ({want.ratio * 100:.0f}%)")  # fmt: skip
        assert text in observed.digest_text.splitlines(), name


def test_grafana_says_the_same(seen: tuple[Seen, dict[str, Expected]]) -> None:
    observed, expected = seen
    table = {row["Budget"]: row for row in observed.grafana["costs table"]}
    overview = {row["Budget"]: row for row in observed.grafana["overview"]}
    burn: dict[str, Decimal] = {}
    for row in observed.grafana["burn"]:  # in time order: the last point is the total so far
        burn[row["metric"]] = row["used"]
    assert set(table) == set(overview) == set(expected)
    for name, want in expected.items():
        row = table[name]
        assert (row["Spent"], row["Limit"], row["Status"]) == (want.spend, want.amount,
                                                               want.state), name  # fmt: skip
        assert float(row["Used"]) == float(overview[name]["Used"]) == float(want.ratio), name
        # The burn chart sums the calls itself and divides in numeric, which PostgreSQL carries
        # to 16 significant digits (at least): it may differ from the exact ratio past that.
        assert float(burn.get(name, Decimal(0))) == pytest.approx(float(want.ratio), rel=1e-15)


def test_every_consumer_gives_the_forecast_at_the_last_hours_pace(
    setup: Setup, seen: tuple[Seen, dict[str, Expected]]
) -> None:
    observed, expected = seen
    table = {row["Budget"]: row for row in observed.grafana["costs table"]}
    assert any(
        setup.forecast(name, observed.before) != want.spend for name, want in expected.items()
    )  # some budgets spent in their last hour
    for name in expected:
        # Read between `before` and `after`: the forecast moves with the clock (the seconds left
        # in the period, and the window), so each reader's lies between the two ends'.
        ends = (setup.forecast(name, observed.before), setup.forecast(name, observed.after))
        low, high = min(ends), max(ends)
        gauge = metric_value(observed.gauges, "nexus_budget_forecast_usd", budget=name)
        for said in (observed.api[name]["forecast_usd"], gauge):
            assert float(low) <= said <= float(high), (name, said, ends)
        assert low <= table[name]["Forecast"] <= high, name
        method = observed.api[name]["forecast_method"]
        start = local_period(*setup.budgets[name], observed.before)[0]
        young = observed.after - HOUR < start
        assert method == ("period_so_far" if young else "last_hour"), name


def test_an_exceeded_budget_says_when_it_was_exceeded(
    setup: Setup, seen: tuple[Seen, dict[str, Expected]]
) -> None:
    observed, expected = seen
    for name, want in expected.items():
        status = observed.api[name]
        said = status["exceeded_at"] and datetime.fromisoformat(status["exceeded_at"])
        assert said == setup.exceeded_at(name, observed.before), name
        assert (said is not None) == (want.state == "exceeded"), name
        if status["projected_exhaustion_at"] is not None:  # only ever ahead, never past
            assert datetime.fromisoformat(status["projected_exhaustion_at"]) > observed.before
