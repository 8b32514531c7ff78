"""The daily digest: yesterday's exact numbers from the database, sent through the Telegram Bot
API by `nexus-otel digest --send` and, at the configured time, by `nexus-otel serve`."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from exporter.cli import main
from exporter.usage.digest import seconds_until
from tests.alerting.fake_telegram import FakeTelegram, fake_telegram
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.support import free_port, start_exporter

SERVE_CHAT, CLI_CHAT = 111, 222


def call(
    moment: datetime, model: str, provider: str, operation: str, tokens: tuple[int, int],
    cost: float | None, error: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    attributes: dict[str, Any] = {
        "gen_ai.provider.name": provider, "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model, "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1], "nexus.operation": operation,
    }  # fmt: skip
    if cost is not None:
        attributes["gen_ai.usage.cost"] = cost
    return {"start": moment, "attributes": attributes, "error": error}


@pytest.fixture(scope="module")
def telegram() -> Iterator[FakeTelegram]:
    with fake_telegram() as fake:
        yield fake


# How long after its start a serve process's digest is due: each try that came up too late for
# it (a busy machine starts slowly) is stopped and tried again with a longer delay.
DIGEST_DELAYS = (timedelta(seconds=10), timedelta(seconds=30), timedelta(seconds=90))


@pytest.fixture(scope="module")
def day(
    database_url: str, telegram: FakeTelegram, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[date]:
    """Yesterday's calls and more, stored first; then a serve process whose digest is due a few
    seconds after it answers."""
    now = datetime.now(UTC)
    yesterday = now.date() - timedelta(days=1)
    _store_calls(database_url, now, yesterday, tmp_path_factory.mktemp("digest-data"))
    env = {"TELEGRAM_BOT_TOKEN": telegram.token, "TELEGRAM_CHAT_ID": str(SERVE_CHAT),
           "NEXUS_TELEGRAM_API_URL": telegram.url, "NEXUS_TIMEZONE": "UTC"}  # fmt: skip
    for delay in DIGEST_DELAYS:
        due = datetime.now(UTC) + delay
        env["NEXUS_DIGEST_TIME"] = due.strftime("%H:%M:%S")
        exporter = start_exporter(database_url, tmp_path_factory.mktemp("digest"), env)
        if datetime.now(UTC) < due - timedelta(seconds=1):  # up in time for its digest
            break
        exporter.stop()
    else:
        pytest.fail("serve never started before its digest was due")
    try:
        yield yesterday
    finally:
        exporter.stop()


def _store_calls(database_url: str, now: datetime, yesterday: date, log_dir: Path) -> None:
    at = datetime.combine(yesterday, time(10), UTC)
    spans = make_spans([
        call(at, "nexus-digest-a", "openai", "caption", (1000, 100), 0.25),
        call(at + timedelta(hours=1), "nexus-digest-a", "openai", "caption", (2000, 200), 0.5),
        call(at + timedelta(hours=13, minutes=59), "nexus-digest-a", "openai", "caption",
             (3000, 300), 0.125),
        call(at, "nexus-digest-b", "anthropic", "research", (500, 0), 0.0, error="overloaded"),
        call(at, "nexus-digest-c", "groq", "draft", (0, 0), None),  # unknown price
        # Not yesterday: the day before, and today.
        call(at - timedelta(hours=11), "nexus-digest-a", "openai", "caption", (9, 9), 7.0),
        call(now - timedelta(minutes=1), "nexus-digest-a", "openai", "caption", (9, 9), 4.0),
    ], service_name="digest-app")  # fmt: skip
    api_port = free_port()
    exporter = start_exporter(database_url, log_dir, None, "--api-port", str(api_port))
    try:
        assert export_with_sdk(exporter.base_url, spans)
        budget = {"name": "daily-all", "period": "daily", "amount_usd": 10, "timezone": "UTC"}
        response = httpx.post(f"http://127.0.0.1:{api_port}/api/budgets", json=budget)
        assert response.status_code == 201, response.text
    finally:
        exporter.stop()


def expected_digest(day: date) -> str:
    return "\n".join([
        f"📊 <b>LLM digest for {day:%a %d %b %Y}</b> (UTC)",
        "Spend: <b>$0.8750</b> · 5 calls (1 failed, 1 unpriced)",
        "Tokens: 6,500 in · 600 out",
        "",
        "<b>Top operations</b>",
        "1. caption — $0.8750 · 3 calls",
        "2. draft — $0.00 · 1 call",
        "3. research — $0.00 · 1 call",
        "",
        "<b>Top models</b>",
        "1. nexus-digest-a (openai) — $0.8750 · 3 calls",
        "2. nexus-digest-b (anthropic) — $0.00 · 1 call",
        "3. nexus-digest-c (groq) — $0.00 · 1 call",
        "",
        "<b>Budgets now</b>",
        "🟢 daily-all (daily): $4.00 of $10.00 (40%)",
    ])  # fmt: skip


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, telegram: FakeTelegram) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", telegram.token)
    monkeypatch.setenv("TELEGRAM_CHAT_ID", str(CLI_CHAT))
    monkeypatch.setenv("NEXUS_TELEGRAM_API_URL", telegram.url)
    monkeypatch.setenv("NEXUS_TIMEZONE", "UTC")


def sent_to(telegram: FakeTelegram, chat: int) -> list[dict[str, Any]]:
    with telegram.lock:
        return [m for m in telegram.messages if m["chat_id"] == chat]


def test_digest_send_delivers_yesterdays_exact_numbers(
    cli_env: None, database_url: str, day: date, telegram: FakeTelegram,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    assert main(["digest", "--send", "--database-url", database_url]) == 0
    (message,) = sent_to(telegram, CLI_CHAT)
    assert message["text"] == expected_digest(day)
    assert message["parse_mode"] == "HTML"
    out = capsys.readouterr().out
    assert "Spend: $0.8750 · 5 calls (1 failed, 1 unpriced)" in out  # printed without tags


def test_serve_sends_the_digest_at_the_configured_time(day: date, telegram: FakeTelegram) -> None:
    telegram.wait_for(lambda _: sent_to(telegram, SERVE_CHAT), timeout=30, what="daily digest")
    (message,) = sent_to(telegram, SERVE_CHAT)
    assert message["text"] == expected_digest(day)


def test_digest_of_a_given_day_without_calls(
    cli_env: None, database_url: str, day: date, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["digest", "--date", "2020-02-29", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert "LLM digest for Sat 29 Feb 2020" in out and "No LLM calls were stored that day." in out
    assert "Spend: $0.00 · 0 calls (0 failed, 0 unpriced)" in out


def test_send_without_telegram_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("TELEGRAM_CHAT_ID", raising=False)
    assert main(["digest", "--send", "--database-url", database_url]) == 1
    assert "Telegram is not configured" in capsys.readouterr().err


def test_a_refused_message_reports_telegram_and_hides_the_token(
    cli_env: None, monkeypatch: pytest.MonkeyPatch, database_url: str, telegram: FakeTelegram,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:revoked-token")
    assert main(["digest", "--send", "--database-url", database_url]) == 1
    err = capsys.readouterr().err
    assert "Telegram refused the message (401): Unauthorized" in err
    assert "revoked-token" not in err
    assert telegram.refused == ["/bot1:revoked-token/sendMessage"]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yesterday", "--date 'yesterday' is not a date (YYYY-MM-DD)"),
        ("9999-12-31", "--date '9999-12-31' is outside 1970-01-02 to 2200-01-01"),  # a traceback
        ("0001-01-01", "--date '0001-01-01' is outside 1970-01-02 to 2200-01-01"),
    ],
)
def test_a_bad_date_names_the_value(
    database_url: str, capsys: pytest.CaptureFixture[str], value: str, message: str
) -> None:
    assert main(["digest", "--date", value, "--database-url", database_url]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("now", "zone", "seconds"),
    [
        ("2026-11-24T08:59:50+00:00", "UTC", 10),
        ("2026-11-24T09:00:00+00:00", "UTC", 86400),  # just sent: tomorrow's
        ("2026-11-24T07:30:00+00:00", "Europe/Berlin", 1800),  # 08:30 local, 09:00 due
        ("2026-03-28T09:00:00+00:00", "Europe/Berlin", 79200),  # a 23-hour night (DST)
    ],
)
def test_next_digest_time_is_local(now: str, zone: str, seconds: int) -> None:
    at = datetime(2000, 1, 1, 9, 0)
    assert seconds_until(at, zone, datetime.fromisoformat(now)) == seconds
