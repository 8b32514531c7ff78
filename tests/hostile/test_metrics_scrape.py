"""An ordinary scrape cannot take the ledger down: /metrics renders off the event loop and reads
every budget in one statement, its series are bounded with exact totals, and it needs a token
when tokens are set, which it never shows."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest

from tests.hostile.payloads import llm_attributes, new_span, post, request
from tests.hostile.pg_proxy import PgProxy
from tests.support import ExporterProcess, metric_samples, metric_value, query, start_exporter

pytestmark = pytest.mark.e2e

BUDGETS = 1_000
API_TOKEN = "api-0c4f9e1d7a"
INGEST_TOKEN = "ingest-5b2e8f3a61"
METRICS_TOKEN = "metrics-9d7c3b1e44"
ZONES = ("UTC", "Asia/Kolkata", "America/Sao_Paulo", "Australia/Lord_Howe")


@pytest.fixture(scope="module")
def budgets(database_url: str) -> str:
    """1,000 enabled budgets over four zones, three periods and several scopes."""
    query(
        database_url,
        "INSERT INTO cost_budgets (name, period_type, budget_usd, timezone, service_name, model)"
        " SELECT 'budget-' || i, (ARRAY['daily', 'weekly', 'monthly'])[1 + i %% 3], 1 + i %% 50,"
        " (%s::text[])[1 + i %% 4], CASE WHEN i %% 2 = 0 THEN 'svc-' || i %% 7 END,"
        " CASE WHEN i %% 5 = 0 THEN 'model-' || i %% 3 END FROM generate_series(1, %s) i"
        " RETURNING id",
        (list(ZONES), BUDGETS),
    )
    return database_url


@pytest.fixture
def proxy(budgets: str) -> Iterator[PgProxy]:
    proxy = PgProxy(budgets)
    yield proxy
    proxy.close()


@pytest.fixture
def proxied(proxy: PgProxy, tmp_path: Path) -> Iterator[ExporterProcess]:
    """An exporter whose every database statement passes the proxy."""
    exporter = start_exporter(proxy.url, tmp_path)
    yield exporter
    exporter.stop()


def _llm_request(*models: str, error_type: str | None = None) -> bytes:
    spans = []
    for i, model in enumerate(models):
        extra = {"gen_ai.request.model": model, "nexus.cost.usd": float(f"0.0{i % 9 + 1}7")}
        if error_type:
            extra["error.type"] = error_type
        spans.append(new_span(llm_attributes(100 + i, 20 + i, **extra)))
    return request(spans).SerializeToString()


def test_ingest_and_health_answer_while_a_scrape_waits_for_the_database(
    proxy: PgProxy, tmp_path: Path
) -> None:
    """The budget read is held in the database (from the exporter's start: it may read them
    then); a scrape that waited for it on the event loop (as it did) would hold every other
    request of the exporter with it."""
    proxy.hold_word = b"nexus_budget_status"
    exporter = start_exporter(proxy.url, tmp_path)
    scrape: list[httpx.Response] = []
    scraper = threading.Thread(
        target=lambda: scrape.append(httpx.get(f"{exporter.base_url}/metrics", timeout=120))
    )
    scraper.start()
    try:
        assert proxy.held.wait(60), "the budgets were never read"
        # Generous bounds: the event loop is free, so these answer in milliseconds; blocked,
        # they would wait for the held statement (two minutes).
        response = post(exporter.base_url, _llm_request("while-scraping"))
        assert response.status_code == 200, response.text
        assert httpx.get(f"{exporter.base_url}/health", timeout=20).status_code == 200
        assert scraper.is_alive() and not scrape  # all of it while the scrape waited
    finally:
        proxy.released.set()
        scraper.join(120)
        exporter.stop()
    assert scrape[0].status_code == 200
    assert scrape[0].text.count("nexus_budget_limit_usd{") == BUDGETS


def test_one_statement_reads_every_budget(proxied: ExporterProcess, proxy: PgProxy) -> None:
    response = httpx.get(f"{proxied.base_url}/metrics", timeout=120)
    assert response.status_code == 200
    assert response.text.count("nexus_budget_spend_usd{") == BUDGETS
    reads = [c for c in proxy.connections if any(b"nexus_budget_status" in t for t in c.texts)]
    assert reads, "the budgets were never read"
    assert [c.executions for c in reads] == [1] * len(reads), [c.texts for c in reads]


def test_label_sets_past_the_limit_share_one_overflow_series_with_exact_totals(
    budgets: str, tmp_path: Path
) -> None:
    env = {"NEXUS_METRICS_MAX_SERIES": "3", "NEXUS_METRICS_MAX_BUDGETS": "5"}
    exporter = start_exporter(budgets, tmp_path, env)
    try:
        models = [f"overflow-model-{i}" for i in range(8)]
        assert post(exporter.base_url, _llm_request(*models[:3])).status_code == 200
        assert post(exporter.base_url, _llm_request(*models[3:], *models)).status_code == 200
        text = httpx.get(f"{exporter.base_url}/metrics", timeout=120).text
    finally:
        exporter.stop()
    stored = {
        model: (calls, tokens, cost)
        for model, calls, tokens, cost in query(
            budgets,
            "SELECT model, count(*), sum(input_tokens), sum(cost_usd) FROM api_calls"
            " WHERE model LIKE 'overflow-model-%%' GROUP BY model",
        )
    }
    own, overflowed = models[:3], models[3:]
    calls = metric_samples(text, "nexus_llm_calls_total")
    overflow = [(labels, v) for labels, v in calls if labels.get("otel_metric_overflow")]
    assert len(overflow) == 2  # success and error: one series per outcome, no more
    for labels, _ in overflow:
        assert labels["otel_metric_overflow"] == "true"
        assert {k: v for k, v in labels.items() if k not in ("otel_metric_overflow", "outcome")} \
            == dict.fromkeys(("service_name", "gen_ai_provider_name", "gen_ai_request_model",
                              "gen_ai_operation_name", "nexus_operation"), "")  # fmt: skip
    shown = {labels["gen_ai_request_model"] for labels, _ in calls} - {""}
    assert shown == set(own)
    overflow_calls = sum(stored[m][0] for m in overflowed)
    assert sum(v for _, v in overflow) == overflow_calls
    # Totals stay exact: every stored call counted once, in its series or in the overflow.
    assert sum(v for _, v in calls) == sum(c for c, _, _ in stored.values()) == 16
    inputs = [(labels, v) for labels, v in metric_samples(text, "nexus_llm_tokens_total")
              if labels["gen_ai_token_type"] == "input"]  # fmt: skip
    assert sum(v for _, v in inputs) == sum(t for _, t, _ in stored.values())
    cost_samples = metric_samples(text, "nexus_llm_cost_usd_total")
    costs = {labels["gen_ai_request_model"]: v for labels, v in cost_samples}
    for model in own:
        assert costs[model] == float(stored[model][2])
    assert costs[""] == float(sum((stored[m][2] for m in overflowed), Decimal(0)))
    counted = metric_value(text, "nexus_exporter_metric_overflow_total", metric="nexus_llm_calls")
    assert counted == overflow_calls
    assert text.count("nexus_budget_limit_usd{") == 5
    assert metric_value(text, "nexus_budgets_without_gauges") == BUDGETS - 5


@pytest.fixture(scope="module")
def guarded(budgets: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExporterProcess]:
    env = {"NEXUS_API_TOKEN": API_TOKEN, "NEXUS_INGEST_TOKEN": INGEST_TOKEN}
    exporter = start_exporter(budgets, tmp_path_factory.mktemp("guarded"), env)
    yield exporter
    exporter.stop()


def _scrape(exporter: ExporterProcess, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{exporter.base_url}/metrics", headers=headers, timeout=120)


def test_metrics_needs_the_api_token_when_tokens_are_set(guarded: ExporterProcess) -> None:
    for token in (None, "wrong", INGEST_TOKEN):
        response = _scrape(guarded, token)
        assert response.status_code == 401, token
        assert response.text == "missing or wrong bearer token (Authorization: Bearer <token>)\n"
        assert response.headers["www-authenticate"] == "Bearer"
    assert _scrape(guarded, API_TOKEN).status_code == 200


def test_its_own_token_when_set_and_nothing_else(budgets: str, tmp_path: Path) -> None:
    env = {"NEXUS_METRICS_TOKEN": METRICS_TOKEN, "NEXUS_API_TOKEN": API_TOKEN}
    exporter = start_exporter(budgets, tmp_path, env)
    try:
        assert [_scrape(exporter, t).status_code for t in (None, API_TOKEN, METRICS_TOKEN)] == [
            401, 401, 200,
        ]  # fmt: skip
    finally:
        exporter.stop()


def test_no_token_ever_shows_in_metrics(guarded: ExporterProcess) -> None:
    """An error type carrying a credential (as one did) is not a code: its label is OTHER."""
    for error_type in (f"Bearer {API_TOKEN}", f"x-api-key: {INGEST_TOKEN}", "E" * 65):
        body = _llm_request("leaky-model", error_type=error_type)
        response = post(guarded.base_url, body, Authorization=f"Bearer {INGEST_TOKEN}")
        assert response.status_code == 200, response.text
    text = _scrape(guarded, API_TOKEN).text
    assert API_TOKEN not in text and INGEST_TOKEN not in text and "E" * 65 not in text
    durations = metric_samples(text, "gen_ai_client_operation_duration_seconds_count")
    leaky = {labels["error_type"]: v for labels, v in durations
             if labels["gen_ai_request_model"] == "leaky-model"}  # fmt: skip
    assert leaky == {"_OTHER": 3}
