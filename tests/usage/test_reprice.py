"""Repricing stored calls: calls of unknown models stored unpriced through a real `nexus-otel
serve`, an overrides file written for them, then `nexus-otel reprice` (a real process on the real
PostgreSQL): exact new costs, the summaries, dashboard stats, budget status and reports all
moving by the same amount, a revision record with each call's previous cost, a dry run and a
second run changing nothing, and an override's valid_from respected.

The expected costs are worked out by hand below from the overrides' per-million-token prices."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import httpx
import psycopg
import pytest
import yaml
from starlette.testclient import TestClient

from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import (
    ExporterProcess,
    api_usd,
    list_price,
    metric_value,
    query,
    write_prices_file,
)

TODAY = datetime.now(UTC).date()
DAY1, DAY2 = TODAY - timedelta(days=3), TODAY - timedelta(days=1)
UNPRICED, LATER = "acme-unpriced-1", "acme-later-2"
# Priced: acme-unpriced-* at $3 input, $0.30 cache read, $15 output per million tokens from
# always; acme-later-2 at $2 input, $8 output from DAY2 on (its DAY1 calls stay unpriced).
OVERRIDES = f"""models:
  - model: {LATER}
    provider: openai
    valid_from: {DAY2}
    input_mtok: 2
    output_mtok: 8
  - model: acme-unpriced-*
    input_mtok: 3
    output_mtok: 15
    cache_read_mtok: 0.3
"""


def at(day: date, hour: int, minute: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


@dataclass(frozen=True)
class Call:
    start: datetime
    model: str
    input_tokens: int
    output_tokens: int
    cache_read: int = 0
    correlation_id: str | None = None
    extra: tuple[tuple[str, Any], ...] = ()
    expected: Decimal | None = None  # its cost after repricing, worked out by hand

    def spec(self) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "gen_ai.provider.name": "openai",
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.model,
            "gen_ai.usage.input_tokens": self.input_tokens,
            "gen_ai.usage.output_tokens": self.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": self.cache_read,
            "nexus.operation": "fact_generation",
            **dict(self.extra),
        }
        if self.correlation_id:
            attributes["nexus.correlation_id"] = self.correlation_id
        return {"start": self.start, "attributes": attributes, "duration_ms": 300}


CALLS = (
    # (1000 - 100) * 3 + 100 * 0.3 + 200 * 15 = 2700 + 30 + 3000 = 5730 per million
    Call(at(DAY1, 10, 0), UNPRICED, 1000, 200, 100, "carousel-1", expected=Decimal("0.00573")),
    # 2500 * 3 + 700 * 15 = 7500 + 10500 = 18000 per million
    Call(at(DAY1, 11, 30), UNPRICED, 2500, 700, expected=Decimal("0.018")),
    # before its valid_from: stays unpriced
    Call(at(DAY1, 12, 0), LATER, 3000, 100),
    # 1234 * 3 + 567 * 15 = 3702 + 8505 = 12207 per million
    Call(at(DAY2, 9, 15), UNPRICED, 1234, 567, 0, "carousel-1", expected=Decimal("0.012207")),
    # 4000 * 2 + 1000 * 8 = 8000 + 8000 = 16000 per million
    Call(at(DAY2, 9, 45), LATER, 4000, 1000, expected=Decimal("0.016")),
)
# Left alone: the provider's own charge, and a model genai-prices prices (no override matches).
PROVIDER_CHARGED = Call(
    at(DAY2, 10, 10),
    UNPRICED,
    800,
    80,
    extra=(("gen_ai.usage.cost.amount", 0.0042), ("gen_ai.usage.cost.source", "provider")),
)
LISTED = Call(at(DAY2, 10, 20), "gpt-4o-mini", 100, 50)
ALL = (*CALLS, PROVIDER_CHARGED, LISTED)
NEW_COST = sum((c.expected for c in CALLS if c.expected), Decimal(0))
DAY1_NEW = CALLS[0].expected + CALLS[1].expected  # type: ignore[operator]
DAY2_NEW = CALLS[3].expected + CALLS[4].expected  # type: ignore[operator]
GENAI_PRICES = f"genai-prices {genai_prices.__version__} (bundled data)"


def override_ref(path: Path, model: str) -> str:
    """The reference of the OVERRIDES entry that prices `model`, as written in that file."""
    if model == LATER:
        return f"{path} models[0] ({LATER}, provider openai) valid_from {DAY2}"
    return f"{path} models[1] (acme-unpriced-*)"


def nexus(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, as its own process."""
    command = [sys.executable, "-m", "exporter.cli", *args, "--database-url", database_url]
    env = {**os.environ, "COLUMNS": "200"}  # tables as wide as they need, not wrapped at 80
    return subprocess.run(
        command, capture_output=True, text=True, timeout=300, check=False, env=env
    )


