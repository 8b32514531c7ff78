"""Every query of every committed dashboard, run the way Grafana runs it, on a stack that stored
known calls (tests.dashboards.board_runner)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.dashboards.board_runner import (
    CALLS,
    DASHBOARD_SPAN,
    EXPENSIVE,
    MAY_BE_EMPTY,
    SCRAPE,
    UNFILTERED,
    WAVES,
    Stack,
    dashboards,
    fresh_stack,
    run_board,
    sql_rows,
    stack,
)
from tests.dashboards.grafana_expand import TimeRange, expand_sql
from tests.support import fresh_database

pytestmark = pytest.mark.e2e
__all__ = ["fresh_stack", "stack"]  # fixtures


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_every_panel_query_runs_and_shows_data(stack: Stack, name: str) -> None:
    uid = dashboards()[name]["uid"]
    results = run_board(name, stack, {})
    empty = sorted(k for k, r in results.items() if not r.has_data)
    allowed = {k for k in empty if (uid, k.split("/")[0]) in MAY_BE_EMPTY}
    assert set(empty) == allowed, f"{name}: panels without data: {set(empty) - allowed}"
    assert len(results) >= 8, results.keys()


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_a_provider_selection_filters_every_panel(stack: Stack, name: str) -> None:
    """Multi-value variables as Grafana expands them: `'groq','gcp.gemini'` in SQL,
    `(groq|gcp\\\\.gemini)` in PromQL; no panel may show another provider."""
    chosen = ["groq", "gcp.gemini"]
    results = run_board(name, stack, {"provider": chosen})
    leaked = {
        k: r.providers
        for k, r in results.items()
        if r.providers - set(chosen) and k not in UNFILTERED
    }
    assert not leaked
    if name not in ("exporter-health", "roi"):  # these show no provider
        assert any(r.providers == set(chosen) for r in results.values())


def test_headline_numbers_are_exact(stack: Stack) -> None:
    """Today's numbers (whole hours from the hourly summaries, the current hour from raw rows)
    equal plain counts over the raw rows; the replayed call counts once."""
    results = run_board("overview", stack, {})
    truth = sql_rows(stack, """
        SELECT count(*) FILTER (WHERE "timestamp" >= date_trunc('day', now())),
               count(*) FILTER (WHERE "timestamp" >= date_trunc('day', now()) - interval '1 day'
                                  AND "timestamp" < now() - interval '1 day'),
               sum(total_tokens) FILTER (WHERE "timestamp" >= date_trunc('day', now())),
               count(*), sum(total_tokens)
        FROM api_calls
    """)[0]  # fmt: skip
    today, yesterday, today_tokens, stored, tokens = truth

    def sent(attributes: dict[str, Any]) -> int:
        return int(
            attributes["gen_ai.usage.input_tokens"] + attributes["gen_ai.usage.output_tokens"]
        )

    assert stored == len(CALLS) * (WAVES + 3) + 2
    assert tokens == (WAVES + 3) * sum(sent(a) for _, a, _ in CALLS) + sent(CALLS[0][1]) + sent(
        EXPENSIVE
    )
    assert today >= WAVES * len(CALLS) + 2  # the waves of the last minute at least
    calls = results["Calls today/A"].rows[0]
    assert calls["Calls today"] == today
    assert float(calls["vs yesterday"]) == pytest.approx(100 * (today - yesterday) / yesterday)
    assert results["Tokens today/A"].rows[0]["Tokens today"] == today_tokens
    (alert,) = results["Active alerts/A"].rows  # the Watchdog heartbeat is left out
    assert alert["metric"]["alertname"] == "LLMExpensiveCall"
    assert alert["metric"]["gen_ai_request_model"] == "claude-sonnet-4-5"
    unpriced = run_board("costs", stack, {})["Unpriced models/A"].rows
    assert unpriced == [
        {"Provider": "groq", "Model": "my-private-model", "Calls": WAVES, "Tokens": WAVES * 600,
         "Last seen": unpriced[0]["Last seen"]}
    ]  # fmt: skip
    roi = run_board("roi", stack, {})["Content ranked by engagement per dollar/A"].rows
    assert [r["Correlation id"] for r in roi] == ["carousel-1", "carousel-2", "carousel-3"]
    assert roi[0]["Engagement"] == 143 and roi[0]["LLM calls"] == 2 * (WAVES + 3) + 1


def test_cost_totals_from_hourly_summaries_equal_the_raw_calls(stack: Stack) -> None:
    """The cost panels read hourly_usage_summary over the whole hours of the range: the same
    numbers as counting the raw calls of those hours."""
    now = datetime.now(UTC)
    results = run_board("costs", stack, {}, now=now)
    raw_sql = """
        SELECT sum(cost_usd), count(cost_usd), count(*) FILTER (WHERE cost_usd IS NULL),
               sum(cost_usd) FILTER (WHERE provider = 'anthropic')
        FROM api_calls WHERE "timestamp" >= date_trunc('hour', $__timeFrom()::timestamptz)
                         AND "timestamp" <= $__timeTo()::timestamptz
    """
    window = TimeRange.last(DASHBOARD_SPAN, now, SCRAPE)
    spend, priced, unpriced, anthropic = sql_rows(stack, expand_sql(raw_sql, [], window))[0]
    assert unpriced >= WAVES and priced >= WAVES * (len(CALLS) - 1)
    assert results["Spend/A"].rows == [{"Spend": spend}]
    assert results["Priced calls/A"].rows == [{"Priced": priced}]
    assert results["Unpriced calls/A"].rows == [{"Unpriced": unpriced}]
    by_provider = {r["provider"]: r["Spend"] for r in results["Spend by provider/A"].rows}
    assert by_provider["anthropic"] == anthropic
    assert by_provider["groq"] is not None  # groq has priced and unpriced models


@pytest.fixture(scope="module")
def empty_database(postgres_server: str) -> Iterator[str]:
    with fresh_database(postgres_server) as url:
        yield url


@pytest.mark.parametrize("name", sorted(dashboards()))
def test_a_fresh_stack_shows_no_errors(stack: Stack, empty_database: str, name: str) -> None:
    """Before the first call: empty tables, variables without a single value ("All" expands to
    nothing). Every query must still run; an error would greet every new installation."""
    results = run_board(name, Stack(stack.prometheus, empty_database), {}, empty=True)
    assert len(results) >= 8
    # No call stored, no provider in any panel (alerts come from the live Prometheus).
    assert not any(r.providers for k, r in results.items() if k not in UNFILTERED)


def test_counters_without_a_sample_yet_show_zero(fresh_stack: Stack) -> None:
    """A fresh exporter has refused no span and answered no OTLP request: its labelled counters
    have no series yet, and the health board shows 0 for them, not "No data"."""
    results = run_board("exporter-health", fresh_stack, {})
    for key in ("Spans rejected/A", "Rejected and duplicate spans/A", "OTLP requests by status/A"):
        points = [float(v) for series in results[key].rows for _, v in series.get("values", [])]
        points += [float(series["value"][1]) for series in results[key].rows if "value" in series]
        assert points and set(points) == {0.0}, key
    empty = sorted(k for k, r in results.items() if not r.has_data)
    assert empty == ["Write latency/A", "Write latency/B"]  # no write yet: no latency either
