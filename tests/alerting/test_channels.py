"""Every alert channel end to end with the real Alertmanager and the shipped templates: Telegram,
email (a local SMTP server), Slack (a local incoming webhook) and a webhook of the user's own each
receive the alert with the expected text; Telegram's and Slack's rules on escaping and length
hold for hostile label values and long descriptions."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.alerting import write_alertmanager_config
from exporter.core.settings import Settings
from tests.alerting.fake_channels import FakeHTTP, FakeSMTP, fake_slack, fake_smtp, fake_webhook
from tests.alerting.fake_telegram import FakeTelegram, fake_telegram
from tests.promstack import Alertmanager, running_alertmanager

pytestmark = pytest.mark.e2e
CHAT_ID = -100555
RUNBOOK = "https://github.com/nexus-otel/nexus-otel/blob/main/docs/RUNBOOK.md"
STARTS = datetime(2026, 12, 6, 8, 33, 12, tzinfo=UTC)


@dataclass
class Channels:
    alertmanager: Alertmanager
    telegram: FakeTelegram
    smtp: FakeSMTP
    slack: FakeHTTP
    webhook: FakeHTTP
    history: FakeHTTP

    def post(self, *alerts: dict[str, Any]) -> None:
        url = f"{self.alertmanager.url}/api/v2/alerts"
        httpx.post(url, json=list(alerts), timeout=10).raise_for_status()

    def assert_nothing_refused(self) -> None:
        assert self.telegram.rejected == [] and self.telegram.refused == []
        assert self.smtp.refused == [] and self.slack.refused == []
        assert self.webhook.refused == [] and self.history.refused == []


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Channels]:
    work = tmp_path_factory.mktemp("channels")
    with (
        fake_telegram() as telegram, fake_smtp() as smtp, fake_slack() as slack,
        fake_webhook() as webhook, fake_webhook() as history,
    ):  # fmt: skip
        settings = Settings(
            telegram_bot_token=telegram.token, telegram_chat_id=CHAT_ID,
            telegram_api_url=telegram.url, alert_webhook_url=history.url,
            alert_link_url="http://grafana.example:3000", api_token=None, watchdog_url=None,
            alert_email_to="oncall@example.org, finance@example.org",
            alert_email_from="nexus-otel <alerts@example.org>",
            smtp_smarthost=f"127.0.0.1:{smtp.port}", smtp_auth_username=smtp.user,
            smtp_auth_password=smtp.password,
            smtp_require_tls=False,  # the local server offers no STARTTLS
            slack_webhook_url=slack.url, slack_channel="#llm-alerts",
            alert_notify_webhook_url=webhook.url,
        )  # fmt: skip
        config = write_alertmanager_config(settings, work / "alertmanager.yml", fast=True)
        with running_alertmanager(config, work) as alertmanager:
            yield Channels(alertmanager, telegram, smtp, slack, webhook, history)


def alert(name: str, severity: str, labels: dict[str, str], summary: str, description: str,
          ends: datetime | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "labels": {"alertname": name, "severity": severity, **labels},
        "annotations": {"summary": summary, "description": description,
                        "runbook_url": f"{RUNBOOK}#{name.lower()}"},
        "startsAt": STARTS.isoformat(),
        **({"endsAt": ends.isoformat()} if ends else {}),
    }  # fmt: skip


EXCEEDED = alert(
    "LLMBudgetExceeded", "critical",
    {"budget": "daily-llm", "period": "daily", "service_name": "carousel"},
    "Budget daily-llm is exceeded",
    "daily budget daily-llm has spent $1.30, over its limit of $1.00 (130%).",
)  # fmt: skip


def test_a_critical_alert_reaches_every_channel_with_its_text(channels: Channels) -> None:
    channels.post(EXCEEDED)

    telegram = channels.telegram.wait_for(lambda t: "LLMBudgetExceeded" in t)
    assert telegram == (
        "🔴 CRITICAL · <b>LLMBudgetExceeded</b>\n"
        "<b>Budget daily-llm is exceeded</b>\n"
        "daily budget daily-llm has spent $1.30, over its limit of $1.00 (130%).\n"
        "Budget: <code>daily-llm</code> (daily)\n"
        "Service: <code>carousel</code>\n"
        f'<a href="{RUNBOOK}#llmbudgetexceeded">Runbook</a>\n'
        '<a href="http://grafana.example:3000/d/nexus-overview">Open the dashboards</a>'
    )

    mail = channels.smtp.wait_for(lambda m: "daily-llm" in m.subject, what="the mail")
    assert mail.subject == "[CRITICAL] Budget daily-llm is exceeded"
    assert mail.sender == "alerts@example.org"
    assert mail.recipients == ["oncall@example.org", "finance@example.org"]
    assert mail.auth == (channels.smtp.user, channels.smtp.password)
    assert str(mail.message["From"]) == "nexus-otel <alerts@example.org>"
    assert mail.body("plain") == (
        "CRITICAL · LLMBudgetExceeded\n"
        "Budget daily-llm is exceeded\n"
        "daily budget daily-llm has spent $1.30, over its limit of $1.00 (130%).\n"
        "Budget: daily-llm (daily)\n"
        "Service: carousel\n"
        f"Runbook: {RUNBOOK}#llmbudgetexceeded\n"
        "Since: 2026-12-06 08:33:12 UTC\n\n"
        "Dashboards: http://grafana.example:3000/d/nexus-overview"
    )
    html = mail.body("html")
    assert "border-left:6px solid #d1242f" in html  # critical red
    assert "CRITICAL · LLMBudgetExceeded</p>" in html
    assert '<h2 style="margin:4px 0 8px;font-size:18px">Budget daily-llm is exceeded</h2>' in html
    assert "<code>daily-llm</code> (daily)" in html
    assert f'<a href="{RUNBOOK}#llmbudgetexceeded">Runbook</a>' in html
    assert '<a href="http://grafana.example:3000/d/nexus-overview">Open the dashboards</a>' in html

    slack = channels.slack.wait_for(lambda p: "LLMBudgetExceeded" in str(p))
    assert slack["channel"] == "#llm-alerts"
    (attachment,) = slack["attachments"]
    assert attachment["color"] == "danger"
    assert attachment["title"] == "🔴 CRITICAL: Budget daily-llm is exceeded"
    assert attachment["fallback"] == attachment["title"]
    assert attachment["title_link"] == "http://grafana.example:3000/d/nexus-overview"
    assert attachment["text"] == (
        "*🔴 CRITICAL · LLMBudgetExceeded*\n"
        "*Budget daily-llm is exceeded*\n"
        "daily budget daily-llm has spent $1.30, over its limit of $1.00 (130%).\n"
        "Budget: `daily-llm` (daily)\n"
        "Service: `carousel`\n"
        f"<{RUNBOOK}#llmbudgetexceeded|Runbook>"
    )

    for hook in (channels.webhook, channels.history):
        payload = hook.wait_for(lambda p: p["commonLabels"].get("alertname") == "LLMBudgetExceeded")
        assert payload["receiver"] == "critical" and payload["status"] == "firing"
        (delivered,) = payload["alerts"]
        assert delivered["labels"] == EXCEEDED["labels"]
        assert delivered["annotations"] == EXCEEDED["annotations"]
    assert "authorization" not in str(channels.webhook.items()).lower()
    channels.assert_nothing_refused()


def test_resolved_alerts_say_so_on_every_channel(channels: Channels) -> None:
    firing = alert("LLMExpensiveCall", "warning",
                   {"gen_ai_request_model": "o3-pro", "gen_ai_provider_name": "openai"},
                   "A call to o3-pro cost more than $0.50", "1 call(s) to o3-pro ...")  # fmt: skip
    channels.post(firing)
    channels.slack.wait_for(lambda p: "o3-pro" in str(p), what="the firing alert")
    channels.post({**firing, "endsAt": datetime.now(UTC).isoformat()})

    telegram = channels.telegram.wait_for(
        lambda t: t.startswith("✅ RESOLVED · <b>LLMExpensiveCall")
    )
    assert "Model: <code>o3-pro</code> · openai" in telegram
    mail = channels.smtp.wait_for(lambda m: m.subject.startswith("[RESOLVED]"), what="the mail")
    assert mail.subject == "[RESOLVED] A call to o3-pro cost more than $0.50"
    assert "RESOLVED · LLMExpensiveCall\n" in mail.body("plain")
    assert "border-left:6px solid #1a7f37" in mail.body("html")  # resolved green
    slack = channels.slack.wait_for(lambda p: p["attachments"][0]["color"] == "good")
    assert slack["attachments"][0]["title"] == "✅ RESOLVED: A call to o3-pro cost more than $0.50"
    channels.webhook.wait_for(lambda p: p["status"] == "resolved", what="resolved webhook")
    channels.assert_nothing_refused()


def test_hostile_values_and_long_groups_stay_valid_and_short(channels: Channels) -> None:
    """Label values with <, > and &, descriptions of 2,000 characters, five alerts in one group
    (one model and service, five operations):
    Telegram gets HTML it parses within 4,096 characters, Slack escaped mrkdwn, email escaped
    HTML."""
    long_description = "Spend & <tokens> rose. " * 90  # 2,070 characters
    alerts = [
        alert("LLMHighErrorRate", "warning",
              {"gen_ai_request_model": "<gpt&co>", "gen_ai_provider_name": "a&b",
               "service_name": "svc<1>&" + "x" * 200, "nexus_operation": f"op{n}"},
              f"Errors & <failures> on model {n} " + "y" * 300, long_description)
        for n in range(5)
    ]  # fmt: skip
    channels.post(*alerts)

    # Alertmanager may notify part of a group first: wait for the notification of all five.
    text = channels.telegram.wait_for(lambda t: "… and 5 alerts in all." in t)
    assert text.count("<b>LLMHighErrorRate</b>") == 3  # three shown
    assert text.endswith(
        "… and 5 alerts in all.\n"
        '<a href="http://grafana.example:3000/d/nexus-overview">Open the dashboards</a>'
    )
    assert "Model: <code>&lt;gpt&amp;co&gt;</code> · a&amp;b" in text
    assert "Spend &amp; &lt;tokens&gt; rose." in text
    # Escaped, then cut to 400 characters of description, 64 of each label value.
    assert ("Spend &amp; &lt;tokens&gt; rose. " * 12 + "Spen…\n") in text  # 12 x 33 + 4
    assert "Service: <code>svc&lt;1&gt;&amp;" + "x" * 47 + "…</code>" in text
    assert channels.telegram.rejected == []

    slack = channels.slack.wait_for(lambda p: "(5 alerts)" in p["attachments"][0]["title"])
    (attachment,) = slack["attachments"]
    assert attachment["color"] == "warning"
    assert attachment["title"].startswith("🟠 WARNING: Errors & <failures> on model ")
    assert attachment["title"].endswith("… (5 alerts)")
    assert "Model: `&lt;gpt&amp;co&gt;` · a&amp;b" in attachment["text"]

    mail = channels.smtp.wait_for(lambda m: "(5 alerts)" in m.subject, what="the mail")
    html = mail.body("html")
    assert "<code>&lt;gpt&amp;co&gt;</code> · a&amp;b" in html
    assert "<tokens>" not in html and "&lt;tokens&gt;" in html
    assert html.count("LLMHighErrorRate</p>") == 5  # mail has room for every alert
    assert "Model: <gpt&co> · a&b" in mail.body("plain")
    channels.assert_nothing_refused()


def test_values_made_of_markup_characters_still_reach_telegram(channels: Channels) -> None:
    """Values cut before escaping grew fivefold once escaped: three alerts whose model name is
    120 characters of `&<>` made a message Alertmanager cut at 4,096 characters inside an
    entity, which Telegram refused (can't parse entities), at every retry. Escaped, then cut,
    with the entity the cut split left out, the message is short and valid."""
    model = "&<>" * 40
    alerts = [
        alert("LLMExpensiveCall", "warning",
              {"gen_ai_request_model": model, "gen_ai_provider_name": "openai",
               "service_name": "dense", "nexus_operation": f"op{n}"},
              f"A call to {model} cost more than $0.50",
              f"1 call(s) to {model} (openai, operation op{n}, service dense) cost more.")
        for n in range(3)
    ]  # fmt: skip
    channels.post(*alerts)
    text = channels.telegram.wait_for(
        lambda t: "<code>dense</code>" in t and t.count("<b>LLM") == 3
    )
    escaped = "&amp;&lt;&gt;"  # 13 characters
    # 10 + 11 x 13 + "&amp;&l" = 160, the "&l" left out; 13 + 29 x 13 + "&amp;&lt;&" = 400
    assert f"<b>A call to {escaped * 11}&amp;…</b>" in text
    assert f"\n1 call(s) to {escaped * 29}&amp;&lt;…\n" in text
    assert f"Model: <code>{escaped * 4}&amp;&lt;…</code> · openai" in text  # 4 x 13 + 12
    assert len(text) < 4096
    channels.assert_nothing_refused()


def test_with_tls_required_no_mail_or_password_travels_in_clear(tmp_path: Path) -> None:
    """NEXUS_SMTP_REQUIRE_TLS (on by default) against a server that offers no STARTTLS:
    Alertmanager refuses to send, says why, and never hands over the password."""
    with fake_smtp() as smtp, fake_webhook() as history:
        settings = Settings(
            alert_webhook_url=history.url, api_token=None, watchdog_url=None,
            telegram_bot_token=None, telegram_chat_id=None, alert_link_url=None,
            alert_email_to="oncall@example.org", alert_email_from="alerts@example.org",
            smtp_smarthost=f"127.0.0.1:{smtp.port}", smtp_auth_username=smtp.user,
            smtp_auth_password=smtp.password,
        )  # fmt: skip
        assert settings.smtp_require_tls is True
        config = write_alertmanager_config(settings, tmp_path / "alertmanager.yml", fast=True)
        with running_alertmanager(config, tmp_path) as alertmanager:
            url = f"{alertmanager.url}/api/v2/alerts"
            httpx.post(url, json=[EXCEEDED], timeout=10).raise_for_status()
            history.wait_for(lambda p: p["receiver"] == "critical", what="the history")
            alertmanager.wait_for(
                lambda: "does not advertise the STARTTLS extension" in alertmanager.log(),
                what="the refusal to mail in clear text",
            )
            assert smtp.items() == [] and smtp.logins == []
            assert smtp.password not in alertmanager.log()
