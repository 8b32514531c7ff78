"""Budgets against the real database: CRUD, spend per calendar period in non-UTC zones,
forecasts at the last hour's pace, when a budget was exceeded, state transitions at the
warning threshold and at 100%, and the budget gauges."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import connect
from starlette.testclient import TestClient

from exporter.api import create_api_app
from exporter.core.settings import Settings
from exporter.usage.budgets import BudgetCollector
from exporter.usage.periods import period_bounds
from tests.api.conftest import MODEL_B, call_spec, sending_to
from tests.support import api_ratio, api_usd, fresh_database, metric_value

# Friday 2026-11-20, 15:00 in Sao Paulo (UTC-3), 23:30 in Kolkata (UTC+5:30).
NOW = datetime(2026, 11, 20, 18, 0, tzinfo=UTC)
SVC = "carousel-bot"


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


KNOWN_CALLS = [
    call_spec(at(20, 2, 30), "1.00"),  # Sao Paulo: Nov 19, 23:30
    call_spec(at(20, 3, 0), "2.00"),  # Sao Paulo: Nov 20, 00:00 sharp
    call_spec(at(20, 12, 0), "3.00", provider="anthropic", model=MODEL_B),
    call_spec(at(20, 13, 0), None),  # unpriced: counted, never as $0
    call_spec(at(17, 10, 0), "4.00"),  # Tuesday of this week
    call_spec(at(15, 12, 0), "5.00"),  # Sunday: the week before, same month
    call_spec(at(1, 2, 0), "7.00"),  # Sao Paulo: October 31, 23:00
    call_spec(at(19, 18, 15), "0.25"),  # Kolkata: Nov 19, 23:45
    call_spec(at(19, 18, 45), "0.50"),  # Kolkata: Nov 20, 00:15
]


SAO_PAULO = "America/Sao_Paulo"
AMOUNT = Decimal(100)
# Costs of the calls that move the "transitions" budget of $1.00, one after the other.
TRANSITION_COSTS = [Decimal(c) for c in ("0.50", "0.30", "0.19", "0.01", "0.20")]


def reported_cost(spec: dict[str, Any]) -> Decimal | None:
    """The exact cost a call spec reports; None when it is unpriced."""
    cost = spec["attributes"].get("nexus.cost.usd")
    return None if cost is None else Decimal(str(cost))


def in_period(moment: datetime, period: str, zone: str) -> bool:
    """Whether `moment` falls in NOW's day, ISO week or month on the local calendar of `zone`."""
    local, now = moment.astimezone(ZoneInfo(zone)), NOW.astimezone(ZoneInfo(zone))
    if period == "daily":
        return local.date() == now.date()
    if period == "weekly":
        return local.isocalendar()[:2] == now.isocalendar()[:2]
    return (local.year, local.month) == (now.year, now.month)


def spent(calls: Sequence[dict[str, Any]], period: str, zone: str) -> tuple[Decimal, int]:
    """Exact spend (priced calls) and the number of calls in the current period up to NOW."""
    inside = [c for c in calls if c["start"] <= NOW and in_period(c["start"], period, zone)]
    costs = [cost for c in inside if (cost := reported_cost(c)) is not None]
    return sum(costs, Decimal(0)), len(inside)


@pytest.fixture(scope="module")
def api(ingest: Callable[..., None], api_client: Callable[..., TestClient]) -> TestClient:
    ingest(KNOWN_CALLS, SVC)
    return api_client(NOW, timezone="America/Sao_Paulo")


