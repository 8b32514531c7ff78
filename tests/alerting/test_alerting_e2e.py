"""End to end with the real binaries: spans → exporter (+ API, budget gauges) → Prometheus rules
→ Alertmanager → a local Telegram Bot API server and the alert-history webhook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.alerting import write_alertmanager_config, write_rules
from exporter.alerting.rules import DEFAULT_RUNBOOK_BASE_URL, DEFAULT_SINGLE_CALL_USD
from exporter.core.settings import Settings
from tests.alerting.fake_telegram import FakeTelegram, fake_telegram
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.promstack import (
    Alertmanager,
    Prometheus,
    prometheus_config,
    running_alertmanager,
    running_prometheus,
)
from tests.support import ExporterProcess, free_port, start_exporter

pytestmark = pytest.mark.e2e
API_TOKEN = "e2e-api-token"
CHAT_ID = -100777
SERVICE = "carousel-e2e"


@dataclass
class Stack:
    exporter: ExporterProcess
    api_url: str
    prometheus: Prometheus
    alertmanager: Alertmanager
    telegram: FakeTelegram

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}
        response = httpx.request(method, f"{self.api_url}{path}", headers=headers, timeout=10,
                                 **kwargs)  # fmt: skip
        assert response.status_code < 300, response.text
        return response.json() if response.content else None

    def send_call(self, model: str, cost_usd: float) -> None:
        spans = make_spans(
            [{"start": datetime.now(UTC), "duration_ms": 900, "name": f"chat {model}",
              "attributes": {
                  "gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                  "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 1200,
                  "gen_ai.usage.output_tokens": 400, "gen_ai.usage.cost": cost_usd,
                  "nexus.operation": "caption"}}],
            service_name=SERVICE,
        )  # fmt: skip
        assert export_with_sdk(self.exporter.base_url, spans)


def fast_rules(directory: Path) -> list[Path]:
    """The shipped rules with every duration x 0.01, as `nexus-otel prometheus-rules
    --time-scale 0.01` writes them, so the test runs in seconds."""
    return write_rules(directory, DEFAULT_SINGLE_CALL_USD, DEFAULT_RUNBOOK_BASE_URL, 0.01)


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("alerting-e2e")
    api_port = free_port()
    exporter = start_exporter(
        database_url, work, {"NEXUS_API_TOKEN": API_TOKEN}, "--api-port", str(api_port)
    )
    try:
        with fake_telegram() as telegram:
            settings = Settings(
                telegram_bot_token=telegram.token, telegram_chat_id=CHAT_ID,
                telegram_api_url=telegram.url, api_token=API_TOKEN,
                alert_webhook_url=f"http://127.0.0.1:{api_port}/api/alerts/webhook",
                alert_link_url="http://grafana.example:3000",
            )  # fmt: skip
            config = write_alertmanager_config(settings, work / "am" / "alertmanager.yml",
                                               fast=True)  # fmt: skip
            with running_alertmanager(config, work / "am") as alertmanager:
                target = exporter.base_url.removeprefix("http://")
                prom_config = prometheus_config(
                    [target], rule_files=fast_rules(work / "rules"),
                    alertmanager=alertmanager.url.removeprefix("http://"),
                    bearer_token=API_TOKEN,  # /metrics asks for the API token when it is set
                )  # fmt: skip
                # Alerts fired before Prometheus found Alertmanager are re-sent after 1 s, not 1 m.
                resend = ["--rules.alert.resend-delay=1s"]
                with running_prometheus(prom_config, work / "prom", resend) as prometheus:
                    yield Stack(exporter, f"http://127.0.0.1:{api_port}", prometheus,
                                alertmanager, telegram)  # fmt: skip
    finally:
        exporter.stop()


def test_budget_and_expensive_call_alerts_reach_telegram_and_the_history(stack: Stack) -> None:
    budget = stack.api("POST", "/api/budgets", json={
        "name": "daily-llm", "period": "daily", "amount_usd": 1.0, "warning_threshold_pct": 50,
        "timezone": "UTC", "service_name": SERVICE,
    })  # fmt: skip
    prom, telegram = stack.prometheus, stack.telegram
    prom.wait_for(lambda: prom.value('nexus_budget_limit_usd{budget="daily-llm"}') == 1.0,
                  what="the budget gauges scraped")  # fmt: skip

    # $0.60 of $1.00: past the 50 % warning threshold.
    stack.send_call("nexus-e2e-small", 0.30)
    stack.send_call("nexus-e2e-small", 0.30)
    warning = telegram.wait_for(lambda t: "LLMBudgetWarning" in t, what="budget warning")
    assert "🟠 WARNING" in warning
    assert "Budget daily-llm passed its warning threshold" in warning
    assert "daily budget daily-llm has spent $0.60 of $1.00 (60%; warning at 50%)." in warning
    assert "Budget: <code>daily-llm</code> (daily)" in warning
    assert "Service: <code>carousel-e2e</code>" in warning
    assert '<a href="https://github.com/nexus-otel/nexus-otel/blob/main/docs/RUNBOOK.md' \
           '#llmbudgetwarning">Runbook</a>' in warning  # fmt: skip
    assert '<a href="http://grafana.example:3000/d/nexus-overview">' in warning
    assert not any("LLMBudgetExceeded" in t or "LLMExpensiveCall" in t for t in telegram.texts())

    # One call of $0.70: over $0.50 on its own, and the budget to $1.30, past 100 %.
    stack.send_call("nexus-e2e-large", 0.70)
    exceeded = telegram.wait_for(lambda t: "LLMBudgetExceeded" in t, what="budget exceeded")
    assert "🔴 CRITICAL" in exceeded
    assert "daily budget daily-llm has spent $1.30, over its limit of $1.00 (130%)." in exceeded
    expensive = telegram.wait_for(lambda t: "LLMExpensiveCall" in t, what="expensive call")
    assert "A call to nexus-e2e-large cost more than $0.50" in expensive
    assert "1 call(s) to nexus-e2e-large (openai, operation caption, service carousel-e2e)" \
           in expensive  # fmt: skip
    assert "Model: <code>nexus-e2e-large</code> · openai" in expensive
    assert "nexus-e2e-small" not in expensive

    with telegram.lock:
        messages = list(telegram.messages)
    assert {str(m["chat_id"]) for m in messages} == {str(CHAT_ID)}  # AM sends it as a string
    assert {m["parse_mode"] for m in messages} == {"HTML"}
    assert telegram.refused == []
    assert not any("Watchdog" in m["text"] for m in messages)  # heartbeat: history only

    # The critical alert inhibits the warning of the same budget: suppressed, and no longer
    # repeated (every 2 s in this config) while the critical one is.
    (suppressed,) = stack.alertmanager.wait_for(
        lambda: [a for a in stack.alertmanager.alerts(alertname="LLMBudgetWarning")
                 if a["status"]["state"] == "suppressed"],
        what="the warning inhibited",
    )  # fmt: skip
    (critical,) = stack.alertmanager.alerts(alertname="LLMBudgetExceeded")
    assert suppressed["status"]["inhibitedBy"] == [critical["fingerprint"]]
    time.sleep(0.5)  # a notification already on its way when inhibition began

    def count(alertname: str) -> int:
        return sum(f"<b>{alertname}</b>" in text for text in telegram.texts())

    warnings, criticals = count("LLMBudgetWarning"), count("LLMBudgetExceeded")
    time.sleep(5)
    assert count("LLMBudgetWarning") == warnings
    assert count("LLMBudgetExceeded") > criticals

    # The alert history holds what Alertmanager delivered.
    history = stack.api("GET", "/api/alerts", params={"status": "firing", "limit": 1000})
    by_name = {row["alertname"]: row for row in history}
    assert {"LLMBudgetWarning", "LLMBudgetExceeded", "LLMExpensiveCall", "Watchdog"} <= set(by_name)
    assert by_name["LLMBudgetExceeded"]["severity"] == "critical"
    assert by_name["LLMBudgetExceeded"]["labels"]["budget"] == "daily-llm"
    assert by_name["LLMBudgetExceeded"]["receiver"] == "critical"
    assert by_name["LLMBudgetWarning"]["summary"] == "Budget daily-llm passed its warning threshold"
    assert by_name["LLMExpensiveCall"]["labels"]["gen_ai_request_model"] == "nexus-e2e-large"
    assert by_name["Watchdog"]["receiver"] == "watchdog"

    # Without the budget the alert resolves: Telegram hears it, the history records it.
    stack.api("DELETE", f"/api/budgets/{budget['id']}")
    resolved = telegram.wait_for(lambda t: "✅ RESOLVED · <b>LLMBudgetExceeded</b>" in t,
                                 what="resolved")  # fmt: skip
    assert "Budget daily-llm is exceeded" in resolved
    stack.prometheus.wait_for(
        lambda: stack.api("GET", "/api/alerts", params={"status": "resolved",
                                                        "alertname": "LLMBudgetExceeded"}),
        what="the resolved alert in the history",
    )  # fmt: skip
