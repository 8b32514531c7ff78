"""Every shipped alert reaches every channel, end to end: the rules as `nexus-otel
prometheus-rules --time-scale 0.01` writes them (every `for`, range and offset x 0.01, so ten
minutes last six seconds), the real Prometheus and Alertmanager, a real `nexus-otel serve` for
the LLM calls and budgets, and small /metrics endpoints for what a test cannot run or break for
real (the collector, a second exporter and its database). Each alert must arrive on Telegram,
by email, on Slack, at the user's webhook and in the alert history; the Watchdog heartbeat at
the dead man's switch and in the history.

Two phases, because some alerts inhibit others by design: first the alerts an exporter or
collector outage would silence (no calls stored, the collector's queue and refusals) with
nothing down; then the outages themselves, with the LLM-call and budget alerts."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from exporter.alerting import write_alertmanager_config
from exporter.cli import main
from exporter.core.settings import Settings
from tests.alerting.fake_channels import FakeHTTP, FakeSMTP, fake_slack, fake_smtp, fake_webhook
from tests.alerting.fake_telegram import FakeTelegram, displayed, fake_telegram
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.promstack import (
    RULES_DIR,
    Prometheus,
    backfill,
    running_alertmanager,
    running_prometheus,
    static_target,
)
from tests.support import ExporterProcess, start_exporter

pytestmark = pytest.mark.e2e
TIME_SCALE = 0.01
API_TOKEN = "every-alert-token"
CHAT_ID = -100888
PHASE_ONE = {"LLMNoCallsIngested", "NexusCollectorDroppingSpans", "NexusCollectorRefusingSpans",
             "NexusCollectorQueueNearlyFull"}  # fmt: skip
PHASE_TWO = {"LLMBudgetWarning", "LLMBudgetExceeded", "LLMBudgetForecastExceeded",
             "LLMExpensiveCall", "LLMHighErrorRate", "LLMUnpricedCalls", "NexusExporterDown",
             "NexusStorageUnavailable", "NexusCollectorDown"}  # fmt: skip
COLLECTOR_EXPORTER = 'exporter="otlphttp/nexus"'


def shipped_alerts() -> set[str]:
    document = yaml.safe_load((RULES_DIR / "alerts.yml").read_text())
    return {rule["alert"] for group in document["groups"] for rule in group["rules"]}


def test_the_phases_cover_every_shipped_alert() -> None:
    assert shipped_alerts() == PHASE_ONE | PHASE_TWO | {"Watchdog"}
    assert len(shipped_alerts()) == 14


class Receivers:
    """Where the alerts must arrive, and how each shows an alert's name."""

    def __init__(self, telegram: FakeTelegram, smtp: FakeSMTP, slack: FakeHTTP,
                 webhook: FakeHTTP, deadman: FakeHTTP, api_url: str) -> None:  # fmt: skip
        self.telegram, self.smtp, self.slack = telegram, smtp, slack
        self.webhook, self.deadman, self.api_url = webhook, deadman, api_url

    def history(self) -> set[str]:
        response = httpx.get(
            f"{self.api_url}/api/alerts", params={"status": "firing", "limit": 1000},
            headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=10,
        )  # fmt: skip
        response.raise_for_status()
        return {row["alertname"] for row in response.json()}

    def arrived(self) -> dict[str, set[str]]:
        """Per channel, the alert names that arrived firing."""

        def firing_names(payloads: list[dict[str, Any]]) -> set[str]:
            return {a["labels"]["alertname"] for p in payloads for a in p["alerts"]
                    if a["status"] == "firing"}  # fmt: skip

        def named(texts: list[str], pattern: Callable[[str], str]) -> set[str]:
            return {n for n in shipped_alerts() for t in texts if pattern(n) in t}

        return {
            "telegram": named([t for t in self.telegram.texts() if "RESOLVED" not in t],
                              lambda n: f" · <b>{n}</b>\n"),
            "email": named([m.body("plain") for m in self.smtp.items()
                            if not m.subject.startswith("[RESOLVED]")], lambda n: f" · {n}\n"),
            "slack": named([a["text"] for p in self.slack.items() for a in p["attachments"]
                            if a["color"] != "good"], lambda n: f" · {n}*"),
            "webhook": firing_names(self.webhook.items()),
            "history": self.history(),
            "deadman": firing_names(self.deadman.items()),
        }  # fmt: skip

    def wait_for(self, alerts: set[str], prometheus: Prometheus, timeout: float) -> None:
        """Until every channel has every one of `alerts` (the heartbeat only where it goes)."""
        deadline = time.monotonic() + timeout
        while True:
            arrived = self.arrived()
            missing = {
                channel: sorted(wanted - arrived[channel])
                for channel in arrived
                if (wanted := {"Watchdog"} & alerts if channel == "deadman"
                    else alerts - ({"Watchdog"} if channel != "history" else set()))
                - arrived[channel]
            }  # fmt: skip
            if not missing:
                return
            if time.monotonic() > deadline:
                states = {(a["labels"]["alertname"], a["state"]) for a in prometheus.alerts()}
                raise AssertionError(f"missing {missing}; Prometheus has {sorted(states)}")
            time.sleep(0.5)