def create(api: TestClient, **body: Any) -> dict[str, Any]:
    response = api.post("/api/budgets", json={"service_name": SVC, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


def status_of(api: TestClient, budget_id: int) -> dict[str, Any]:
    response = api.get(f"/api/budgets/{budget_id}/status")
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_period_bounds_follow_the_local_calendar(database_url: str) -> None:
    with connect(database_url) as conn:
        assert period_bounds(conn, "daily", SAO_PAULO, NOW) == (at(20, 3), at(21, 3))
        assert period_bounds(conn, "weekly", SAO_PAULO, NOW) == (at(16, 3), at(23, 3))
        assert period_bounds(conn, "monthly", SAO_PAULO, NOW) == (at(1, 3), at(1, 3, month=12))
        assert period_bounds(conn, "daily", "Asia/Kolkata", NOW) == (at(19, 18, 30), at(20, 18, 30))


@pytest.mark.parametrize(
    ("period", "zone", "calls"),
    [
        ("daily", "America/Sao_Paulo", 3),  # 00:00 local is in, 23:30 yesterday is out
        ("daily", "UTC", 4),
        ("daily", "Asia/Kolkata", 5),  # partial hours at :30 read from raw rows
        ("weekly", "America/Sao_Paulo", 7),  # from Monday 00:00 local
        ("monthly", "America/Sao_Paulo", 8),  # October 31 local is out
        ("monthly", "UTC", 9),
    ],
)
def test_spend_per_calendar_period(api: TestClient, period: str, zone: str, calls: int) -> None:
    spend, counted = spent(KNOWN_CALLS, period, zone)
    assert counted == calls  # the local calendar agrees with the comment
    budget = create(
        api, name=f"{period}-{zone}", period=period, amount_usd=str(AMOUNT), timezone=zone
    )
    status = status_of(api, budget["id"])
    assert status["spend_usd"] == api_usd(spend)
    assert status["calls"] == calls
    assert status["unpriced_calls"] == 1
    assert status["remaining_usd"] == api_usd(AMOUNT - spend)
    assert status["usage_pct"] == api_usd(spend * 100 / AMOUNT)
    assert status["state"] == "ok"


# A service of its own whose pace picks up in the last hour before NOW (17:00-18:00 UTC).
PACE_SVC = "pace-svc"
PACE_CALLS = [
    (at(19, 18, 20), Decimal("1.00")),  # Kolkata: Nov 19, 23:50, before its day
    (at(19, 18, 40), Decimal("0.10")),  # Kolkata: Nov 20, 00:10, in its day's partial hour
    (at(20, 4, 0), Decimal("4.00")),
    (at(20, 17, 30), Decimal("0.50")),  # the last hour
    (at(20, 17, 45), Decimal("0.25")),  # the last hour
]


@pytest.fixture(scope="module")
def paced(api: TestClient, ingest: Callable[..., None]) -> TestClient:
    ingest([call_spec(t, str(cost)) for t, cost in PACE_CALLS], PACE_SVC)
    return api


def pace_budget(api: TestClient, name: str, amount: str, zone: str) -> dict[str, Any]:
    body = {"service_name": PACE_SVC, "timezone": zone}
    return status_of(api, create(api, name=name, period="daily", amount_usd=amount, **body)["id"])


def test_forecast_carries_the_last_hours_pace_to_the_period_end(paced: TestClient) -> None:
    # Sao Paulo's day: 03:00 to 03:00 UTC. $4.75 so far, $0.75 of it in the last hour; 9 hours
    # left at $0.75 an hour: $11.50 at the end. (Spread evenly since 03:00: $7.60.)
    status = pace_budget(paced, "pace-roomy", "20", SAO_PAULO)
    assert (status["spend_usd"], status["forecast_usd"]) == (4.75, 11.5)
    assert status["forecast_method"] == "last_hour"
    assert datetime.fromisoformat(status["forecast_window_start"]) == at(20, 17)
    assert status["projected_exhaustion_at"] is None  # $20 is not reached today
    assert status["exceeded_at"] is None
    # $10: $5.25 to go at $0.75 an hour is 7 hours: 01:00 UTC tomorrow, before 03:00.
    tight = pace_budget(paced, "pace-tight", "10", SAO_PAULO)
    assert tight["forecast_usd"] == 11.5
    assert datetime.fromisoformat(tight["projected_exhaustion_at"]) == at(21, 1)
    assert tight["exceeded_at"] is None and tight["state"] == "ok"


def test_an_exceeded_budget_says_when_it_was_exceeded(paced: TestClient) -> None:
    # $4.00 at 04:00, then $4.50 with the call of 17:30: reached then, exactly. A linear
    # projection from 03:00 put it at 17:12:37, before the call that did it.
    status = pace_budget(paced, "pace-exceeded", "4.5", SAO_PAULO)
    assert status["state"] == "exceeded"
    assert datetime.fromisoformat(status["exceeded_at"]) == at(20, 17, 30)
    assert status["projected_exhaustion_at"] is None
    assert status["forecast_usd"] == 11.5  # still the end-of-day outlook


def test_exceeded_at_in_a_partial_hour_at_the_periods_start(paced: TestClient) -> None:
    # Kolkata's day begins at 18:30 UTC: the $1.00 of 18:20 is the day before, though in the
    # same UTC hour; the $0.10 of 18:40 alone reaches $0.10.
    status = pace_budget(paced, "pace-kolkata", "0.1", "Asia/Kolkata")
    assert status["spend_usd"] == 4.85
    assert datetime.fromisoformat(status["exceeded_at"]) == at(19, 18, 40)
    # $4.00 later, at 04:00, reaches $4.10 (the first whole-hour crossing).
    later = pace_budget(paced, "pace-kolkata-later", "4.1", "Asia/Kolkata")
    assert datetime.fromisoformat(later["exceeded_at"]) == at(20, 4)


def test_a_period_younger_than_an_hour_forecasts_from_its_start(paced: TestClient) -> None:
    # Yangon (UTC+6:30): the day began at 17:30 UTC, half an hour ago, with $0.75 spent since:
    # 23.5 hours left at $1.50 an hour is $35.25 more.
    status = pace_budget(paced, "pace-yangon", "100", "Asia/Yangon")
    assert status["spend_usd"] == 0.75
    assert status["forecast_method"] == "period_so_far"
    assert datetime.fromisoformat(status["forecast_window_start"]) == at(20, 17, 30)
    assert status["forecast_usd"] == 36.0


def test_no_calls_in_the_window_forecast_the_spend_so_far(api: TestClient) -> None:
    # carousel-bot's last priced call today was at 12:00: nothing in the last hour.
    status = status_of(api, create(api, name="quiet", period="daily", amount_usd=6)["id"])
    assert (status["spend_usd"], status["forecast_usd"]) == (5.0, 5.0)
    assert status["projected_exhaustion_at"] is None and status["exceeded_at"] is None


@pytest.mark.parametrize(
    ("amount", "state"),
    [("6.26", "ok"), ("6.25", "warning"), ("5.01", "warning"), ("5.00", "exceeded")],
)
def test_state_at_threshold_and_at_100_percent(api: TestClient, amount: str, state: str) -> None:
    # $5.00 spent: 80 % of 6.25 exactly, 100 % of 5.00 exactly.
    budget = create(api, name=f"edge-{amount}", period="daily", amount_usd=amount)
    assert status_of(api, budget["id"])["state"] == state


def test_state_transitions_as_calls_arrive(
    api: TestClient, ingest: Callable[..., None], database_url: str
) -> None:
    """One scoped budget of $1.00; calls arrive; state and gauges follow at 80 % and 100 %."""
    budget = create(
        api, name="transitions", period="daily", amount_usd="1.00", service_name="transition-svc"
    )
    registry = CollectorRegistry()
    registry.register(BudgetCollector(database_url, ttl=0, clock=lambda: NOW))
    amount = Decimal("1.00")
    seen = []
    for minute, cost in enumerate(TRANSITION_COSTS):
        ingest([call_spec(NOW - timedelta(hours=1, minutes=minute), str(cost))], "transition-svc")
        status = status_of(api, budget["id"])
        text = generate_latest(registry).decode()
        labels = {"budget": "transitions", "period": "daily", "service_name": "transition-svc"}
        usage = metric_value(text, "nexus_budget_usage_ratio", **labels)
        seen.append((status["state"], status["spend_usd"], usage))
    states = ["ok", "warning", "warning", "exceeded", "exceeded"]  # 80 % and 100 % exactly: in
    spends = list(itertools.accumulate(TRANSITION_COSTS))
    assert seen == [
        (state, api_usd(spend), api_ratio(spend / amount))  # the gauge divides floats
        for state, spend in zip(states, spends, strict=True)
    ]
    assert metric_value(text, "nexus_budget_limit_usd", **labels) == api_usd(amount)
    assert metric_value(text, "nexus_budget_warning_ratio", **labels) == 0.8
    assert metric_value(text, "nexus_budget_spend_usd", **labels) == api_usd(spends[-1])
    # Only the first call (17:00) is in the last hour; 9 hours of the day are left.
    at_end = spends[-1] + TRANSITION_COSTS[0] * 9
    assert metric_value(text, "nexus_budget_forecast_usd", **labels) == api_usd(at_end)
    end = metric_value(text, "nexus_budget_period_end_timestamp_seconds", **labels)
    assert end == at(21, 3).timestamp()
    assert 'gen_ai_provider_name=""' in text  # unscoped labels are empty strings


def test_crud(api: TestClient) -> None:
    kept = create(api, name="crud-neighbour", period="daily", amount_usd="1")
    budget = create(
        api, name="crud", period="weekly", amount_usd="12.5", provider="anthropic", model=MODEL_B
    )
    assert budget["warning_threshold_pct"] == 80
    assert budget["amount_usd"] == 12.5
    listed = api.get("/api/budgets").json()
    assert budget["id"] in [b["id"] for b in listed]
    patched = api.patch(
        f"/api/budgets/{budget['id']}", json={"amount_usd": 3, "warning_threshold_pct": 50}
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["amount_usd"], patched.json()["warning_threshold_pct"]) == (3, 50)
    status = status_of(api, budget["id"])  # anthropic/beta this week: the $3.00 call
    expected = reported_cost(KNOWN_CALLS[2])
    assert expected is not None
    assert (status["spend_usd"], status["state"]) == (api_usd(expected), "exceeded")
    duplicate = api.post("/api/budgets", json={"name": "crud", "period": "daily", "amount_usd": 1})
    assert duplicate.status_code == 409
    assert api.delete(f"/api/budgets/{budget['id']}").status_code == 204
    assert api.get(f"/api/budgets/{budget['id']}").status_code == 404
    assert api.delete(f"/api/budgets/{budget['id']}").status_code == 404
    statuses = api.get("/api/budget/status").json()
    assert budget["id"] not in [s["id"] for s in statuses]
    assert kept["id"] in [s["id"] for s in statuses]  # deleting one budget leaves the others


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "x", "period": "yearly", "amount_usd": 1}, "period"),
        ({"name": "x", "period": "daily", "amount_usd": 0}, "amount_usd"),
        ({"name": "x", "period": "daily", "amount_usd": 1, "timezone": "Mars/Olympus"}, "zone"),
        ({"name": "x", "period": "daily", "amount_usd": 1, "warning_threshold_pct": 101}, "100"),
        ({"period": "daily", "amount_usd": 1}, "name"),
    ],
)
def test_bad_budgets_get_422_with_a_message(
    api: TestClient, body: dict[str, Any], message: str
) -> None:
    response = api.post("/api/budgets", json=body)
    assert response.status_code == 422
    assert message in response.text


