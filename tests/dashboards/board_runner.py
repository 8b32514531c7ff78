"""A stack to run dashboards on, the way Grafana runs them: PromQL against a real Prometheus
scraping a real `nexus-otel serve`, SQL (macros and variables expanded) against the real
PostgreSQL the exporter writes to; the calls it stores are known (CALLS, EXPENSIVE)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.dashboards.grafana_expand import (
    TimeRange,
    Variable,
    expand_promql,
    expand_sql,
    parse_interval,
    prometheus_step,
)
from tests.ingest.otlp_helpers import export_with_sdk, make_spans
from tests.promstack import RULES_DIR, Prometheus, prometheus_config, running_prometheus
from tests.support import ExporterProcess, fresh_database, start_exporter

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
SCRAPE = timedelta(seconds=1)
WAVES = 3
# Panels allowed to be empty with this data: none.
MAY_BE_EMPTY: set[tuple[str, str]] = set()
# Firing alerts concern the whole stack (an exporter down has no provider): never filtered.
UNFILTERED = {"Active alerts/A"}


def _call(provider: str, model: str, operation: str, tokens: tuple[int, int], **extra: Any) -> Any:
    attributes = {
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": model,
        "gen_ai.usage.input_tokens": tokens[0],
        "gen_ai.usage.output_tokens": tokens[1],
        **({"nexus.operation": operation} if operation else {}),
        **extra,
    }
    return attributes


# (service, attributes, error): several providers, models, operations and services; a failure;
# an unpriced model; calls carrying a correlation id; cache reads; time to first chunk.
CALLS: list[tuple[str, dict[str, Any], str | None]] = [
    ("content-bot", _call("groq", "llama-3.3-70b-versatile", "fact_generation", (1200, 300),
                          **{"gen_ai.usage.cache_read.input_tokens": 200,
                             "gen_ai.response.time_to_first_chunk": 0.12,
                             "nexus.correlation_id": "carousel-1"}), None),
    ("content-bot", _call("anthropic", "claude-sonnet-4-5", "caption_writing", (1500, 250),
                          **{"gen_ai.usage.cache_read.input_tokens": 400,
                             "gen_ai.response.time_to_first_chunk": 0.35,
                             "nexus.correlation_id": "carousel-2"}), None),
    ("research-bot", _call("gcp.gemini", "gemini-2.5-flash", "image_prompt", (800, 320),
                           **{"gen_ai.usage.reasoning.output_tokens": 120,
                              "nexus.correlation_id": "carousel-1"}), None),
    ("research-bot", _call("groq", "my-private-model", "fact_generation", (500, 100)), None),
    ("content-bot", _call("anthropic", "claude-sonnet-4-5", "caption_writing", (900, 0),
                          **{"error.type": "RateLimitError"}), "rate limited"),
    ("research-bot", _call("openai", "gpt-4o", "", (100, 50)), None),
]  # fmt: skip

# One call above $0.50 (150k input + 10k output tokens of Claude Sonnet 4.5 = $0.60): it fires
# LLMExpensiveCall, which "Active alerts" must show.
EXPENSIVE = _call("anthropic", "claude-sonnet-4-5", "caption_writing", (150_000, 10_000))


def _send(exporter: ExporterProcess, start: datetime) -> None:
    for service in {service for service, _, _ in CALLS}:
        specs = [
            {"attributes": attributes, "start": start, "duration_ms": 900 + 100 * i,
             **({"error": error} if error else {})}
            for i, (svc, attributes, error) in enumerate(CALLS) if svc == service
        ]  # fmt: skip
        assert export_with_sdk(exporter.base_url, make_spans(specs, service_name=service))


def _seed(database_url: str, now: datetime) -> None:
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO cost_budgets (name, period_type, budget_usd, provider) VALUES "
            "('daily-total', 'daily', 0.05, NULL), "
            "('anthropic-monthly', 'monthly', 20, 'anthropic')"
        )
        conn.execute(
            "INSERT INTO carousel_performance (correlation_id, title, published_at, likes, "
            "comments, shares, saves, reach) VALUES "
            "('carousel-1', 'Ocean facts', %(a)s, 120, 10, 5, 8, 4000), "
            "('carousel-2', 'Space facts', %(b)s, 40, 2, 1, 3, 1500), "
            "('carousel-3', 'Not generated here', %(b)s, 7, 0, 0, 0, 90)",
            {"a": now - timedelta(minutes=10), "b": now - timedelta(minutes=5)},
        )
        conn.execute(
            "INSERT INTO alert_history (fingerprint, alertname, status, severity, summary, "
            "starts_at) VALUES ('f1', 'LLMBudgetWarning', 'firing', 'warning', "
            "'daily-total at 80 %%', %s)",
            (now - timedelta(minutes=1),),
        )


@dataclass
class Stack:
    prometheus: Prometheus
    database_url: str


@pytest.fixture(scope="module")
def stack(
    exporter: ExporterProcess, database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    now = datetime.now(UTC)
    _seed(database_url, now)
    # The project's rule files are loaded, so panels may use recorded series.
    config = prometheus_config(
        [exporter.base_url.removeprefix("http://")], rule_files=sorted(RULES_DIR.glob("*.y*ml"))
    )
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as prometheus:
        _wait_for(prometheus, "up", lambda v: v == 1)
        # Earlier hours (stored in the hourly summaries) and yesterday, for the trends.
        for earlier in (
            timedelta(minutes=70),
            timedelta(days=1, minutes=1),
            timedelta(days=1, minutes=70),
        ):
            _send(exporter, now - earlier)
        for _ in range(WAVES):  # several scrapes apart, so rates have increases to show
            _send(exporter, datetime.now(UTC) - timedelta(seconds=2))
            time.sleep(1.5)
        bad = {**CALLS[0][1], "gen_ai.usage.input_tokens": -5}
        export_with_sdk(exporter.base_url, make_spans([{"attributes": bad, "start": now}]))
        replay = make_spans([{"attributes": CALLS[0][1], "start": now}])
        assert export_with_sdk(exporter.base_url, replay)
        assert export_with_sdk(exporter.base_url, replay)  # a duplicate
        expensive = make_spans([{"attributes": EXPENSIVE, "start": now}], "content-bot")
        assert export_with_sdk(exporter.base_url, expensive)
        stored = len(CALLS) * (WAVES + 3) + 2
        _wait_for(prometheus, "sum(nexus_exporter_rows_written_total)", lambda v: v == stored)
        _wait_for(prometheus, "sum(nexus_exporter_spans_duplicate_total)", lambda v: v >= 1)
        firing = 'count(ALERTS{alertname="LLMExpensiveCall", alertstate="firing"})'
        _wait_for(prometheus, firing, lambda v: v == 1)
        time.sleep(2 * SCRAPE.total_seconds())  # one more scrape and rule evaluation
        yield Stack(prometheus, database_url)


def _wait_for(prometheus: Prometheus, expr: str, ok: Any) -> None:
    def check() -> bool:
        value = prometheus.value(expr)
        return value is not None and ok(value)

    prometheus.wait_for(check, timeout=20, what=expr)


# --- running panels ---------------------------------------------------------------------------


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def _variables(
    board: dict[str, Any], stack: Stack, time_range: TimeRange, empty: bool = False
) -> list[Variable]:
    """Each variable with the options its own query returns (the query is checked too), or
    with none at all (`empty`), as on a stack that has not seen a call yet."""
    variables = []
    for spec in board.get("templating", {}).get("list", []):
        query = spec["query"]
        if empty:
            options = []
        elif spec["datasource"]["type"] == "prometheus":
            metric, label = query.removeprefix("label_values(").removesuffix(")").split(", ")
            options = stack.prometheus.get(f"/api/v1/label/{label}/values", **{"match[]": metric})
        else:
            rows = sql_rows(stack, expand_sql(query, [], time_range))
            options = [row[-1] for row in rows]
        assert options or empty, f"variable {spec['name']} has no values"
        variables.append(
            Variable(spec["name"], options, multi=spec.get("multi", False),
                     include_all=spec.get("includeAll", False), all_value=spec.get("allValue"))
        )  # fmt: skip
    return variables


def sql_rows(stack: Stack, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(stack.database_url) as conn:
        cursor = conn.execute(statement)  # type: ignore[call-overload]
        return cursor.fetchall()


@dataclass
class Result:
    has_data: bool
    providers: set[str]
    rows: list[dict[str, Any]]


def _run_sql(
    stack: Stack, target: dict[str, Any], variables: list[Variable], tr: TimeRange
) -> Result:
    statement = expand_sql(target["rawSql"], variables, tr)
    with psycopg.connect(stack.database_url) as conn:
        try:
            cursor = conn.execute(statement)  # type: ignore[call-overload]
        except psycopg.Error as exc:
            raise AssertionError(f"{exc}\n{statement}") from exc
        columns = [c.name for c in cursor.description or []]
        rows = cursor.fetchall()
    if target["format"] == "time_series":
        # Grafana refuses a time series without a `time` column ("db has no time column").
        assert "time" in columns, f"no time column in {columns}: {statement}"
    values = [v for row in rows for c, v in zip(columns, row, strict=True) if c != "time"]
    providers = set()
    if "Provider" in columns:
        providers = {row[columns.index("Provider")] for row in rows}
    elif "metric" in columns and "provider AS metric" in target["rawSql"]:
        providers = {row[columns.index("metric")] for row in rows}
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    return Result(any(v is not None for v in values), providers, records)


def _run_promql(
    stack: Stack, target: dict[str, Any], variables: list[Variable], tr: TimeRange
) -> Result:
    expr = expand_promql(target["expr"], variables, tr, SCRAPE)
    try:
        if target.get("instant"):
            data = stack.prometheus.get("/api/v1/query", query=expr, time=tr.end.timestamp())
            points = [float(r["value"][1]) for r in data["result"]]
        else:
            step = prometheus_step(tr, SCRAPE)
            data = stack.prometheus.get(
                "/api/v1/query_range", query=expr, step=step,
                start=math.floor(tr.start.timestamp() / step) * step,
                end=math.floor(tr.end.timestamp() / step) * step,
            )  # fmt: skip
            points = [float(v) for r in data["result"] for _, v in r["values"]]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{expr}") from exc
    providers = {r["metric"]["gen_ai_provider_name"] for r in data["result"]
                 if "gen_ai_provider_name" in r["metric"]}  # fmt: skip
    return Result(any(math.isfinite(p) for p in points), providers, data["result"])


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield from panel.get("panels", []) if panel["type"] == "row" else [panel]


DASHBOARD_SPAN = timedelta(minutes=15)


def run_board(
    name: str,
    stack: Stack,
    selection: dict[str, list[str]],
    empty: bool = False,
    now: datetime | None = None,
) -> dict[str, Result]:
    board = dashboards()[name]
    now = now or datetime.now(UTC)
    dashboard_range = TimeRange.last(DASHBOARD_SPAN, now, SCRAPE)
    variables = [
        Variable(v.name, v.options, selection.get(v.name, v.selected), v.multi, v.include_all,
                 v.all_value)
        for v in _variables(board, stack, dashboard_range, empty)
    ]  # fmt: skip
    results: dict[str, Result] = {}
    for panel in _panels(board):
        override = panel.get("timeFrom")
        tr = TimeRange.last(parse_interval(override), now, SCRAPE) if override else dashboard_range
        for target in panel["targets"]:
            run = _run_promql if target["datasource"]["type"] == "prometheus" else _run_sql
            result = run(stack, target, variables, tr)
            key = f"{panel['title']}/{target['refId']}"
            results[key] = result
    return results


@pytest.fixture(scope="module")
def fresh_stack(postgres_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A new installation: an exporter that has received nothing, on an empty database, scraped
    by its own Prometheus for a few scrapes (rates need two samples)."""
    with fresh_database(postgres_server) as url:
        exporter = start_exporter(url, tmp_path_factory.mktemp("fresh-exporter"))
        try:
            config = prometheus_config(
                [exporter.base_url.removeprefix("http://")],
                rule_files=sorted(RULES_DIR.glob("*.y*ml")),
            )
            with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as prometheus:
                _wait_for(prometheus, "count_over_time(up[1m])", lambda v: v >= 5)
                yield Stack(prometheus, url)
        finally:
            exporter.stop()