def send(exporter: ExporterProcess, service: str, model: str, cost: float | None, count: int = 1,
         error: str | None = None) -> None:  # fmt: skip
    """`count` calls; `cost` None: of a model no price is known for, and no cost reported."""
    reported = {} if cost is None else {"gen_ai.usage.cost": cost}
    spans = make_spans(
        [{"start": datetime.now(UTC), "duration_ms": 400, "name": f"chat {model}", "error": error,
          "attributes": {"gen_ai.provider.name": "openai", "gen_ai.operation.name": "chat",
                         "gen_ai.request.model": model, "gen_ai.usage.input_tokens": 100,
                         "gen_ai.usage.output_tokens": 50, **reported,
                         "nexus.operation": "caption"}}] * count,
        service_name=service,
    )  # fmt: skip
    assert export_with_sdk(exporter.base_url, spans)


def early_day_zone(now: datetime) -> str:
    """A zone where the day began less than an hour ago: 60 % of a daily budget spent in it
    forecasts far past the limit, by any reading of the pace."""
    offset = -now.hour if now.hour <= 12 else 24 - now.hour  # local hour 0
    return "Etc/UTC" if offset == 0 else f"Etc/GMT{'-' if offset > 0 else '+'}{abs(offset)}"


def exporter_that_stops(outages: threading.Event) -> Callable[[int], str | None]:
    """A second exporter, healthy until the outages begin, then down (scrapes fail)."""
    return lambda n: None if outages.is_set() else "nexus_exporter_storage_up 1\n"


def exporter_whose_database_fails(outages: threading.Event) -> Callable[[int], str | None]:
    """An exporter whose writes fail once the outages begin: storage down, 503s rising."""

    def render(n: int) -> str:
        if not outages.is_set():
            return "nexus_exporter_storage_up 1\n"
        return f'nexus_exporter_storage_up 0\nnexus_exporter_requests_total{{code="503"}} {n}\n'

    return render


def collector_in_trouble(n: int) -> str:
    """A collector dropping, refusing and queueing spans from the start (counters grow by one
    each scrape; the queue stays 90 % full)."""
    return (
        f"otelcol_exporter_send_failed_spans_total{{{COLLECTOR_EXPORTER}}} {n}\n"
        f'otelcol_receiver_refused_spans_total{{receiver="otlp"}} {n}\n'
        f"otelcol_exporter_queue_size{{{COLLECTOR_EXPORTER}}} 900\n"
        f"otelcol_exporter_queue_capacity{{{COLLECTOR_EXPORTER}}} 1000\n"
    )


def collector_that_stops(outages: threading.Event) -> Callable[[int], str | None]:
    return lambda n: None if outages.is_set() else "otelcol_process_uptime_seconds_total 1\n"


