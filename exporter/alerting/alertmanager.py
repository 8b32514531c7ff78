"""The Alertmanager configuration, written from settings (`nexus-otel alertmanager-config`):
Alertmanager never expands environment variables."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import Any

import yaml

from exporter.alerting import channels
from exporter.alerting.errors import AlertingConfigError
from exporter.core.files import bundled_dir
from exporter.core.settings import Settings

TEMPLATE_GLOB = "templates/*.tmpl"
MESSAGE = '{{ template "nexus.telegram.message" . }}'
# Placeholders of the shipped alertmanager/alertmanager.yml (mountable, but sends nowhere real).
EXAMPLE_BOT_TOKEN = "123456789:replace-with-your-bot-token"  # noqa: S105
EXAMPLE_CHAT_ID = -1001234567890


def webhook_url(settings: Settings) -> str:
    return settings.alert_webhook_url or (
        f"http://127.0.0.1:{settings.api_port}/api/alerts/webhook"
    )


def alertmanager_config(settings: Settings, *, fast: bool = False) -> dict[str, Any]:
    """The Alertmanager config: the alert-history webhook and, for warning and critical
    alerts, every channel configured (Telegram, email, Slack, the user's webhook); grouping,
    and critical-inhibits-warning. `fast` shortens the waits to seconds, for tests."""
    notify = _notifications(settings)
    receivers = [
        _receiver("critical", settings, notify),
        _receiver("warning", settings, notify),
        _receiver("history", settings, {}),
        _watchdog_receiver(settings),
    ]
    return {
        "global": {"resolve_timeout": "5m"},
        "templates": [TEMPLATE_GLOB],
        "route": _route(fast),
        "receivers": receivers,
        "inhibit_rules": [
            {  # an exceeded budget makes its warning (and forecast) noise
                "source_matchers": ['severity="critical"', 'budget=~".+"'],
                "target_matchers": ['severity="warning"', 'budget=~".+"'],
                "equal": ["budget"],
            },
            {  # no calls stored is a consequence while the exporter or collector is down,
                # or the exporter cannot write
                "source_matchers": [
                    'alertname=~"NexusExporterDown|NexusStorageUnavailable|NexusCollectorDown"'
                ],
                "target_matchers": ['alertname="LLMNoCallsIngested"'],
            },
            {  # the collector's queue fills and it refuses spans because the exporter does
                # not take them: one cause, one page
                "source_matchers": ['alertname=~"NexusExporterDown|NexusStorageUnavailable"'],
                "target_matchers": [
                    'alertname=~"NexusCollectorQueueNearlyFull|NexusCollectorRefusingSpans"'
                ],
            },
        ],
    }


def _route(fast: bool) -> dict[str, Any]:
    waits = {
        "critical": ("1s", "1s", "2s") if fast else ("10s", "1m", "1h"),
        "warning": ("1s", "1s", "2s") if fast else ("30s", "5m", "4h"),
    }
    routes: list[dict[str, Any]] = [
        {
            "receiver": "watchdog",
            "matchers": ['alertname="Watchdog"'],
            "group_wait": "0s",
            "repeat_interval": "1m" if fast else "5m",
        },
    ]
    for severity, (wait, interval, repeat) in waits.items():
        routes.append(
            {
                "receiver": severity,
                "matchers": [f'severity="{severity}"'],
                "group_wait": wait,
                "group_interval": interval,
                "repeat_interval": repeat,
            }
        )
    return {
        "receiver": "history",
        "group_by": ["alertname", "budget", "gen_ai_request_model", "service_name"],
        "group_wait": "1s" if fast else "30s",
        "group_interval": "1s" if fast else "5m",
        "repeat_interval": "1m" if fast else "12h",
        "routes": routes,
    }


def _telegram(settings: Settings) -> dict[str, Any] | None:
    token, chat = settings.telegram_bot_token, settings.telegram_chat_id
    if not token and chat is None:
        return None
    if not token or chat is None:
        missing = "TELEGRAM_CHAT_ID" if token else "TELEGRAM_BOT_TOKEN"
        raise AlertingConfigError(f"{missing} is not set: Telegram needs both token and chat id")
    message = MESSAGE
    if link := channels.dashboards_link(settings):
        message += f'\n<a href="{html.escape(link)}">Open the dashboards</a>'
    return {
        "bot_token": token,
        "chat_id": chat,
        "api_url": settings.telegram_api_url,
        "parse_mode": "HTML",
        "message": message,
        "send_resolved": True,
    }


def _webhook(url: str, settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "url": url,
        "send_resolved": True,
        "max_alerts": channels.WEBHOOK_MAX_ALERTS,
    }
    if settings.api_token:
        config["http_config"] = {
            "authorization": {"type": "Bearer", "credentials": settings.api_token}
        }
    return config


def _notifications(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """The configured channels, by Alertmanager's key for them (the user's webhook is added to
    the history's `webhook_configs`)."""
    found = {
        "telegram_configs": _telegram(settings),
        "email_configs": channels.email(settings),
        "slack_configs": channels.slack(settings),
        "webhook_configs": channels.notify_webhook(settings),
    }
    return {key: [config] for key, config in found.items() if config}


def _receiver(
    name: str, settings: Settings, notify: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    receiver: dict[str, Any] = {
        "name": name,
        "webhook_configs": [_webhook(webhook_url(settings), settings)],
    }
    for key, configs in notify.items():
        receiver[key] = receiver.get(key, []) + configs
    return receiver


def _watchdog_receiver(settings: Settings) -> dict[str, Any]:
    hooks = [_webhook(webhook_url(settings), settings)]
    if settings.watchdog_url:  # a dead man's switch expects the heartbeat, without our token
        hooks.append({"url": settings.watchdog_url, "send_resolved": False})
    return {"name": "watchdog", "webhook_configs": hooks}


def render_alertmanager_config(settings: Settings, *, fast: bool = False) -> str:
    header = (
        "# Generated by `nexus-otel alertmanager-config` from TELEGRAM_BOT_TOKEN, "
        "TELEGRAM_CHAT_ID,\n# NEXUS_ALERT_EMAIL_TO and NEXUS_SMTP_*, NEXUS_SLACK_WEBHOOK_URL, "
        "NEXUS_ALERT_NOTIFY_WEBHOOK_URL,\n# NEXUS_ALERT_WEBHOOK_URL and NEXUS_API_TOKEN: "
        "edit those, not this file.\n"
    )
    config = alertmanager_config(settings, fast=fast)
    body = yaml.dump(config, Dumper=_PlainDumper, sort_keys=False, width=100)
    return header + body


class _PlainDumper(yaml.SafeDumper):
    """Writes repeated values out again: no YAML anchors in a file people read."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def write_alertmanager_config(
    settings: Settings, output: Path, *, fast: bool = False, mode: int = 0o600
) -> Path:
    """Writes the config (`mode`: it may hold tokens and passwords) and, beside it, the message
    templates it loads."""
    text = render_alertmanager_config(settings, fast=fast)  # fails before writing anything
    output.parent.mkdir(parents=True, exist_ok=True)
    templates = output.parent / "templates"
    templates.mkdir(exist_ok=True)
    for template in bundled_dir("alertmanager/templates").glob("*.tmpl"):
        if not (templates / template.name).exists() or not template.samefile(
            templates / template.name
        ):
            shutil.copyfile(template, templates / template.name)
    output.touch(mode=mode)
    output.chmod(mode)  # before the token is written
    output.write_text(text)
    return output


def example_settings() -> Settings:
    """The settings the shipped alertmanager/alertmanager.yml is generated from."""
    return Settings(
        telegram_bot_token=EXAMPLE_BOT_TOKEN,
        telegram_chat_id=EXAMPLE_CHAT_ID,
        telegram_api_url="https://api.telegram.org",
        alert_webhook_url="http://api:8000/api/alerts/webhook",
        alert_link_url=None,
        watchdog_url=None,
        api_token=None,
        alert_email_to=None,  # the other channels stay off: placeholders would send nowhere
        slack_webhook_url=None,
        alert_notify_webhook_url=None,
    )