@pytest.mark.parametrize("threshold", ["66.67", "80", "0.07", "57.01"])
def test_gauges_at_the_warning_threshold_exactly_say_what_the_state_says(
    api: TestClient, ingest: Callable[..., None], database_url: str, threshold: str
) -> None:
    """The BudgetWarning alert fires on usage_ratio >= warning_ratio: at the threshold to the
    cent, both gauges are the same number, as the state is 'warning'. (66.67 / 100 in floats is
    0.6667000000000001, above the usage ratio 0.6667: the alert stayed silent.)"""
    service = f"threshold-{threshold}"
    amount = Decimal(3)
    ingest([call_spec(NOW - timedelta(hours=2), str(amount * Decimal(threshold) / 100))], service)
    budget = create(
        api,
        name=service,
        period="daily",
        amount_usd=str(amount),
        warning_threshold_pct=threshold,
        service_name=service,
    )
    assert status_of(api, budget["id"])["state"] == "warning"
    registry = CollectorRegistry()
    registry.register(BudgetCollector(database_url, ttl=0, clock=lambda: NOW))
    text = generate_latest(registry).decode()
    labels = {"budget": service, "period": "daily", "service_name": service}
    usage = metric_value(text, "nexus_budget_usage_ratio", **labels)
    warning = metric_value(text, "nexus_budget_warning_ratio", **labels)
    assert usage == warning == float(Decimal(threshold) / 100)