def stored(database_url: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        'SELECT "timestamp", model, cost_usd, cost_source FROM api_calls ORDER BY "timestamp"',
    )


def price_refs(database_url: str) -> list[tuple[Any, ...]]:
    return query(
        database_url,
        'SELECT "timestamp", cost_source, price_ref FROM api_calls ORDER BY "timestamp"',
    )


def summaries(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "daily": query(
            database_url,
            "SELECT day, model, calls, unpriced_calls, cost_usd FROM daily_usage_summary"
            " ORDER BY day, model",
        ),
        "hourly": query(
            database_url,
            "SELECT hour, model, calls, unpriced_calls, cost_usd FROM hourly_usage_summary"
            " ORDER BY hour, model",
        ),
        "ten_minutes": query(
            database_url,
            "SELECT bucket, model, calls, unpriced_calls, cost_usd FROM ten_minute_usage_summary"
            " ORDER BY bucket, model",
        ),
        "content": query(
            database_url,
            "SELECT hour, model, sum(content_calls), sum(content_priced), sum(content_cost_usd)"
            " FROM hourly_performance_summary GROUP BY 1, 2 ORDER BY 1, 2",
        ),
    }


def raw_summaries(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The same figures straight from the raw rows."""
    totals = (
        "count(*), count(*) FILTER (WHERE cost_usd IS NULL), coalesce(sum(cost_usd), 0)"
        " FROM api_calls GROUP BY 1, 2 ORDER BY 1, 2"
    )
    return {
        "daily": query(
            database_url,
            f"""SELECT ("timestamp" AT TIME ZONE 'UTC')::date, model,
                                          {totals}""",
        ),
        "hourly": query(
            database_url, f"""SELECT date_trunc('hour', "timestamp", 'UTC'), model, {totals}"""
        ),
        "ten_minutes": query(
            database_url, f"""SELECT nexus_ten_minutes("timestamp"), model, {totals}"""
        ),
        "content": query(
            database_url,
            """SELECT date_trunc('hour', "timestamp", 'UTC'), model,
                      count(*) FILTER (WHERE correlation_id IS NOT NULL),
                      count(cost_usd) FILTER (WHERE correlation_id IS NOT NULL),
                      coalesce(sum(cost_usd) FILTER (WHERE correlation_id IS NOT NULL), 0)
               FROM api_calls GROUP BY 1, 2 ORDER BY 1, 2""",
        ),
    }


@dataclass
class Views:
    """What the API answers about the two days, with "now" pinned to the end of DAY2."""

    today_cost: float
    today_unpriced: int
    budget_spend: float
    day1_report_cost: float


def views(client: TestClient) -> Views:
    stats = client.get("/api/dashboard/stats").json()
    [budget] = client.get("/api/budget/status").json()
    report = client.get("/api/reports/daily", params={"date": str(DAY1)}).json()
    return Views(
        stats["today"]["cost_usd"],
        stats["today"]["unpriced_calls"],
        budget["spend_usd"],
        report["totals"]["cost_usd"],
    )


@pytest.fixture(scope="module")
def overrides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_prices_file(tmp_path_factory, OVERRIDES)


@pytest.fixture(scope="module")
def api(database_url: str) -> Iterator[TestClient]:
    from exporter.api import create_api_app
    from exporter.core.settings import Settings

    now = at(DAY2, 23, 0)
    app = create_api_app(Settings(), database_url, clock=lambda: now)
    with TestClient(app) as client:
        response = client.post(
            "/api/budgets", json={"name": "daily", "period": "daily", "amount_usd": "10"}
        )
        assert response.status_code == 201, response.text
        yield client


@pytest.fixture(scope="module")
def calls_stored(exporter: ExporterProcess, database_url: str) -> list[tuple[Any, ...]]:
    """The calls, sent to the real exporter; their rows as stored."""
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=protobuf_body(make_spans([c.spec() for c in ALL], "carousel-bot")),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    listed = list_price(LISTED.spec()["attributes"], LISTED.start)
    rows = stored(database_url)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        (UNPRICED, None, None),
        (UNPRICED, None, None),
        (LATER, None, None),
        (UNPRICED, None, None),
        (LATER, None, None),
        (UNPRICED, Decimal("0.0042"), "provider"),
        ("gpt-4o-mini", listed, "genai-prices"),
    ]
    return rows


@pytest.fixture(scope="module")
def before(calls_stored: list[tuple[Any, ...]], api: TestClient) -> Views:
    return views(api)


# The story's steps, each run once, in this order, whatever order the tests run in (a shuffled
# run included): each step is a fixture that takes the step before it, and records what the
# tests look at right after it ran, since later steps change the same rows.
Seen = dict[str, Any]


@pytest.fixture(scope="module")
def unpriced_listing(calls_stored: list[tuple[Any, ...]], database_url: str) -> Seen:
    return {
        "since_day1": nexus(database_url, "prices", "--unpriced", "--since", str(DAY1)),
        "since_today": nexus(database_url, "prices", "--unpriced", "--since", str(TODAY)),
    }


@pytest.fixture(scope="module")
def dry_run(unpriced_listing: Seen, before: Views, database_url: str, overrides: Path) -> Seen:
    summaries_before = summaries(database_url)
    result = nexus(
        database_url, "reprice", "--since", str(DAY1), "--prices-file", str(overrides), "--dry-run"
    )
    return {
        "result": result,
        "stored": stored(database_url),
        "summaries_before": summaries_before,
        "summaries": summaries(database_url),
        "revisions": query(database_url, "SELECT count(*) FROM price_revisions"),
    }


@pytest.fixture(scope="module")
def first_revision(
    dry_run: Seen, database_url: str, overrides: Path, exporter: ExporterProcess, api: TestClient
) -> Seen:
    result = nexus(database_url, "reprice", "--since", str(DAY1), "--prices-file", str(overrides))
    history = nexus(database_url, "reprice", "--history")
    return {
        "result": result,
        "stored": stored(database_url),
        "price_refs": price_refs(database_url),
        "summaries": summaries(database_url),
        "raw_summaries": raw_summaries(database_url),
        "views": views(api),
        "revisions": httpx.get(f"{exporter.api_url}/api/prices/revisions", timeout=30).json(),
        "revision_calls": query(
            database_url,
            'SELECT "timestamp", previous_cost_usd, previous_cost_source, cost_usd, cost_source,'
            ' price_ref FROM price_revision_calls WHERE revision_id = 1 ORDER BY "timestamp"',
        ),
        "metrics": httpx.get(f"{exporter.base_url}/metrics", timeout=30).text,
        "history": history,
    }


@pytest.fixture(scope="module")
def second_run(first_revision: Seen, database_url: str, overrides: Path, api: TestClient) -> Seen:
    before_run = (stored(database_url), summaries(database_url), views(api))
    dry = nexus(
        database_url, "reprice", "--since", str(DAY1), "--prices-file", str(overrides), "--dry-run"
    )
    result = nexus(database_url, "reprice", "--since", str(DAY1), "--prices-file", str(overrides))
    return {
        "dry": dry,
        "result": result,
        "before": before_run,
        "after": (stored(database_url), summaries(database_url), views(api)),
        "revisions": query(database_url, "SELECT count(*) FROM price_revisions"),
    }


@pytest.fixture(scope="module")
def version_only_run(second_run: Seen, database_url: str, overrides: Path) -> Seen:
    """The listed call's price reference set to another genai-prices version, then a run."""
    older = "genai-prices 0.0.1 (bundled data)"
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            'UPDATE api_calls SET price_ref = %s WHERE "timestamp" = %s', (older, LISTED.start)
        )
    before_run = (stored(database_url), price_refs(database_url))
    result = nexus(database_url, "reprice", "--since", str(DAY1), "--prices-file", str(overrides))
    return {
        "older": older,
        "result": result,
        "before": before_run,
        "after": (stored(database_url), price_refs(database_url)),
        "revisions": query(database_url, "SELECT count(*) FROM price_revisions"),
    }


