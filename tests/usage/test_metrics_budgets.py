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
from exporter.usage.budget_query import BudgetReader, PeriodTable
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


def test_the_internal_statuses_equal_the_api_field_by_field(
    api: TestClient, database_url: str
) -> None:
    with connect(database_url) as conn:
        expected = {b["id"]: budgets.status(conn, b, NOW) for b in budgets.list_budgets(conn, True)}
        found, enabled = BudgetReader().read(conn, NOW, 10_000)
    assert enabled == len(expected) == len(found)
    for row in found:
        wanted = expected[row["id"]]
        assert {k: row[k] for k in wanted} == wanted  # Decimal spend, forecast: exactly equal
    spends = [r["spend_usd"] / r["budget_usd"] for r in found]
    assert spends == sorted(spends, reverse=True)  # highest usage first


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


def test_a_zone_outside_the_listed_ones_is_learned(api: TestClient, database_url: str) -> None:
    """`posixrules`-like keys load in ZoneInfo but are not listed: their budgets still count."""
    reader = BudgetReader()
    reader._table = PeriodTable.at(NOW)
    del reader._table.bounds["daily", "Asia/Kolkata"]  # as if the zone were not listed
    with connect(database_url) as conn:
        found, _ = reader.read(conn, NOW, 10_000)
    assert "Asia/Kolkata" in reader._table.extra_zones
    assert reader._table.bounds["daily", "Asia/Kolkata"]
    assert all(row["period_start"] for row in found)
