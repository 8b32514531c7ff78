"""Clear 4xx answers for bad parameters, CORS, and an open /health."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from starlette.testclient import TestClient

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def api(api_client: Callable[..., TestClient]) -> TestClient:
    return api_client(NOW, cors_origins="https://grafana.example, https://ops.example")


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/api/analytics/provider-stats", {"start": "2026-11-20T00:00:00Z",
                                            "end": "2026-11-19T00:00:00Z"}, "before end"),
        ("/api/analytics/cost-by-operation", {"start": "2026-11-01T00:00:00"}, "time zone"),
        ("/api/analytics/token-efficiency", {"end": "yesterday"}, "datetime"),
        ("/api/analytics/provider-stats", {"start": "0001-01-01T00:00:00Z"}, "1970"),
        ("/api/dashboard/stats", {"recent": "1000"}, "less than or equal to 100"),
        ("/api/analytics/carousel-performance", {"sort": "likes"}, "engagement_per_dollar"),
        ("/api/alerts", {"status": "pending"}, "firing"),
        ("/api/alerts", {"since": "2026-11-20T10:00:00"}, "since needs a time zone offset"),
        ("/api/alerts", {"since": "0001-01-01T00:00:00Z"}, "between the years 1970 and 2200"),
        ("/api/reports/daily", {"date": "2026-13-01"}, "date"),
        ("/api/reports/yearly", {}, "daily"),
        ("/api/budgets/0/status", {}, "greater than or equal to 1"),
    ],
)  # fmt: skip
def test_bad_parameters_get_422_with_a_message(
    api: TestClient, path: str, params: dict[str, str], message: str
) -> None:
    response = api.get(path, params=params)
    assert response.status_code == 422, response.text
    assert message in response.text


def test_bad_webhook_payload_gets_422(api: TestClient) -> None:
    response = api.post("/api/alerts/webhook", json={"status": "firing", "alerts": [{}]})
    assert response.status_code == 422
    assert "fingerprint" in response.text
    nul = api.post(
        "/api/carousels", json={"correlation_id": "bad\u0000id", "title": "t"}
    )  # PostgreSQL text cannot hold NUL
    assert nul.status_code == 422
    assert "NUL" in nul.text


def test_cors_allows_only_configured_origins(api: TestClient) -> None:
    preflight = {"Access-Control-Request-Method": "GET"}
    allowed = api.options(
        "/api/budgets", headers={"Origin": "https://grafana.example", **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://grafana.example"
    refused = api.options("/api/budgets", headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers


def test_health_and_docs(api: TestClient) -> None:
    assert api.get("/health").json() == {"status": "ok", "database": "up"}
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    for path in ("/api/dashboard/stats", "/api/budget/status", "/api/analytics/provider-stats",
                 "/api/analytics/cost-by-operation", "/api/analytics/carousel-performance",
                 "/api/analytics/token-efficiency", "/api/budgets", "/api/alerts/webhook",
                 "/api/alerts", "/health"):  # fmt: skip
        assert path in paths


def test_a_repeated_notification_is_recorded_once(api: TestClient) -> None:
    """Alertmanager repeats notifications (repeat_interval, retries): one event, one row."""
    payload = {
        "version": "4", "receiver": "history", "status": "firing", "groupKey": "{}:{}",
        "groupLabels": {"alertname": "NexusErrorRate"}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://am", "truncatedAlerts": 0,
        "alerts": [{
            "status": "firing", "labels": {"alertname": "NexusErrorRate", "severity": "warning"},
            "annotations": {"summary": "errors"}, "startsAt": "2026-11-20T10:00:00.123Z",
            "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": "abc123",
        }],
    }  # fmt: skip
    first = api.post("/api/alerts/webhook", json=payload)
    again = api.post("/api/alerts/webhook", json=payload)
    assert (first.status_code, again.status_code) == (200, 200), (first.text, again.text)
    assert (first.json(), again.json()) == (
        {"received": 1, "recorded": 1}, {"received": 1, "recorded": 0},
    )  # fmt: skip
    rows = api.get("/api/alerts", params={"alertname": "NexusErrorRate"}).json()
    assert [(r["fingerprint"], r["status"], r["ends_at"]) for r in rows] == [
        ("abc123", "firing", None)
    ]
    assert api.get("/api/alerts", params={"since": "2100-01-01T00:00:00Z"}).json() == []
