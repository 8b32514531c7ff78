"""The alert channels besides Telegram and the history: email, Slack and a webhook of the user's
own, each on when its destination is set, each with the message templates of
alertmanager/templates."""

from __future__ import annotations

from html import escape
from typing import Any

from exporter.alerting.errors import AlertingConfigError
from exporter.core.settings import Settings

EMAIL_SUBJECT = '{{ template "nexus.email.subject" . }}'
EMAIL_HTML = '{{ template "nexus.email.html" . }}'
EMAIL_TEXT = '{{ template "nexus.email.text" . }}'
SLACK_TITLE = '{{ template "nexus.slack.title" . }}'
SLACK_TEXT = '{{ template "nexus.slack.text" . }}'
SLACK_COLOUR = '{{ template "nexus.slack.colour" . }}'
# Alertmanager's webhook payload holds every alert of a group unless bounded; the history
# webhook uses the same bound.
WEBHOOK_MAX_ALERTS = 100


def dashboards_link(settings: Settings) -> str | None:
    """The Grafana overview that every message links to, when NEXUS_ALERT_LINK_URL is set."""
    if not settings.alert_link_url:
        return None
    return settings.alert_link_url.rstrip("/") + "/d/nexus-overview"


def _literal(text: str) -> str:
    """`text` inside a template string: Alertmanager would read `{{` in a URL as template code."""
    return text.replace("{{", '{{ "{{" }}')


def email(settings: Settings) -> dict[str, Any] | None:
    """`email_configs` entry, or None when NEXUS_ALERT_EMAIL_TO is unset."""
    if not settings.alert_email_to:
        return None
    missing = [
        env
        for env, value in (
            ("NEXUS_ALERT_EMAIL_FROM", settings.alert_email_from),
            ("NEXUS_SMTP_SMARTHOST", settings.smtp_smarthost),
        )
        if not value
    ]
    if missing:
        raise AlertingConfigError(
            f"{' and '.join(missing)} not set: alert mail (NEXUS_ALERT_EMAIL_TO) needs a sender "
            "and an SMTP server"
        )
    if bool(settings.smtp_auth_username) != bool(settings.smtp_auth_password):
        missing_auth = (
            "NEXUS_SMTP_AUTH_PASSWORD"
            if settings.smtp_auth_username
            else "NEXUS_SMTP_AUTH_USERNAME"
        )
        raise AlertingConfigError(
            f"{missing_auth} is not set: SMTP authentication needs both user and password"
        )
    html, text = EMAIL_HTML, EMAIL_TEXT
    if link := dashboards_link(settings):
        html += (
            f'\n<p style="margin:0"><a href="{_literal(escape(link))}">Open the dashboards</a></p>'
        )
        text += f"\n\nDashboards: {_literal(link)}"
    config: dict[str, Any] = {
        "to": settings.alert_email_to,
        "from": settings.alert_email_from,
        "smarthost": settings.smtp_smarthost,
        "require_tls": settings.smtp_require_tls,
        "headers": {"Subject": EMAIL_SUBJECT},
        "html": html,
        "text": text,
        "send_resolved": True,
    }
    if settings.smtp_auth_username:
        config["auth_username"] = settings.smtp_auth_username
        config["auth_password"] = settings.smtp_auth_password
    return config


def slack(settings: Settings) -> dict[str, Any] | None:
    """`slack_configs` entry, or None when NEXUS_SLACK_WEBHOOK_URL is unset."""
    if not settings.slack_webhook_url:
        return None
    config: dict[str, Any] = {
        "api_url": settings.slack_webhook_url,
        "color": SLACK_COLOUR,
        "title": SLACK_TITLE,
        "text": SLACK_TEXT,
        "fallback": SLACK_TITLE,
        "send_resolved": True,
    }
    if link := dashboards_link(settings):
        config["title_link"] = _literal(link)
    if settings.slack_channel:
        config["channel"] = settings.slack_channel
    return config


def notify_webhook(settings: Settings) -> dict[str, Any] | None:
    """`webhook_configs` entry for the user's own URL, or None when unset. It gets no token of
    ours: the API token is for this product's webhook only."""
    if not settings.alert_notify_webhook_url:
        return None
    return {
        "url": settings.alert_notify_webhook_url,
        "send_resolved": True,
        "max_alerts": WEBHOOK_MAX_ALERTS,
    }