@pytest.mark.parametrize(
    "field",
    ["name", "period", "amount_usd", "warning_threshold_pct", "timezone", "enabled", "enforce"],
)
def test_a_required_field_patched_to_null_gets_422_and_changes_nothing(
    api: TestClient, field: str
) -> None:
    """Only a scope field may be null (any value); `enabled: null` was a 500 (NOT NULL)."""
    budget = create(api, name=f"null-{field}", period="daily", amount_usd="2")
    response = api.patch(f"/api/budgets/{budget['id']}", json={field: None})
    assert response.status_code == 422, response.text
    assert response.json()["detail"] == [
        {"loc": ["body", field], "msg": f"{field} cannot be null", "type": "value_error"}
    ]
    assert api.get(f"/api/budgets/{budget['id']}").json() == budget
    assert api.delete(f"/api/budgets/{budget['id']}").status_code == 204


def test_default_budget_from_settings(postgres_server: str) -> None:
    """The default budget counts every service's calls: on a database of its own, so that what
    it spends does not depend on which other tests of this module ran before it."""
    with fresh_database(postgres_server) as url, sending_to(url) as send:
        send(KNOWN_CALLS, SVC)
        send([call_spec(NOW - timedelta(hours=1), "0.75")], "other-svc")
        settings = Settings(daily_budget_usd="2.5", budget_warning_threshold="60")
        with TestClient(create_api_app(settings, url, clock=lambda: NOW)) as client:
            budgets = client.get("/api/budgets").json()
            default = [b for b in budgets if b["name"] == "default-daily"]
            assert len(default) == 1
            assert (default[0]["period"], default[0]["amount_usd"]) == ("daily", 2.5)
            assert default[0]["warning_threshold_pct"] == 60
            assert default[0]["timezone"] == "UTC"  # this client's NEXUS_TIMEZONE
            status = status_of(client, default[0]["id"])
    # Every call of today so far, whichever service made it.
    today = spent(KNOWN_CALLS, "daily", "UTC")[0] + Decimal("0.75")
    assert status["spend_usd"] == api_usd(today)
