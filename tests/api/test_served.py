"""The API as `nexus-otel serve` runs it, with a token: the live WebSocket feed, Alertmanager's
real webhook round trip, 401s, and the budget gauges on the ingest port's /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.api.conftest import call_spec
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.promstack import running_alertmanager
from tests.support import (
    ExporterProcess,
    api_ratio,
    api_usd,
    free_port,
    metric_value,
    query,
    start_exporter,
)

TOKEN = "s3cret-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T = TypeVar("T")
ZONE = "Asia/Kolkata"


@pytest.fixture(scope="module")
def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ExporterProcess]:
    env = {"NEXUS_API_TOKEN": TOKEN, "DAILY_BUDGET_USD": "5", "NEXUS_TIMEZONE": ZONE}
    process = start_exporter(database_url, tmp_path_factory.mktemp("served"), env)
    try:
        yield process
    finally:
        process.stop()


def wait_for(check: Callable[[], T | None], timeout: float = 20) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_websocket_receives_a_call_sent_after_connecting(served: ExporterProcess) -> None:
    ws_url = served.api_url.replace("http://", "ws://") + "/ws/metrics"
    with connect(ws_url, additional_headers=AUTH, open_timeout=10) as websocket:
        hello = json.loads(websocket.recv(timeout=10))
        assert hello == {"type": "hello", "listening": True}
        start = datetime.now(UTC) - timedelta(seconds=5)
        cost = Decimal("0.125")
        spec = call_spec(start, str(cost), operation="live_feed", correlation_id="carousel-ws")
        assert export_with_sdk(served.base_url, make_spans([spec], "live-svc"))
        message = json.loads(websocket.recv(timeout=10))
    assert message["type"] == "call"
    call = message["call"]
    assert (call["service_name"], call["operation"], call["correlation_id"]) == (
        "live-svc", "live_feed", "carousel-ws",
    )  # fmt: skip
    assert (call["input_tokens"], call["output_tokens"], call["total_tokens"]) == (100, 50, 150)
    assert call["cost_usd"] == api_usd(cost)
    assert datetime.fromisoformat(call["timestamp"]) == start


def test_without_the_token_everything_but_health_is_401(served: ExporterProcess) -> None:
    for path in ("/api/budgets", "/api/alerts", "/api/dashboard/stats", "/docs", "/openapi.json"):
        response = httpx.get(served.api_url + path)
        assert response.status_code == 401, path
        assert "bearer token" in response.json()["detail"]
        assert response.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(served.api_url + "/api/budgets", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.post(served.api_url + "/api/alerts/webhook", json={}).status_code == 401
    assert httpx.get(served.api_url + "/health").status_code == 200
    assert httpx.get(served.api_url + "/api/budgets", headers=AUTH).status_code == 200
    ws_url = served.api_url.replace("http://", "ws://") + "/ws/metrics"
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, open_timeout=10)
    assert refused.value.response.status_code == 401


def test_default_budget_gauges_on_the_ingest_port(
    served: ExporterProcess, database_url: str
) -> None:
    labels = {"budget": "default-daily", "period": "daily", "service_name": ""}
    cost, limit = Decimal("0.125"), Decimal(5)
    assert export_with_sdk(
        served.base_url, make_spans([call_spec(datetime.now(UTC), str(cost))], "gauge-svc")
    )
    # Today's spend: this call and those the module's other tests stored before it, if any,
    # summed from the stored rows.
    today = datetime.now(ZoneInfo(ZONE)).replace(hour=0, minute=0, second=0, microsecond=0)
    [(spend,)] = query(database_url, 'SELECT sum(cost_usd) FROM api_calls WHERE "timestamp" >= %s',
                       (today,))  # fmt: skip
    assert spend >= cost

    def scraped() -> str | None:
        text = httpx.get(served.base_url + "/metrics", headers=AUTH).text
        got = metric_value(text, "nexus_budget_spend_usd", **labels)
        return text if got == api_usd(spend) else None

    text = wait_for(scraped)
    assert metric_value(text, "nexus_budget_limit_usd", **labels) == api_usd(limit)
    assert metric_value(text, "nexus_budget_warning_ratio", **labels) == 0.8
    usage = metric_value(text, "nexus_budget_usage_ratio", **labels)
    assert usage == api_ratio(spend / limit)  # the gauge divides floats


def alertmanager_config(api_url: str) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "history",
            "group_by": ["alertname"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "history",
                "webhook_configs": [
                    {
                        "url": f"{api_url}/api/alerts/webhook",
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials": TOKEN}},
                    }
                ],
            }
        ],
    }


def test_alertmanager_webhook_round_trip(served: ExporterProcess, tmp_path: Path) -> None:
    """The real Alertmanager 0.25 delivers a firing and then a resolved alert to the history."""
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(alertmanager_config(served.api_url)))
    starts = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    alert = {
        "labels": {"alertname": "NexusBudgetExceeded", "severity": "critical", "budget": "d"},
        "annotations": {"summary": "Budget d exceeded", "description": "spend 5.2 of 5"},
        "startsAt": starts.isoformat(),
        "generatorURL": "http://prometheus.example/graph",
    }

    def history(status: str) -> list[dict[str, Any]] | None:
        response = httpx.get(
            served.api_url + "/api/alerts",
            params={"status": status, "alertname": "NexusBudgetExceeded"},
            headers=AUTH,
        )
        assert response.status_code == 200, response.text
        return response.json() or None

    with running_alertmanager(config, tmp_path) as alertmanager:
        httpx.post(f"{alertmanager.url}/api/v2/alerts", json=[alert]).raise_for_status()
        firing = wait_for(lambda: history("firing"))
        ended = {**alert, "endsAt": datetime.now(UTC).isoformat()}
        httpx.post(f"{alertmanager.url}/api/v2/alerts", json=[ended]).raise_for_status()
        resolved = wait_for(lambda: history("resolved"))
    assert len(firing) == 1
    row = firing[0]
    assert (row["alertname"], row["severity"], row["summary"]) == (
        "NexusBudgetExceeded", "critical", "Budget d exceeded",
    )  # fmt: skip
    assert row["description"] == "spend 5.2 of 5"
    assert row["labels"] == alert["labels"]
    assert row["receiver"] == "history"
    assert datetime.fromisoformat(row["starts_at"]) == starts
    assert row["ends_at"] is None  # still firing: no end yet
    assert len(resolved) == 1
    assert resolved[0]["fingerprint"] == row["fingerprint"]
    assert resolved[0]["ends_at"] is not None
    everything = httpx.get(served.api_url + "/api/alerts", headers=AUTH).json()
    assert [a["status"] for a in everything[:2]] == ["resolved", "firing"]  # newest first


def test_api_alone_hears_calls_stored_by_another_process(
    served: ExporterProcess, database_url: str, tmp_path: Path
) -> None:
    """`nexus-otel api` in its own process: its feed hears the exporter's writes too."""
    port = free_port()
    command = [sys.executable, "-m", "exporter.cli", "api", "--database-url", database_url,
               "--api-port", str(port)]  # fmt: skip
    env = {**os.environ, "NEXUS_API_TOKEN": TOKEN}
    log = (tmp_path / "api.log").open("wb")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _healthy(base))
        with connect(f"ws://127.0.0.1:{port}/ws/metrics?operation=elsewhere",
                     additional_headers=AUTH, open_timeout=10) as websocket:  # fmt: skip
            assert json.loads(websocket.recv(timeout=10))["listening"] is True
            specs = [
                call_spec(datetime.now(UTC), "0.01", operation="not_this_one"),
                call_spec(datetime.now(UTC), "0.02", operation="elsewhere"),
            ]
            assert export_with_sdk(served.base_url, make_spans(specs, "other-svc"))
            message = json.loads(websocket.recv(timeout=10))
        call = message["call"]
        assert (call["operation"], call["cost_usd"]) == ("elsewhere", api_usd(Decimal("0.02")))
    finally:
        process.terminate()
        process.wait(10)
        log.close()


def _healthy(base: str) -> bool:
    try:
        return httpx.get(f"{base}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
