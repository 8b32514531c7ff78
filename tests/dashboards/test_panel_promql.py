"""Prometheus panels evaluated by promtool on series as the compose stack's Prometheus holds them
(every job of prometheus/prometheus.yml scraped): the panel's query, its variables expanded as
Grafana expands them, must give exactly the values written here."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import yaml

from tests.dashboards.grafana_expand import TimeRange, Variable, expand_promql
from tests.promstack import binary

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
SCRAPE = timedelta(seconds=15)  # prometheus/prometheus.yml and the datasource's timeInterval


def panel_expr(board: str, title: str, ref_id: str = "A") -> str:
    document = json.loads((DASHBOARD_DIR / f"{board}.json").read_text())
    (panel,) = [p for p in document["panels"] if p.get("title") == title]
    (target,) = [t for t in panel["targets"] if t["refId"] == ref_id]
    return str(target["expr"])


def board_variables(board: str, options: dict[str, list[str]]) -> list[Variable]:
    """The dashboard's variables with All selected, as Grafana formats them for Prometheus."""
    document = json.loads((DASHBOARD_DIR / f"{board}.json").read_text())
    return [
        Variable(v["name"], options.get(v["name"], []), all_value=v.get("allValue"))
        for v in document["templating"]["list"]
    ]


def evaluate(
    tmp_path: Path, expr: str, series: dict[str, str], at: str, expected: list[dict[str, Any]]
) -> subprocess.CompletedProcess[str]:
    """promtool test rules with one promql_expr_test of `expr` at `at` (1m input interval)."""
    test = {
        "rule_files": [],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "promql_expr_test": [{"expr": expr, "eval_time": at, "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "panel_test.yml"
    path.write_text(yaml.safe_dump(test, sort_keys=False))
    return subprocess.run(
        [binary("promtool", "prometheus"), "test", "rules", str(path)],
        capture_output=True,
        text=True,
    )


def expanded(board: str, title: str, options: dict[str, list[str]]) -> str:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    time_range = TimeRange.last(timedelta(hours=1), now, SCRAPE)
    return expand_promql(
        panel_expr(board, title), board_variables(board, options), time_range, SCRAPE
    )


def test_exporters_up_shows_only_the_exporters(tmp_path: Path) -> None:
    # Every exporter selected (All is .*): the collector, Alertmanager and Prometheus, scraped
    # by the same Prometheus, are not exporters; one exporter is down.
    expr = expanded("exporter-health", "Exporters up", {"instance": ["exporter:4318"]})
    series = {
        'up{job="nexus-exporter",instance="exporter:4318"}': "1x10",
        'up{job="nexus-exporter",instance="exporter-2:4318"}': "0x10",
        'up{job="otel-collector",instance="otel-collector:8888"}': "1x10",
        'up{job="alertmanager",instance="alertmanager:9093"}': "1x10",
        'up{job="prometheus",instance="localhost:9090"}': "1x10",
    }
    expected = [
        {"labels": 'up{job="nexus-exporter",instance="exporter:4318"}', "value": 1},
        {"labels": 'up{job="nexus-exporter",instance="exporter-2:4318"}', "value": 0},
    ]
    result = evaluate(tmp_path, expr, series, "5m", expected)
    assert result.returncode == 0, result.stdout + result.stderr


def test_success_rate_per_provider_leaves_out_calls_a_budget_blocked(tmp_path: Path) -> None:
    # Over 10 minutes openai gets 90 successes and 10 failures a minute sent, while a budget
    # guard blocks 100 calls a minute that never reach it; groq gets 50 successes a minute.
    # The share of calls sent that succeeded: 0.9 and 1 (blocked calls are no provider failure).
    expr = expanded(
        "overview",
        "Success rate per provider",
        {"service": ["app"], "provider": ["openai", "groq"], "model": ["m"], "operation": [""]},
    )
    labels = 'service_name="app",gen_ai_request_model="m",gen_ai_operation_name="chat"'
    calls = "nexus_llm_calls_total"
    series = {
        f'{calls}{{{labels},gen_ai_provider_name="openai",outcome="success"}}': "0+90x20",
        f'{calls}{{{labels},gen_ai_provider_name="openai",outcome="error"}}': "0+10x20",
        f'{calls}{{{labels},gen_ai_provider_name="openai",outcome="blocked"}}': "0+100x20",
        f'{calls}{{{labels},gen_ai_provider_name="groq",outcome="success"}}': "0+50x20",
        f'{calls}{{{labels},gen_ai_provider_name="groq",outcome="error"}}': "0x20",
    }
    # Rounded to 0.001: two rates divided are 0.9 give or take the last bit of a float.
    expr = f"round({expr}, 0.001)"
    expected = [
        {"labels": '{gen_ai_provider_name="openai"}', "value": 0.9},
        {"labels": '{gen_ai_provider_name="groq"}', "value": 1},
    ]
    result = evaluate(tmp_path, expr, series, "10m", expected)
    assert result.returncode == 0, result.stdout + result.stderr
