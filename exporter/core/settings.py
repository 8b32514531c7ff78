"""One settings class for the whole server side, read from the environment (and CLI flags)."""

from __future__ import annotations

from datetime import time
from decimal import Decimal
from pathlib import Path

import platformdirs
import psycopg
from psycopg.conninfo import conninfo_to_dict
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from exporter.core.zones import check_zone


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("nexus-otel", appauthor=False))


# Settings whose values are credentials: an error refusing one never shows it (the database
# URL is shown with its password masked).
SECRET_SETTINGS = frozenset(
    {
        "ingest_token",
        "api_token",
        "metrics_token",
        "telegram_bot_token",
        "smtp_auth_password",
        "slack_webhook_url",
        "alert_notify_webhook_url",
        "watchdog_url",
    }
)


class Settings(BaseSettings):
    """Every setting has an environment name (NEXUS_*, or the name deployments already use:
    TELEGRAM_BOT_TOKEN, DAILY_BUDGET_USD, ...) and a CLI flag of the same name
    (`--database-url` for NEXUS_DATABASE_URL) on the commands that read it."""

    model_config = SettingsConfigDict(
        env_prefix="NEXUS_",
        populate_by_name=True,
        extra="ignore",
        validate_default=True,
        env_ignore_empty=True,  # `VAR=` (compose's `${VAR:-}`) means unset
    )

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset = an embedded server under data_dir"
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="embedded PostgreSQL home")
    host: str = Field(default="127.0.0.1", description="address the OTLP and API ports bind to")
    otlp_port: int = Field(
        default=4318, ge=0, le=65535, description="OTLP/HTTP ingest and /metrics"
    )
    api_port: int = Field(default=8000, ge=0, le=65535, description="the FastAPI service")
    prices_file: Path | None = Field(default=None, description="YAML of price overrides")
    store_content: bool = Field(default=False, description="keep prompt/completion attributes")
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="largest OTLP body accepted, after gunzip"
    )
    decode_processes: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description="worker processes that decode OTLP requests (default: one per core, "
        "none on a single core; 0 decodes in the exporter process)",
    )
    batch_max_rows: int = Field(default=5000, gt=0, description="rows per database transaction")
    write_connections: int = Field(
        default=2,
        ge=1,
        le=16,
        description="database connections ingest stores calls on at once",
    )
    queue_max_rows: int = Field(
        default=50_000, gt=0, description="rows waiting for the database before ingest says 503"
    )
    write_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="how long a request waits for its rows to be stored",
    )
    retry_after_seconds: int = Field(default=5, gt=0, description="Retry-After on a 503")
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="a request's head must arrive within this from the connection's start or "
        "the previous response, or the connection is closed (408)",
    )
    body_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        allow_inf_nan=False,
        description="a body being received must bring body_min_bytes_per_second in every "
        "window of this many seconds, or the connection is closed (408)",
    )
    body_min_bytes_per_second: int = Field(
        default=16 * 1024, ge=0, description="slowest body upload accepted (see body_timeout)"
    )
    max_connections: int = Field(
        default=1000,
        gt=0,
        description="open connections per port; one more is answered 503 and closed",
    )
    api_max_body_bytes: int = Field(
        default=1024 * 1024, gt=0, description="largest API request body (413 past it)"
    )
    alert_webhook_max_body_bytes: int = Field(
        default=4 * 1024 * 1024, gt=0, description="largest alert webhook body (413 past it)"
    )
    ws_queue_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        gt=0,
        description="live-feed bytes waiting for one WebSocket client before it is dropped (1008)",
    )
    ws_send_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="how long a WebSocket client may leave sent data unread before it is dropped",
    )
    allow_unauthenticated: bool = Field(
        default=False,
        description="serve an open API (no api_token) on an address other than loopback",
    )
    ingest_token: str | None = Field(default=None, description="bearer token for /v1/traces")
    api_token: str | None = Field(default=None, description="bearer token for the API")
    metrics_token: str | None = Field(
        default=None,
        description="bearer token for /metrics (unset: the API token, else the ingest token)",
    )
    metrics_max_series: int = Field(
        default=1000,
        gt=0,
        le=1_000_000,
        description="label sets (service, provider, model, operations) with LLM series of "
        "their own; calls of further ones go to one overflow series",
    )
    metrics_max_budgets: int = Field(
        default=2000,
        gt=0,
        le=1_000_000,
        description="budgets with gauges of their own (those of highest usage)",
    )
    daily_budget_usd: Decimal | None = Field(
        default=None,
        gt=0,
        validation_alias=AliasChoices("DAILY_BUDGET_USD", "daily_budget_usd"),
        description="creates a default daily budget",
    )
    budget_warning_threshold: Decimal = Field(
        default=Decimal(80),
        gt=0,
        le=100,
        validation_alias=AliasChoices("BUDGET_WARNING_THRESHOLD", "budget_warning_threshold"),
        description="percent of a budget at which to warn",
    )
    timezone: str = Field(
        default="UTC", description="IANA zone of 'today', reports and default budget periods"
    )
    retention_days: int = Field(
        default=90,
        gt=0,
        le=100_000,  # about 270 years: the cutoff stays a date Python and PostgreSQL hold
        description="days raw calls are kept (summaries are kept forever)",
    )
    cors_origins: str = Field(
        default="", description="comma-separated origins allowed to call the API from a browser"
    )
    telegram_bot_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TELEGRAM_BOT_TOKEN", "telegram_bot_token"),
        description="Telegram bot that sends alerts and the digest; unset = no Telegram",
    )
    telegram_chat_id: int | None = Field(
        default=None,
        validation_alias=AliasChoices("TELEGRAM_CHAT_ID", "telegram_chat_id"),
        description="Telegram chat (a number) the bot writes to",
    )
    telegram_api_url: str = Field(
        default="https://api.telegram.org", description="Telegram Bot API server"
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="where Alertmanager posts alerts for the history; unset = this host's API",
    )
    alert_link_url: str | None = Field(
        default=None, description="Grafana URL that alert messages link to"
    )
    watchdog_url: str | None = Field(
        default=None, description="dead man's switch URL that receives the Watchdog alert"
    )
    # Alert channels besides Telegram: each is on when its destination is set.
    alert_email_to: str | None = Field(
        default=None,
        description="comma-separated addresses alerts are mailed to; unset = no email",
    )
    alert_email_from: str | None = Field(
        default=None, description="sender address of alert mail (needed with --alert-email-to)"
    )
    smtp_smarthost: str | None = Field(
        default=None, description="SMTP server host:port alert mail goes through (e.g. :587)"
    )
    smtp_auth_username: str | None = Field(
        default=None, description="SMTP login; unset = no authentication"
    )
    smtp_auth_password: str | None = Field(default=None, description="SMTP password")
    smtp_require_tls: bool = Field(
        default=True,
        description="refuse to send alert mail unless the server offers STARTTLS",
    )
    slack_webhook_url: str | None = Field(
        default=None, description="Slack incoming-webhook URL alerts post to; unset = no Slack"
    )
    slack_channel: str | None = Field(
        default=None, description="Slack channel (#name) to post to; unset = the webhook's own"
    )
    alert_notify_webhook_url: str | None = Field(
        default=None,
        description="your own URL that receives warning and critical alerts as Alertmanager's "
        "webhook JSON (besides the alert history); unset = none",
    )
    digest_time: time = Field(
        default=time(9, 0), description="local time (in --timezone) of the daily Telegram digest"
    )

    @field_validator("timezone")
    @classmethod
    def _is_iana_zone(cls, value: str) -> str:
        return check_zone(value)

    @field_validator("ingest_token", "api_token", "metrics_token")
    @classmethod
    def _is_header_safe(cls, value: str | None) -> str | None:
        # A token travels in an HTTP header: clients send other characters as UTF-8, servers
        # read them as Latin-1, and browsers refuse them, so such a token could never match.
        if value and (value != value.strip() or not all(" " <= char <= "~" for char in value)):
            raise ValueError(
                "a token may hold only printable ASCII characters (no accents), and no space at"
                " either end: it is sent in an HTTP header"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _is_postgres_conninfo(cls, value: str | None) -> str | None:
        """A postgresql:// URL or a libpq `key=value` string."""
        if not value:
            return None
        if "://" in value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a postgresql:// URL or a libpq key=value string")
        try:
            conninfo_to_dict(value)
        except psycopg.ProgrammingError as exc:
            raise ValueError(f"not a valid PostgreSQL connection string: {exc}") from None
        return value
