"""Setting flags: each command lists and accepts only the settings it reads."""

from __future__ import annotations

import argparse
import os

from pydantic import ValidationError

from exporter.core.settings import SECRET_SETTINGS, Settings


def add_settings_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """One flag per setting the command reads, named like its environment variable
    (`--otlp-port` for NEXUS_OTLP_PORT), in the order the settings are declared."""
    if not names:
        return
    group = parser.add_argument_group("settings (flags override the environment)")
    for name, info in Settings.model_fields.items():
        if name in names:
            flag = "--" + name.replace("_", "-")
            help_text = f"{info.description} (env {_env_names(name)[0]}; default: {_default(name)})"
            group.add_argument(
                flag, dest=f"setting_{name}", metavar="VALUE", help=help_text.replace("%", "%%")
            )


def _env_names(name: str) -> list[str]:
    """The environment variables a setting is read from, the one to document first."""
    choices = getattr(Settings.model_fields[name].validation_alias, "choices", None)
    if choices:
        return [str(c) for c in choices if str(c) != name]
    return ["NEXUS_" + name.upper()]


def _default(name: str) -> str:
    info = Settings.model_fields[name]
    value = info.get_default(call_default_factory=True)
    return "unset" if value is None else str(value)


def load_settings(args: argparse.Namespace) -> Settings:
    given = {
        key.removeprefix("setting_"): value
        for key, value in vars(args).items()
        if key.startswith("setting_") and value is not None
    }
    return Settings(**given)


def _setting_source(loc: str, args: argparse.Namespace) -> str:
    """Where a bad value came from, as the user wrote it: the flag when one was given, else the
    environment variable that is set (`TELEGRAM_CHAT_ID`, not a flag that does not exist)."""

    name = _field(loc)  # the error names the field, or the alias the value was read under
    if name is None:
        return loc
    if getattr(args, f"setting_{name}", None) is not None:
        return "--" + name.replace("_", "-")
    set_in_env = {key.upper(): key for key, value in os.environ.items() if value}
    wanted = [env.upper() for env in _env_names(name)]
    return next((set_in_env[env] for env in wanted if env in set_in_env), _env_names(name)[0])


def settings_error(exc: ValidationError, args: argparse.Namespace) -> str:
    lines = []
    for error in exc.errors():
        loc = str(error["loc"][0]) if error["loc"] else ""
        source = _setting_source(loc, args) if loc else "setting"
        lines.append(f"{source} = {_shown(_field(loc), error.get('input'))}: {error['msg']}")
    return "invalid setting: " + "; ".join(lines)


def _field(loc: str) -> str | None:
    """The setting an error's location names, by its field name or an environment name."""
    return next((f for f in Settings.model_fields if loc in (f, *_env_names(f))), None)


def _shown(name: str | None, value: object) -> str:
    """A refused value as an error may show it: a credential never, a database URL masked."""
    if name in SECRET_SETTINGS:
        return "*** (hidden)"
    if name == "database_url" and isinstance(value, str):
        from exporter.core.db import masked_conninfo

        return repr(masked_conninfo(value))
    return repr(value)


def setting_names(names: str) -> tuple[str, ...]:
    """Setting names, checked: a misspelt one fails at import, not as a missing flag."""
    unknown = [name for name in names.split() if name not in Settings.model_fields]
    if unknown:
        raise NameError(f"not settings: {unknown}")
    return tuple(names.split())


# The settings each command reads, and so the only setting flags its --help lists and accepts.
DATABASE = setting_names("database_url data_dir")
CONNECTION_LIMITS = setting_names(
    "header_timeout_seconds body_timeout_seconds body_min_bytes_per_second max_connections"
    " ws_send_timeout_seconds"
)
TELEGRAM = setting_names("telegram_bot_token telegram_chat_id telegram_api_url")
API = (
    DATABASE
    + CONNECTION_LIMITS
    + setting_names(
        "host api_port api_token allow_unauthenticated api_max_body_bytes cors_origins timezone"
        " alert_webhook_max_body_bytes ws_queue_max_bytes daily_budget_usd budget_warning_threshold"
    )
)
SERVE = (
    API
    + TELEGRAM
    + setting_names(
        "otlp_port ingest_token metrics_token prices_file store_content max_body_bytes"
        " decode_processes batch_max_rows write_connections queue_max_rows write_timeout_seconds"
        " retry_after_seconds"
        " metrics_max_series metrics_max_budgets retention_days digest_time"
    )
)
DEMO = DATABASE + setting_names("host otlp_port api_port api_token daily_budget_usd")
ALERTMANAGER = TELEGRAM + setting_names(
    "alert_webhook_url alert_link_url watchdog_url api_port api_token"
    " alert_email_to alert_email_from smtp_smarthost smtp_auth_username smtp_auth_password"
    " smtp_require_tls slack_webhook_url slack_channel alert_notify_webhook_url"
)
