"""Dashboard stats, analytics, content ROI, reports and retention: every number from known calls
stored through the ingest path, with "today" in Asia/Kolkata (UTC+5:30, so days start at :30)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from exporter.api import create_api_app
from exporter.core.settings import Settings
from exporter.usage.retention import apply_retention, partitions
from tests.api.conftest import MODEL_A, MODEL_B, call_spec, sending_to
from tests.support import api_ratio, api_usd, fresh_database, query

ZONE = "Asia/Kolkata"
NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)  # 17:30 in Kolkata


def at(day: int, hour: int, minute: int = 0, month: int = 11) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


ANTHROPIC = {"provider": "anthropic", "model": MODEL_B}
CALLS = {
    # today in Kolkata (from Nov 19, 18:30 UTC)
    "t1": call_spec(at(19, 18, 40), "0.10", correlation_id="carousel-1"),
    "t2": call_spec(
        at(20, 9, 15), "0.30", operation="image_prompt", input_tokens=200, output_tokens=100,
        correlation_id="carousel-1",
    ),
    "t3": call_spec(
        at(20, 9, 45), "0.60", input_tokens=1000, output_tokens=500, correlation_id="carousel-2",
        **ANTHROPIC,
    ),
    "t4": call_spec(
        at(20, 11, 50), None, input_tokens=300, output_tokens=100, error="rate_limit",
        correlation_id="carousel-2", **ANTHROPIC,
    ),
    # yesterday in Kolkata
    "y1": call_spec(at(19, 18, 20), "0.40"),  # 23:50, after "the same time yesterday"
    "y2": call_spec(at(19, 5, 0), "0.20", correlation_id="carousel-3"),  # 10:30
    # July: past the 90-day retention
    "o1": call_spec(at(15, 10, month=7), "1.00", correlation_id="carousel-3"),
}  # fmt: skip


def usd(*names: str) -> Decimal:
    """The exact cost of the named calls: the sum of what their spans report."""
    reported = [CALLS[n]["attributes"].get("nexus.cost.usd") for n in names]
    return sum((Decimal(str(c)) for c in reported if c is not None), Decimal(0))


def tokens(*names: str) -> int:
    attributes = [CALLS[n]["attributes"] for n in names]
    return sum(a["gen_ai.usage.input_tokens"] + a["gen_ai.usage.output_tokens"] for a in attributes)


TODAY, SAME_TIME, YESTERDAY = ("t1", "t2", "t3", "t4"), ("y2",), ("y1", "y2")


@pytest.fixture(scope="module")
def api(ingest: Callable[..., None], api_client: Callable[..., TestClient]) -> TestClient:
    ingest(list(CALLS.values()))
    return api_client(NOW, timezone=ZONE)


def get(api: TestClient, path: str, **params: Any) -> Any:
    response = api.get(path, params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_dashboard_stats(api: TestClient) -> None:
    stats = get(api, "/api/dashboard/stats", recent=3)
    assert (stats["timezone"], stats["date"]) == (ZONE, "2026-11-20")
    assert datetime.fromisoformat(stats["day_start"]) == at(19, 18, 30)
    today = stats["today"]
    assert (today["calls"], today["failed_calls"], today["unpriced_calls"]) == (4, 1, 1)
    assert (today["input_tokens"], today["output_tokens"]) == (1600, 750)
    assert today["total_tokens"] == tokens(*TODAY)
    assert today["cost_usd"] == api_usd(usd(*TODAY))
    assert today["avg_cost_per_call_usd"] == api_ratio(usd(*TODAY) / 3)  # over priced calls only
    assert today["success_rate"] == 0.75
    same_time = stats["yesterday_same_time"]
    assert (same_time["calls"], same_time["total_tokens"]) == (1, tokens(*SAME_TIME))
    assert same_time["cost_usd"] == api_usd(usd(*SAME_TIME))
    yesterday = stats["yesterday"]
    assert (yesterday["calls"], yesterday["cost_usd"]) == (2, api_usd(usd(*YESTERDAY)))
    assert stats["trends"] == {
        "calls_pct": api_ratio(Decimal(4 - 1) * 100 / 1),
        "total_tokens_pct": api_ratio(
            Decimal(tokens(*TODAY) - tokens(*SAME_TIME)) * 100 / tokens(*SAME_TIME)
        ),
        "cost_usd_pct": api_ratio((usd(*TODAY) - usd(*SAME_TIME)) * 100 / usd(*SAME_TIME)),
    }
    hourly = [
        (h["hour"], h["provider"], h["calls"], h["cost_usd"], h["unpriced_calls"])
        for h in stats["hourly"]
    ]
    assert hourly == [
        ("2026-11-19T18:00:00Z", "openai", 1, api_usd(usd("t1")), 0),  # y1 (18:20): yesterday
        ("2026-11-20T09:00:00Z", "anthropic", 1, api_usd(usd("t3")), 0),
        ("2026-11-20T09:00:00Z", "openai", 1, api_usd(usd("t2")), 0),
        ("2026-11-20T11:00:00Z", "anthropic", 1, api_usd(usd("t4")), 1),  # unpriced: $0
    ]
    recent = stats["recent_calls"]
    assert [(c["total_tokens"], c["cost_usd"], c["success"]) for c in recent] == [
        (tokens("t4"), None, False),
        (tokens("t3"), api_usd(usd("t3")), True),
        (tokens("t2"), api_usd(usd("t2")), True),
    ]
    assert recent[0]["error_type"] == "rate_limit"


def test_dashboard_filters(api: TestClient) -> None:
    stats = get(api, "/api/dashboard/stats", provider="anthropic")
    assert (stats["today"]["calls"], stats["today"]["cost_usd"]) == (2, api_usd(usd("t3", "t4")))
    assert stats["yesterday"]["calls"] == 0
    assert stats["trends"]["calls_pct"] is None  # nothing to compare with
    assert {c["provider"] for c in stats["recent_calls"]} == {"anthropic"}
    only = get(api, "/api/dashboard/stats", operation="image_prompt", service_name="carousel-bot")
    assert (only["today"]["calls"], only["today"]["cost_usd"]) == (1, api_usd(usd("t2")))


RANGE = {"start": "2026-11-18T00:00:00Z", "end": "2026-11-20T12:00:00Z"}
IN_RANGE = (*TODAY, *YESTERDAY)  # o1 (July) is not
OPENAI, ANTHROPIC_CALLS = ("t1", "t2", "y1", "y2"), ("t3", "t4")


def test_provider_stats(api: TestClient) -> None:
    stats = get(api, "/api/analytics/provider-stats", **RANGE)
    total = usd(*IN_RANGE)
    assert stats["total"]["cost_usd"] == api_usd(total)
    summary = [
        (p["provider"], p["calls"], p["unpriced_calls"], p["cost_usd"],
         p["cost_share_pct"], [m["model"] for m in p["models"]])
        for p in stats["providers"]
    ]  # fmt: skip
    assert summary == [
        ("openai", 4, 0, api_usd(usd(*OPENAI)), api_ratio(usd(*OPENAI) * 100 / total), [MODEL_A]),
        ("anthropic", 2, 1, api_usd(usd(*ANTHROPIC_CALLS)),
         api_ratio(usd(*ANTHROPIC_CALLS) * 100 / total), [MODEL_B]),
    ]  # fmt: skip
    only = get(api, "/api/analytics/provider-stats", provider="anthropic", **RANGE)
    assert [p["provider"] for p in only["providers"]] == ["anthropic"]
    assert only["total"]["cost_usd"] == api_usd(usd(*ANTHROPIC_CALLS))


def test_cost_by_operation(api: TestClient) -> None:
    result = get(api, "/api/analytics/cost-by-operation", **RANGE)
    facts = ("t1", "t3", "t4", "y1", "y2")  # t4 is unpriced
    rows = [(o["operation"], o["calls"], o["cost_usd"]) for o in result["operations"]]
    assert rows == [
        ("fact_generation", 5, api_usd(usd(*facts))),
        ("image_prompt", 1, api_usd(usd("t2"))),
    ]
    assert result["operations"][0]["avg_cost_per_call_usd"] == api_ratio(usd(*facts) / 4)


def test_token_efficiency(api: TestClient) -> None:
    models = {
        m["provider"]: m for m in get(api, "/api/analytics/token-efficiency", **RANGE)["models"]
    }
    openai, anthropic = models["openai"], models["anthropic"]
    assert (openai["calls"], openai["avg_input_tokens"], openai["avg_output_tokens"]) == (
        4, 125.0, 62.5,
    )  # fmt: skip
    assert openai["output_per_input"] == 0.5
    assert openai["cost_per_1k_tokens_usd"] == api_ratio(usd(*OPENAI) * 1000 / tokens(*OPENAI))
    assert openai["tokens_per_second"] == pytest.approx(750 / 0.8)
    assert anthropic["avg_input_tokens"] == 650.0
    assert anthropic["output_per_input"] == pytest.approx(600 / 1300)
    assert anthropic["cost_per_1k_tokens_usd"] is None  # an unpriced call would distort it


def engagement(api: TestClient, cid: str, **counts: Any) -> dict[str, Any]:
    response = api.post(f"/api/carousels/{cid}/engagement", json=counts)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_content_roi_ranking(api: TestClient, database_url: str) -> None:
    for cid in ("carousel-1", "carousel-2", "carousel-3", "carousel-4"):
        created = api.post("/api/carousels", json={"correlation_id": cid, "title": cid.upper()})
        assert created.status_code == 201, created.text
    assert api.post("/api/carousels", json={"correlation_id": "carousel-1"}).status_code == 409
    engagement(api, "carousel-1", likes=30, comments=5, shares=3, saves=2,
               measured_at="2026-11-20T10:00:00Z")  # fmt: skip
    stale = engagement(api, "carousel-1", likes=1, measured_at="2026-11-20T08:00:00Z")
    assert stale["likes"] == 30  # an older measurement does not replace the latest
    engagement(api, "carousel-2", likes=90, comments=20, shares=10, reach=5000)
    engagement(api, "carousel-3", likes=60)
    engagement(api, "carousel-4", likes=10)
    ranked = get(api, "/api/analytics/carousel-performance")
    rows = [
        (r["correlation_id"], r["engagement"], r["llm_calls"], r["unpriced_calls"],
         r["generation_cost_usd"], r["engagement_per_dollar"], r["cost_per_engagement_usd"])
        for r in ranked
    ]  # fmt: skip
    # Engagement per dollar and cost per engagement are divided in PostgreSQL (numeric).
    assert rows == [
        ("carousel-2", 120, 2, 1, api_usd(usd("t3", "t4")),
         api_ratio(120 / usd("t3", "t4")), api_ratio(usd("t3", "t4") / 120)),
        ("carousel-1", 40, 2, 0, api_usd(usd("t1", "t2")),
         api_ratio(40 / usd("t1", "t2")), api_ratio(usd("t1", "t2") / 40)),
        ("carousel-3", 60, 2, 0, api_usd(usd("y2", "o1")),
         api_ratio(60 / usd("y2", "o1")), api_ratio(usd("y2", "o1") / 60)),
        ("carousel-4", 10, 0, 0, None, None, None),
    ]  # fmt: skip
    cheapest = get(api, "/api/analytics/carousel-performance", sort="cost_per_engagement")
    assert [r["correlation_id"] for r in cheapest] == [
        "carousel-2", "carousel-1", "carousel-3", "carousel-4",
    ]  # fmt: skip
    assert query(database_url, "SELECT count(*) FROM content_engagement") == [(5,)]
    missing = api.post("/api/carousels/nope/engagement", json={"likes": 1})
    assert missing.status_code == 404


def test_content_times_need_a_time_zone_offset(postgres_server: str) -> None:
    """On a database server whose own zone is not UTC, a naive measured_at was read in that
    zone (09:00 as 14:00 UTC) and replaced a later measurement as the latest: refused now."""
    with fresh_database(postgres_server) as url:
        eastern = psycopg.conninfo.make_conninfo(url, options="-c TimeZone=America/New_York")
        with TestClient(create_api_app(Settings(), eastern, clock=lambda: NOW)) as client:
            naive = {"correlation_id": "naive", "published_at": "2026-11-20T08:00:00"}
            refused = client.post("/api/carousels", json=naive)
            assert (refused.status_code, refused.json()["detail"][0]["loc"]) == (
                422, ["body", "published_at"],
            )  # fmt: skip
            created = client.post("/api/carousels", json={**naive, "published_at": None})
            assert created.status_code == 201, created.text
            path = "/api/carousels/naive/engagement"
            later = {"likes": 5, "measured_at": "2026-11-20T10:00:00Z"}
            assert client.post(path, json=later).status_code == 201
            refused = client.post(path, json={"likes": 1, "measured_at": "2026-11-20T09:00:00"})
            assert (refused.status_code, refused.json()["detail"][0]["loc"]) == (
                422, ["body", "measured_at"],
            )  # fmt: skip
            item = client.get("/api/carousels/naive").json()
            measured = datetime.fromisoformat(item["measured_at"])
            assert (item["likes"], measured) == (5, datetime(2026, 11, 20, 10, tzinfo=UTC))
        assert query(url, "SELECT count(*) FROM content_engagement") == [(1,)]


def check_daily_report(report: dict[str, Any]) -> None:
    assert (report["start"][:16], report["end"][:16]) == ("2026-11-19T18:30", "2026-11-20T18:30")
    assert report["totals"]["calls"] == 4
    assert report["totals"]["cost_usd"] == api_usd(usd(*TODAY))
    assert report["previous"]["totals"]["cost_usd"] == api_usd(usd(*YESTERDAY))
    change = (usd(*TODAY) - usd(*YESTERDAY)) * 100 / usd(*YESTERDAY)
    assert report["changes"]["cost_usd_pct"] == api_ratio(change)
    assert report["changes"]["calls_pct"] == api_ratio(Decimal(4 - 2) * 100 / 2)
    assert [(p["provider"], p["cost_usd"]) for p in report["by_provider"]] == [
        ("anthropic", api_usd(usd("t3", "t4"))), ("openai", api_usd(usd("t1", "t2"))),
    ]  # fmt: skip
    assert [o["operation"] for o in report["by_operation"]] == ["fact_generation", "image_prompt"]
    top = [api_usd(usd(name)) for name in ("t3", "t2", "t1")]
    assert [c["cost_usd"] for c in report["top_calls"]] == top


def test_daily_report_json(api: TestClient) -> None:
    report = get(api, "/api/reports/daily", date="2026-11-20")
    assert report["complete"] is False
    check_daily_report(report)
    last = get(api, "/api/reports/daily")  # default: the last complete day, Nov 19 in Kolkata
    assert (last["totals"]["calls"], last["complete"]) == (2, True)
    assert last["changes"]["cost_usd_pct"] is None  # nothing the day before
    monthly = get(api, "/api/reports/monthly", date="2026-11-05")
    assert monthly["totals"]["calls"] == 6
    assert get(api, "/api/reports/weekly", date="2026-11-20")["totals"]["calls"] == 6


@pytest.mark.usefixtures("api")  # the known calls stored
def test_report_command(database_url: str) -> None:
    env = {**os.environ, "NEXUS_TIMEZONE": ZONE, "NEXUS_DATABASE_URL": database_url}
    command = [sys.executable, "-m", "exporter.cli", "report", "--period", "daily",
               "--date", "2026-11-20"]  # fmt: skip
    as_json = subprocess.run([*command, "--json"], env=env, capture_output=True, text=True)
    assert as_json.returncode == 0, as_json.stderr
    check_daily_report(json.loads(as_json.stdout))
    text = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert text.returncode == 0, text.stderr
    assert "$1.0000" in text.stdout and "+66.7%" in text.stdout
    bad = subprocess.run([*command[:-1], "20-11-2026"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2
    assert "--date '20-11-2026'" in bad.stderr


def test_retention_drops_only_old_partitions_and_keeps_summaries(postgres_server: str) -> None:
    """On a database of its own: the July partition it drops holds a call the content ROI test
    counts, whichever of the two runs first."""
    with fresh_database(postgres_server) as url, sending_to(url) as send:
        send(list(CALLS.values()))
        with TestClient(create_api_app(Settings(timezone=ZONE), url, clock=lambda: NOW)) as api:
            check_retention(api, url)


def check_retention(api: TestClient, database_url: str) -> None:
    before = {name for name, _ in partitions_of(database_url)}
    assert "api_calls_2026_07" in before
    result = apply_retention(database_url, 90, NOW)  # cutoff: August 22
    assert result.dropped == ["api_calls_2026_07"]
    assert {name for name, _ in partitions_of(database_url)} == before - {"api_calls_2026_07"}
    assert query(database_url, "SELECT count(*) FROM api_calls") == [(6,)]
    july = get(api, "/api/reports/monthly", date="2026-07-15")  # from the hourly summaries
    assert (july["totals"]["calls"], july["totals"]["cost_usd"]) == (1, api_usd(usd("o1")))
    assert july["top_calls"] == []  # the raw rows are gone
    daily = query(database_url, "SELECT calls, cost_usd FROM daily_usage_summary WHERE day = %s",
                  (datetime(2026, 7, 15).date(),))  # fmt: skip
    assert daily == [(1, usd("o1"))]
    assert apply_retention(database_url, 90, NOW).dropped == []  # idempotent
    command = [sys.executable, "-m", "exporter.cli", "retention", "--database-url", database_url,
               "--retention-days", "36500"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "0 dropped" in done.stderr
    bad = subprocess.run([*command[:-1], "-5"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert "--retention-days = '-5'" in bad.stderr


def partitions_of(url: str) -> list[tuple[str, datetime]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return partitions(conn)