@pytest.fixture(scope="module")
def filtered_runs(
    version_only_run: Seen,
    database_url: str,
    exporter: ExporterProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Seen:
    """A raised price for acme-unpriced-*: a run for another model, then the run for it."""
    raised = tmp_path_factory.mktemp("raised") / "raised.yaml"
    raised.write_text(OVERRIDES.replace("input_mtok: 3", "input_mtok: 4"))
    since = ("--since", str(DAY1), "--prices-file", str(raised))
    other = nexus(database_url, "reprice", *since, "--model", "acme-later-*")
    result = nexus(
        database_url, "reprice", *since, "--model", "ACME-UNPRICED-*", "--provider", "openai",
        "--include-provider-costs",
    )  # fmt: skip
    return {
        "raised": raised,
        "other": other,
        "result": result,
        "revision_calls": query(
            database_url,
            'SELECT "timestamp", previous_cost_usd, previous_cost_source, cost_usd, cost_source'
            ' FROM price_revision_calls WHERE revision_id = 2 ORDER BY "timestamp"',
        ),
        "stored": stored(database_url),
        "price_refs": price_refs(database_url),
        "summaries": summaries(database_url),
        "raw_summaries": raw_summaries(database_url),
        "latest": httpx.get(
            f"{exporter.api_url}/api/prices/revisions", params={"limit": 1}, timeout=30
        ).json(),
    }


@pytest.fixture(scope="module")
def entry_removed(
    filtered_runs: Seen, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Seen:
    """The acme-unpriced-* entry removed from the file, then a run."""
    removed = tmp_path_factory.mktemp("removed") / "removed.yaml"
    removed.write_text(OVERRIDES.split("  - model: acme-unpriced-*")[0])
    before_run = {r[0]: r[2] for r in stored(database_url)}
    result = nexus(
        database_url, "reprice", "--since", str(DAY1), "--prices-file", str(removed),
        "--include-provider-costs",
    )  # fmt: skip
    return {
        "before": before_run,
        "result": result,
        "revision_calls": query(
            database_url,
            'SELECT "timestamp", previous_cost_usd, previous_cost_source, cost_usd, cost_source'
            ' FROM price_revision_calls WHERE revision_id = 3 ORDER BY "timestamp"',
        ),
        "price_refs": price_refs(database_url),
        "revision": query(
            database_url,
            "SELECT calls_changed, newly_priced, newly_unpriced FROM price_revisions WHERE id = 3",
        ),
        "summaries": summaries(database_url),
        "raw_summaries": raw_summaries(database_url),
    }


def test_unpriced_lists_the_models_and_an_overrides_file_for_them(unpriced_listing: Seen) -> None:
    result = unpriced_listing["since_day1"]
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        "models": [
            {"model": UNPRICED, "provider": "openai", "input_mtok": None, "output_mtok": None},
            {"model": LATER, "provider": "openai", "input_mtok": None, "output_mtok": None},
        ]
    }
    assert "# 3 calls, 4734 input and 1467 output tokens" in result.stdout
    assert "# 2 calls, 7000 input and 1100 output tokens" in result.stdout
    assert f"nexus-otel reprice --since {DAY1}" in result.stdout
    # Later than every call: nothing unpriced.
    later = unpriced_listing["since_today"]
    assert (later.returncode, later.stdout) == (0, "")
    assert f"every call since {TODAY} has a price" in later.stderr


def test_dry_run_shows_the_changes_and_changes_nothing(
    dry_run: Seen, calls_stored: list[tuple[Any, ...]]
) -> None:
    result = dry_run["result"]
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing was changed" in result.stderr
    cells = [[cell.strip() for cell in line.split("│")[1:-1]]
             for line in result.stdout.splitlines() if line.count("│") == 8]  # fmt: skip
    # provider, model, calls changed, newly priced, old total, new total, difference
    assert cells == [
        ["openai", LATER, "1", "1", "$0", "$0.016", "$0.016"],
        ["openai", UNPRICED, "3", "3", "$0", "$0.035937", "$0.035937"],
    ]
    assert dry_run["stored"] == calls_stored
    assert dry_run["summaries"] == dry_run["summaries_before"]
    assert dry_run["revisions"] == [(0,)]


def test_reprice_prices_the_calls_and_everything_moves_by_the_same_amount(
    first_revision: Seen,
    calls_stored: list[tuple[Any, ...]],
    overrides: Path,
    before: Views,
) -> None:
    seen = first_revision
    result = seen["result"]
    assert result.returncode == 0, result.stderr
    assert "revision 1 applied: 4 calls repriced" in result.stderr
    rows = seen["stored"]
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (c.start, c.expected, "override" if c.expected is not None else None) for c in CALLS
    ] + [(r[0], r[2], r[3]) for r in calls_stored[5:]]
    # Each repriced call says which entry priced it; the calls left alone keep theirs.
    assert seen["price_refs"] == [
        (c.start, "override", override_ref(overrides, c.model)) if c.expected is not None
        else (c.start, None, None)
        for c in CALLS
    ] + [
        (PROVIDER_CHARGED.start, "provider", "gen_ai.usage.cost.amount"),
        (LISTED.start, "genai-prices", GENAI_PRICES),
    ]  # fmt: skip
    assert seen["summaries"] == seen["raw_summaries"]
    after = seen["views"]
    assert after.today_cost == api_usd(Decimal(str(before.today_cost)) + DAY2_NEW)
    assert (before.today_unpriced, after.today_unpriced) == (2, 0)
    assert after.budget_spend == api_usd(Decimal(str(before.budget_spend)) + DAY2_NEW)
    assert (before.day1_report_cost, after.day1_report_cost) == (0, api_usd(DAY1_NEW))
    # The record: one revision, per model, and each call's previous and new cost.
    [revision] = seen["revisions"]
    assert {k: revision[k] for k in ("id", "calls_examined", "calls_changed", "newly_priced",
                                      "newly_unpriced", "old_cost_usd", "new_cost_usd",
                                      "net_usd", "model_pattern", "provider")} == {
        "id": 1, "calls_examined": 6, "calls_changed": 4, "newly_priced": 4,
        "newly_unpriced": 0, "old_cost_usd": 0, "new_cost_usd": api_usd(NEW_COST),
        "net_usd": api_usd(NEW_COST), "model_pattern": None, "provider": None,
    }  # fmt: skip
    assert revision["since"] == f"{DAY1}T00:00:00Z"
    assert revision["until"] == f"{TODAY + timedelta(days=1)}T00:00:00Z"
    assert revision["price_sources"]["overrides"]["file"] == str(overrides)
    assert [(m["provider"], m["model"], m["calls_changed"], m["new_cost_usd"])
            for m in revision["models"]] == [
        ("openai", LATER, 1, api_usd(CALLS[4].expected)),  # type: ignore[arg-type]
        ("openai", UNPRICED, 3, api_usd(NEW_COST - CALLS[4].expected)),  # type: ignore[operator]
    ]  # fmt: skip
    assert seen["revision_calls"] == [
        (c.start, None, None, c.expected, "override", override_ref(overrides, c.model))
        for c in CALLS if c.expected is not None
    ]  # fmt: skip
    # The counter keeps what it counted; the revisions' net amount is its own gauge.
    metrics = seen["metrics"]
    assert metric_value(
        metrics, "nexus_llm_cost_revisions_usd", gen_ai_request_model=UNPRICED
    ) == api_usd(NEW_COST - CALLS[4].expected)  # type: ignore[operator]
    assert metric_value(
        metrics, "nexus_llm_cost_revisions_usd", gen_ai_request_model=LATER
    ) == api_usd(CALLS[4].expected)  # type: ignore[arg-type]
    history = seen["history"]
    assert history.returncode == 0, history.stderr
    assert "$0.051937" in history.stdout and f"{DAY1} to {TODAY}" in history.stdout


