"""Prometheus alert rules, the Alertmanager configuration, and the Telegram client."""

from exporter.alerting.alertmanager import (
    example_settings,
    render_alertmanager_config,
    write_alertmanager_config,
)
from exporter.alerting.errors import AlertingConfigError
from exporter.alerting.rules import render_alert_rules, write_rules
from exporter.alerting.telegram import TelegramError, send_telegram

__all__ = [
    "AlertingConfigError",
    "TelegramError",
    "example_settings",
    "render_alert_rules",
    "render_alertmanager_config",
    "send_telegram",
    "write_alertmanager_config",
    "write_rules",
]