def test_every_alert_reaches_every_channel(database_url: str, tmp_path: Path) -> None:
    outages = threading.Event()  # phase two: the second exporter, its database, a collector
    exporter = start_exporter(database_url, tmp_path, {"NEXUS_API_TOKEN": API_TOKEN})
    try:
        with (
            fake_telegram() as telegram, fake_smtp() as smtp, fake_slack() as slack,
            fake_webhook() as webhook, fake_webhook() as deadman,
            static_target(exporter_that_stops(outages)) as exporter_down,
            static_target(exporter_whose_database_fails(outages)) as storage_down,
            static_target(collector_in_trouble) as collector,
            static_target(collector_that_stops(outages)) as collector_down,
        ):  # fmt: skip
            settings = Settings(
                telegram_bot_token=telegram.token, telegram_chat_id=CHAT_ID,
                telegram_api_url=telegram.url, api_token=API_TOKEN,
                alert_webhook_url=f"{exporter.api_url}/api/alerts/webhook",
                alert_link_url="http://grafana.example:3000", watchdog_url=deadman.url,
                alert_email_to="oncall@example.org", alert_email_from="alerts@example.org",
                smtp_smarthost=f"127.0.0.1:{smtp.port}", smtp_auth_username=smtp.user,
                smtp_auth_password=smtp.password, smtp_require_tls=False,
                slack_webhook_url=slack.url, alert_notify_webhook_url=webhook.url,
            )  # fmt: skip
            am_config = write_alertmanager_config(settings, tmp_path / "am" / "alertmanager.yml",
                                                  fast=True)  # fmt: skip
            rules = tmp_path / "rules"
            assert main(["prometheus-rules", "--out", str(rules),
                         "--time-scale", str(TIME_SCALE)]) == 0  # fmt: skip
            # Calls stored in the same hour "yesterday": a day x 0.01 = 14m24s ago.
            now = time.time()
            backfill(tmp_path / "prom", [
                ('nexus_exporter_rows_written_total{job="nexus-exporter",instance="earlier"}',
                 i, t) for i, t in enumerate(range(int(now) - 1300, int(now) - 500, 10))
            ])  # fmt: skip
            with running_alertmanager(am_config, tmp_path / "am") as alertmanager:
                prom_config = {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(p) for p in sorted(rules.glob("*.yml"))],
                    "alerting": {"alertmanagers": [{"static_configs": [
                        {"targets": [alertmanager.url.removeprefix("http://")]}]}]},
                    "scrape_configs": [
                        {"job_name": "nexus-exporter",
                         "authorization": {"type": "Bearer", "credentials": API_TOKEN},
                         "static_configs": [{"targets": [
                             exporter.base_url.removeprefix("http://"), exporter_down,
                             storage_down]}]},
                        {"job_name": "otel-collector",
                         "static_configs": [{"targets": [collector, collector_down]}]},
                    ],
                }  # fmt: skip
                resend = ["--rules.alert.resend-delay=1s"]
                with running_prometheus(prom_config, tmp_path / "prom", resend) as prometheus:
                    receivers = Receivers(telegram, smtp, slack, webhook, deadman,
                                          exporter.api_url)  # fmt: skip
                    receivers.wait_for(PHASE_ONE | {"Watchdog"}, prometheus, timeout=60)

                    outages.set()
                    cause_llm_and_budget_alerts(exporter, prometheus, receivers)
                    receivers.wait_for(PHASE_TWO, prometheus, timeout=60)
                    assert_messages_carry_the_summaries(webhook, telegram)

            assert telegram.rejected == [] and telegram.refused == []
            assert smtp.refused == [] and slack.refused == [] and webhook.refused == []
    finally:
        exporter.stop()


def assert_messages_carry_the_summaries(webhook: FakeHTTP, telegram: FakeTelegram) -> None:
    """The phone shows what Prometheus wrote: each alert's summary, as the webhook JSON carries
    it (untouched by any template), is a line of a Telegram message as the app displays it."""
    summaries: dict[str, set[str]] = {}
    for payload in webhook.items():
        for alert in payload["alerts"]:
            summaries.setdefault(alert["labels"]["alertname"], set()).add(
                alert["annotations"]["summary"]
            )
    shown = [line for text in telegram.texts() for line in displayed(text).splitlines()]
    assert set(summaries) == PHASE_ONE | PHASE_TWO
    for name, wanted in summaries.items():
        assert wanted & set(shown), (name, wanted)


def cause_llm_and_budget_alerts(
    exporter: ExporterProcess, prometheus: Prometheus, receivers: Receivers
) -> None:
    """Two budgets (one exceeded; one at 60 % an hour into its day), an expensive call, and
    failing calls and calls of an unpriced model until their alerts are delivered."""
    zone = early_day_zone(datetime.now(UTC))
    for name, amount, service in (("over", 1.0, "svc-over"), ("pace", 2.0, "svc-pace")):
        response = httpx.post(
            f"{exporter.api_url}/api/budgets", headers={"Authorization": f"Bearer {API_TOKEN}"},
            json={"name": name, "period": "daily", "amount_usd": amount,
                  "warning_threshold_pct": 50, "timezone": zone, "service_name": service},
            timeout=10,
        )  # fmt: skip
        assert response.status_code == 201, response.text
    send(exporter, "svc-over", "big-model", 0.70, count=2)  # $1.40 of $1: exceeded, expensive
    send(exporter, "svc-pace", "small-model", 0.40, count=3)  # $1.20 of $2: warning, forecast
    deadline = time.monotonic() + 60
    while {"LLMHighErrorRate", "LLMUnpricedCalls"} - receivers.arrived()["telegram"]:
        assert time.monotonic() < deadline, prometheus.alerts()
        send(exporter, "svc-errors", "flaky-model", 0.001, count=10, error="rate limited")
        send(exporter, "svc-new-model", "unpriced-model", None)
        time.sleep(0.5)
