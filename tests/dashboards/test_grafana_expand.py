"""The query expansion the dashboard tests rely on matches what Grafana documents and does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.dashboards.grafana_expand import (
    ALL,
    TimeRange,
    Variable,
    expand_promql,
    expand_sql,
    format_interval,
    panel_interval,
    rfc3339nano,
)

START = datetime(2026, 11, 24, 8, 0, 0, tzinfo=UTC)
RANGE = TimeRange(START, START + timedelta(hours=6), timedelta(minutes=5))
PROVIDER = Variable("provider", ["groq", "gcp.gemini", "anthropic"])


def test_sql_time_macros() -> None:
    assert expand_sql("WHERE $__timeFilter(ts)", [], RANGE) == (
        "WHERE ts BETWEEN '2026-11-24T08:00:00Z' AND '2026-11-24T14:00:00Z'"
    )
    assert expand_sql("$__timeFrom() $__timeTo()", [], RANGE) == (
        "'2026-11-24T08:00:00Z' '2026-11-24T14:00:00Z'"
    )
    assert expand_sql("$__unixEpochFrom() $__unixEpochFilter(t)", [], RANGE) == (
        "1795507200 t >= 1795507200 AND t <= 1795528800"
    )


def test_sql_time_groups() -> None:
    assert expand_sql("SELECT $__timeGroup(ts, '5m') AS t", [], RANGE) == (
        "SELECT floor(extract(epoch from ts)/300)*300 AS t"
    )
    # $__timeGroup directly followed by a comma is the pre-5.3 spelling of the alias.
    assert expand_sql("SELECT $__timeGroup(ts, '1h'), v", [], RANGE) == (
        'SELECT floor(extract(epoch from ts)/3600)*3600 AS "time", v'
    )
    assert expand_sql("SELECT $__timeGroupAlias(ts, $__interval)", [], RANGE) == (
        'SELECT floor(extract(epoch from ts)/300)*300 AS "time"'
    )
    with pytest.raises(ValueError, match="unknown macro"):
        expand_sql("$__nope(x)", [], RANGE)


def test_sql_variables_are_quoted_lists() -> None:
    chosen = Variable("provider", PROVIDER.options, ["groq", "o'brien"])
    assert expand_sql("IN ($provider)", [chosen], RANGE) == "IN ('groq','o''brien')"
    assert expand_sql("IN (${provider})", [PROVIDER], RANGE) == (
        "IN ('groq','gcp.gemini','anthropic')"
    )
    assert expand_sql("ARRAY[$provider]", [Variable("provider", [])], RANGE) == "ARRAY[]"
    single = Variable("x", ["a'b"], "a'b", multi=False, include_all=False)
    assert expand_sql("'$x'", [single], RANGE) == "'a''b'"


def test_promql_variables_are_escaped_regexes() -> None:
    chosen = Variable("provider", PROVIDER.options, ["groq", "gcp.gemini"])
    assert expand_promql('{p=~"$provider"}', [chosen], RANGE, timedelta(seconds=15)) == (
        '{p=~"(groq|gcp\\\\.gemini)"}'
    )
    one = Variable("provider", PROVIDER.options, ["gcp.gemini"])
    assert expand_promql('{p=~"$provider"}', [one], RANGE, timedelta(seconds=15)) == (
        '{p=~"gcp\\\\.gemini"}'
    )
    custom_all = Variable("instance", ["a:1"], ALL, all_value=".*")
    assert expand_promql('{i=~"$instance"}', [custom_all], RANGE, timedelta(seconds=15)) == (
        '{i=~".*"}'
    )


def test_promql_intervals() -> None:
    expr = "rate(x[$__rate_interval]) [$__interval] [$__range]"
    # rate interval: max(interval + scrape, 4 x scrape) = max(5m + 15s, 1m)
    assert expand_promql(expr, [], RANGE, timedelta(seconds=15)) == (
        "rate(x[315000ms]) [5m] [21600s]"
    )
    short = TimeRange(START, START + timedelta(minutes=15), timedelta(seconds=1))
    assert expand_promql(expr, [], short, timedelta(seconds=15)) == (
        "rate(x[60000ms]) [15s] [900s]"
    )


def test_intervals_round_like_grafana() -> None:
    assert panel_interval(timedelta(hours=24), timedelta(seconds=15)) == timedelta(minutes=1)
    assert panel_interval(timedelta(hours=6), timedelta(seconds=15)) == timedelta(seconds=20)
    assert panel_interval(timedelta(minutes=5), timedelta(seconds=15)) == timedelta(seconds=15)
    assert format_interval(timedelta(seconds=90)) == "1m"
    assert format_interval(timedelta(hours=48)) == "2d"
    assert rfc3339nano(START + timedelta(microseconds=120)) == "2026-11-24T08:00:00.00012Z"