def test_a_second_reprice_with_nothing_new_changes_nothing(second_run: Seen) -> None:
    result = second_run["result"]
    assert result.returncode == 0, result.stderr
    assert "nothing to change: every call already has these prices" in result.stderr
    assert second_run["after"] == second_run["before"]
    assert second_run["revisions"] == [(1,)]


def test_a_dry_run_with_nothing_to_change_says_so_without_an_empty_table(
    second_run: Seen,
) -> None:
    dry = second_run["dry"]
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout == ""
    assert dry.stderr.strip() == "nothing to change: every call already has these prices"


def test_a_call_whose_cost_stays_keeps_its_price_reference(version_only_run: Seen) -> None:
    """A call priced by another genai-prices version at the same cost is not changed: its
    reference still reproduces its cost, and no revision records a change of version alone."""
    seen = version_only_run
    assert (LISTED.start, "genai-prices", seen["older"]) in seen["before"][1]
    result = seen["result"]
    assert result.returncode == 0, result.stderr
    assert "nothing to change: every call already has these prices" in result.stderr
    assert seen["after"] == seen["before"]
    assert seen["revisions"] == [(1,)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "error: --since is required (the first UTC day of calls to reprice)"),
        (("--since", "2026-13-01"), "error: --since '2026-13-01' is not a date (YYYY-MM-DD)"),
        (
            ("--since", "2026-12-02", "--until", "2026-12-01"),
            "error: --until '2026-12-01' is before --since '2026-12-02'",
        ),
    ],
)
def test_bad_arguments_are_one_line_errors(
    database_url: str, args: tuple[str, ...], message: str
) -> None:
    result = nexus(database_url, "reprice", *args)
    assert (result.returncode, result.stderr.strip()) == (2, message)


