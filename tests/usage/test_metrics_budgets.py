"""The budget gauges read every budget in one statement and say exactly what the API says:
the same spend, limit, forecast and period end, for budgets in several zones, periods and
scopes; past the budget limit, the budgets of highest usage keep their gauges."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import connect
from starlette.testclient import TestClient

from exporter.usage import budgets
from exporter.usage.budgets import BudgetCollector
from tests.api.conftest import MODEL_A, MODEL_B, api_client, call_spec, ingest
from tests.support import metric_value

__all__ = ["api_client", "ingest"]  # fixtures

# Friday 2026-11-20 18:20 UTC: 23:50 in Kolkata, 15:20 in Sao Paulo, 07:20 Saturday in Chatham
# (+13:45), 05:20 Saturday in Lord Howe (+11, a half-hour DST shift).
NOW = datetime(2026, 11, 20, 18, 20, tzinfo=UTC)
ZONES = ("UTC", "America/Sao_Paulo", "Asia/Kolkata", "Pacific/Chatham", "Australia/Lord_Howe")
SCOPES: tuple[dict[str, str], ...] = (
    {},
    {"service_name": "svc-a"},
    {"service_name": "svc-a", "model": MODEL_B},
    {"provider": "anthropic"},
    {"operation": "caption"},
)
GAUGES = {
    "nexus_budget_spend_usd": "spend_usd",
    "nexus_budget_limit_usd": "amount_usd",
    "nexus_budget_forecast_usd": "forecast_usd",
}


def _calls() -> list[dict[str, Any]]:
    """Calls over five weeks, on whole hours, half hours and in the current partial hour."""
    calls = []
    for i, minutes in enumerate(range(0, 36 * 24 * 60, 7 * 60 + 13)):
        moment = NOW - timedelta(minutes=minutes + 1)
        provider, model = ("anthropic", MODEL_B) if i % 3 == 0 else ("openai", MODEL_A)
        cost = None if i % 11 == 5 else f"0.{(i * 7919) % 1000:03d}{i % 7}"
        operation = "caption" if i % 2 else "fact_generation"
        calls.append(call_spec(moment, cost, provider=provider, model=model, operation=operation))
    return calls


@pytest.fixture(scope="module")
def api(ingest: Callable[..., None], api_client: Callable[..., TestClient]) -> TestClient:
    calls = _calls()
    ingest(calls[0::2], "svc-a")
    ingest(calls[1::2], "svc-b")
    client = api_client(NOW)
    for number, (zone, period, scope) in enumerate(
        itertools.product(ZONES, ("daily", "weekly", "monthly"), SCOPES)
    ):
        body = {"name": f"b{number}", "period": period, "amount_usd": f"{1 + number % 9}.5",
                "timezone": zone, **scope}  # fmt: skip
        response = client.post("/api/budgets", json=body)
        assert response.status_code == 201, response.text
    return client


def _gauges(collector: BudgetCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def _parsed(text: str) -> list[tuple[str, str, tuple[tuple[str, str], ...], float]]:
    return [
        (family.documentation, s.name, tuple(sorted(s.labels.items())), s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def test_gauges_equal_the_api_status_of_every_budget(api: TestClient, database_url: str) -> None:
    statuses = api.get("/api/budget/status").json()
    assert len(statuses) == len(ZONES) * 3 * len(SCOPES)
    assert any(s["spend_usd"] > 0 for s in statuses)
    collector = BudgetCollector(database_url, ttl=0, clock=lambda: NOW)
    text = collector.exposition().decode()
    assert _parsed(text) == _parsed(_gauges(collector))  # as prometheus_client writes them
    for status in statuses:
        labels = {"budget": status["name"], "period": status["period"]}
        for gauge, field in GAUGES.items():
            assert metric_value(text, gauge, **labels) == status[field], (gauge, status)
        end = datetime.fromisoformat(status["period_end"]).timestamp()
        assert metric_value(text, "nexus_budget_period_end_timestamp_seconds", **labels) == end
    assert metric_value(text, "nexus_budgets_without_gauges") == 0


def test_the_highest_usage_read_equals_the_api_field_by_field(
    api: TestClient, database_url: str
) -> None:
    with connect(database_url) as conn:
        expected = {s["id"]: s for s in budgets.statuses(conn, NOW)}
        found = budgets.highest_usage(conn, NOW, 10_000)
    assert len(expected) == len(found) == int(found[0]["enabled_budgets"])
    for row in found:
        # Decimal spend, forecast: exactly equal. The gauges have no use for exceeded_at.
        assert row == {**expected[row["id"]], "exceeded_at": None}
    assert any(s["exceeded_at"] is not None for s in expected.values())
    usages = [r["spend_usd"] / r["amount_usd"] for r in found]
    assert usages == sorted(usages, reverse=True)  # highest usage first


def test_past_the_limit_the_budgets_of_highest_usage_keep_their_gauges(
    api: TestClient, database_url: str
) -> None:
    statuses = api.get("/api/budget/status").json()
    ranked = sorted(statuses, key=lambda s: (-s["spend_usd"] / s["amount_usd"], s["id"]))
    collector = BudgetCollector(database_url, ttl=0, clock=lambda: NOW, max_budgets=7)
    text = collector.exposition().decode()
    shown = {s.split('budget="')[1].split('"')[0] for s in text.splitlines()
             if s.startswith("nexus_budget_limit_usd{")}  # fmt: skip
    assert shown == {s["name"] for s in ranked[:7]}
    assert metric_value(text, "nexus_budgets_without_gauges") == len(statuses) - 7


def test_a_budget_in_a_zone_the_database_does_not_know_costs_only_itself(
    api: TestClient, database_url: str
) -> None:
    """The API refuses such a zone (tests/core/test_zones.py); one stored before (or with a
    database whose zone rules changed) is left out, and the other budgets are counted."""
    before = api.get("/api/budget/status").json()
    with connect(database_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cost_budgets (name, period_type, budget_usd, timezone)"
            " VALUES ('stored-before', 'daily', 1, 'Mars/Olympus_Mons')"
        )
        try:
            assert api.get("/api/budget/status").json() == before
            assert len(budgets.highest_usage(conn, NOW, 10_000)) == len(before)
        finally:
            conn.execute("DELETE FROM cost_budgets WHERE name = 'stored-before'")
