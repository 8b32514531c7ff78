"""Grafana dashboard variables reach SQL as quoted strings: a variable value crafted as SQL
(a model or service name is whatever a span said) changes nothing but the filter, which then
matches nothing, exactly like any other unknown value."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.dashboards.grafana_expand import TimeRange, Variable, expand_sql
from tests.hostile.payloads import (
    SQL_INJECTIONS,
    llm_attributes,
    new_span,
    post,
    rejected_spans,
    request,
)
from tests.support import ExporterProcess, query, table_counts

pytestmark = pytest.mark.e2e

DASHBOARDS = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
HARMLESS = "zz-no-such-value"
CANARY_ROWS = 3


def _sql_targets() -> list[tuple[str, str, dict[str, Any]]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        panels = [p for row in board.get("panels", []) for p in [row, *row.get("panels", [])]]
        for panel in panels:
            for target in panel.get("targets", []):
                if "rawSql" in target:
                    found.append((path.stem, panel.get("title", "?"), target))
    return found


def _variables(board: str, chosen: str) -> list[Variable]:
    spec = json.loads((DASHBOARDS / f"{board}.json").read_text())
    return [
        Variable(v["name"], [chosen], selected=[chosen], multi=v.get("multi", False),
                 include_all=v.get("includeAll", False), all_value=v.get("allValue"))
        for v in spec.get("templating", {}).get("list", [])
    ]  # fmt: skip


def _rows(database_url: str, statement: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(database_url) as conn:
        conn.execute("SET statement_timeout = '8s'")  # a pg_sleep that got through fails
        try:
            rows = conn.execute(statement).fetchall()  # type: ignore[call-overload]
        finally:
            conn.rollback()
        return rows


def test_hostile_variable_values_match_nothing_and_harm_nothing(
    exporter: ExporterProcess, database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE injection_canary (x int)")
        conn.execute("INSERT INTO injection_canary SELECT generate_series(1, %s)", (CANARY_ROWS,))
    spans = [new_span(llm_attributes()) for _ in range(5)]
    response = post(exporter.base_url, request(spans, "grafana-app").SerializeToString())
    assert response.status_code == 200 and rejected_spans(response) == 0, response.text
    # Calls to find: a payload read as SQL that matched everything would return them.
    stored = query(
        database_url, "SELECT count(*) FROM api_calls WHERE service_name = 'grafana-app'"
    )
    assert stored == [(len(spans),)]
    counts = table_counts(database_url)
    targets = _sql_targets()
    assert targets, "no SQL panel found"
    now = datetime.now(UTC)
    time_range = TimeRange.last(timedelta(days=2), now, timedelta(seconds=60))
    for board, title, target in targets:
        expected = _rows(
            database_url, expand_sql(target["rawSql"], _variables(board, HARMLESS), time_range)
        )
        for payload in SQL_INJECTIONS:
            statement = expand_sql(target["rawSql"], _variables(board, payload), time_range)
            try:
                rows = _rows(database_url, statement)
            except psycopg.Error as exc:
                message = f"{board} / {title} with {payload!r}: {exc}\n{statement}"
                raise AssertionError(message) from exc
            assert rows == expected, f"{board} / {title}: {payload!r} changed the result"
    assert table_counts(database_url) == counts  # the canary table too, with its rows