def test_filters_pick_the_calls_and_each_row_keeps_its_previous_cost(filtered_runs: Seen) -> None:
    """A raised price for acme-unpriced-*: a run for another model changes nothing; the run for
    it (a pattern in other case, the provider named) changes its three calls, and with
    --include-provider-costs the provider-charged one too, each keeping its previous cost."""
    seen = filtered_runs
    other, result = seen["other"], seen["result"]
    assert other.returncode == 0, other.stderr
    assert "nothing to change" in other.stderr
    assert result.returncode == 0, result.stderr
    assert "revision 2 applied: 4 calls repriced" in result.stderr
    # One more dollar per million input tokens, cache reads excepted: (1000 - 100) more for the
    # first call, 2500, 1234 and 800 for the others.
    expected = [
        (CALLS[0].start, CALLS[0].expected, "override", Decimal("0.00663"), "override"),
        (CALLS[1].start, CALLS[1].expected, "override", Decimal("0.0205"), "override"),
        (CALLS[3].start, CALLS[3].expected, "override", Decimal("0.013441"), "override"),
        # 800 * 4 + 80 * 15 = 3200 + 1200 = 4400 per million, where the provider said 0.0042
        (PROVIDER_CHARGED.start, Decimal("0.0042"), "provider", Decimal("0.0044"), "override"),
    ]
    assert seen["revision_calls"] == expected
    rows = {r[0]: (r[2], r[3]) for r in seen["stored"]}
    assert [rows[e[0]] for e in expected] == [(e[3], e[4]) for e in expected]
    refs = {r[0]: r[2] for r in seen["price_refs"]}
    assert [refs[e[0]] for e in expected] == [override_ref(seen["raised"], UNPRICED)] * 4
    assert seen["summaries"] == seen["raw_summaries"]
    assert [(r["id"], r["model_pattern"], r["provider"], r["include_provider_costs"],
             r["newly_priced"], r["net_usd"]) for r in seen["latest"]] == [
        (2, "ACME-UNPRICED-*", "openai", True, 0, api_usd(Decimal("0.004834")))
    ]  # fmt: skip


@pytest.mark.parametrize("limit", ["0", "1001", "x"])
def test_revisions_limit_out_of_range_is_a_422(exporter: ExporterProcess, limit: str) -> None:
    response = httpx.get(
        f"{exporter.api_url}/api/prices/revisions", params={"limit": limit}, timeout=30
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


def test_calls_no_price_source_knows_any_more_become_unpriced(entry_removed: Seen) -> None:
    """The acme-unpriced-* entry removed: its calls (the provider-charged one, repriced by the
    override, too) go back to unpriced, and the summaries follow."""
    seen = entry_removed
    result = seen["result"]
    assert result.returncode == 0, result.stderr
    assert "revision 3 applied: 4 calls repriced" in result.stderr
    gone = [CALLS[0].start, CALLS[1].start, CALLS[3].start, PROVIDER_CHARGED.start]
    assert seen["revision_calls"] == [
        (start, seen["before"][start], "override", None, None) for start in gone
    ]
    refs = {r[0]: r[1:] for r in seen["price_refs"]}
    assert [refs[start] for start in gone] == [(None, None)] * 4
    assert seen["revision"] == [(4, 0, 4)]
    assert seen["summaries"] == seen["raw_summaries"]
