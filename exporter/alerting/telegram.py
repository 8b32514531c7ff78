"""The Telegram Bot API client: alerts' fallback and the daily digest."""

from __future__ import annotations

import httpx

from exporter.core.settings import Settings


class TelegramError(RuntimeError):
    """Telegram refused or could not be reached. Never carries the bot token."""


def send_telegram(settings: Settings, text: str, *, timeout: float = 10) -> int:
    """Sends an HTML message to the configured chat; returns Telegram's message id."""
    token, chat = settings.telegram_bot_token, settings.telegram_chat_id
    if not token or chat is None:
        raise TelegramError(
            "Telegram is not configured: set TELEGRAM_BOT_TOKEN and TELEGRAM_CHAT_ID"
        )
    url = f"{settings.telegram_api_url.rstrip('/')}/bot{token}/sendMessage"
    payload = {
        "chat_id": chat,
        "text": text,
        "parse_mode": "HTML",
        "disable_web_page_preview": True,
    }
    try:
        response = httpx.post(url, json=payload, timeout=timeout)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        # httpx messages include the URL, and the URL holds the token.
        raise TelegramError(f"Telegram unreachable: {type(exc).__name__}") from None
    if not body.get("ok"):
        raise TelegramError(
            f"Telegram refused the message ({response.status_code}): {body.get('description')}"
        )
    return int(body["result"]["message_id"])
