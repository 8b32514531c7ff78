"""Cost and budgets: where the money goes, how fast budgets burn, what is not priced."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from exporter.dashboards.common import (
    PROVIDER_COLORS,
    bar_panel,
    gauge_panel,
    llm_variables,
    new_dashboard,
    place,
    prom_filter,
    promql,
    sql,
    sql_filter,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "nexus-costs"
IN_RANGE = f'$__timeFilter("timestamp") AND {sql_filter()}'
# Totals come from hourly_usage_summary (kept in the same transaction as the raw rows), so these
# panels never scan raw calls on a 5 s refresh; the hour holding the range's start counts whole.
HOURS = (
    "hourly_usage_summary WHERE hour >= date_trunc('hour', $__timeFrom()::timestamptz) "
    f"AND hour <= $__timeTo()::timestamptz AND {sql_filter()}"
)
PRICED = "sum(calls - unpriced_calls)"
# The summaries hold 0 for calls without a price: no priced call means no spend figure, not $0.
SPEND = f"CASE WHEN {PRICED} > 0 THEN sum(cost_usd) END"
# A budget's scope columns are NULL when it covers everything.
BUDGET_SCOPE = " AND ".join(
    f"(b.{column} IS NULL OR a.{column} = b.{column})"
    for column in ("service_name", "provider", "model", "operation")
)
# The budget status's own forecast: the last hour's pace carried on to the period's end.
FORECAST = "forecast_usd"


def _spend_by(column: str, label: str) -> object:
    return bar_panel(
        f"Spend by {label}", "currencyUSD",
        [sql(f"""
            SELECT coalesce(nullif({column}, ''), '(none)') AS "{label}", {SPEND} AS "Spend"
            FROM {HOURS}
            GROUP BY 1 ORDER BY 2 DESC NULLS LAST LIMIT 15
        """)],
        f"Spend of priced calls in the time range (whole hours), by {label}.", w=6,
    )  # fmt: skip


def _totals() -> list[object]:
    return [
        stat_panel(
            "Spend", "currencyUSD",
            [sql(f'SELECT {SPEND} AS "Spend" FROM {HOURS}')],
            "Spend of priced calls in the time range (whole hours).",
        ),
        stat_panel(
            "Average cost per priced call", "currencyUSD",
            [sql(f'SELECT sum(cost_usd) / NULLIF({PRICED}, 0) AS "Average" FROM {HOURS}')],
            "Unpriced calls are left out, never counted as $0.",
        ),
        stat_panel(
            "Priced calls", "short",
            [sql(f'SELECT {PRICED} AS "Priced" FROM {HOURS}')],
            "Calls with a known price in the time range (whole hours).",
        ),
        stat_panel(
            "Unpriced calls", "short",
            [sql(f'SELECT sum(unpriced_calls) AS "Unpriced" FROM {HOURS}')],
            "Calls of models with no known price: add them to the price overrides.",
        ),
    ]  # fmt: skip


def _budgets() -> list[object]:
    # Each budget's period so far cut as its spend is (nexus_usage_pieces, migration 015): whole
    # UTC hours and ten minutes from the summaries, so a monthly budget never reads a month of
    # raw calls, and raw calls for under ten minutes at each end (a local midnight may fall
    # within a UTC hour, +05:30, +13:45; now is within the current ten minutes).
    burn = sql(
        f"""
        WITH piece AS MATERIALIZED (
            SELECT b.name, b.amount_usd, b.service_name, b.provider, b.model, b.operation,
                   p.kind, p.piece_start, p.piece_end
            FROM v_budget_status b
            CROSS JOIN LATERAL nexus_usage_pieces(b.period_start, least(now(), b.period_end)) p
        )
        SELECT time, metric, sum(spend) OVER (PARTITION BY metric ORDER BY time) / budget AS used
        FROM (SELECT $__timeGroupAlias(t, $__interval), metric, budget, sum(spend) AS spend
              FROM (SELECT a.hour AS t, b.name AS metric, b.amount_usd AS budget,
                           a.cost_usd AS spend
                    FROM piece b
                    JOIN hourly_usage_summary a ON b.kind = 'h' AND a.hour >= b.piece_start
                     AND a.hour < b.piece_end AND {BUDGET_SCOPE}
                    UNION ALL
                    SELECT a.bucket, b.name, b.amount_usd, a.cost_usd
                    FROM piece b
                    JOIN ten_minute_usage_summary a ON b.kind = 't'
                     AND a.bucket >= b.piece_start AND a.bucket < b.piece_end AND {BUDGET_SCOPE}
                    UNION ALL
                    SELECT a."timestamp", b.name, b.amount_usd, a.cost_usd
                    FROM piece b
                    JOIN api_calls a ON b.kind IN ('e', 'c') AND a."timestamp" >= b.piece_start
                     AND a."timestamp" < b.piece_end AND {BUDGET_SCOPE}) parts
              GROUP BY 1, 2, 3) per_interval
        ORDER BY 1
        """,
        "time_series",
    )
    status = sql(f"""
        SELECT name AS "Budget", period AS "Period", amount_usd AS "Limit",
               spend_usd AS "Spent", usage_pct / 100 AS "Used",
               {FORECAST} AS "Forecast", state AS "Status", period_end AS "Period ends"
        FROM v_budget_status ORDER BY usage_pct DESC, name
    """)
    # The exporter's budget gauges: the same numbers the budget alerts evaluate.
    forecast = promql(
        "max by (budget) (nexus_budget_forecast_usd) / max by (budget) (nexus_budget_limit_usd)",
        "{{budget}}",
    )
    usage = promql("max by (budget) (nexus_budget_usage_ratio)", "{{budget}}")
    return [
        timeseries_panel(
            "Budget burn (current period)", "percentunit", [burn],
            "Cumulative spend of each budget since its period began, per hour, as a share of its"
            " limit.",
        ),
        gauge_panel(
            "Forecast at period end", "percentunit", [forecast],
            "Spend at period end at the pace of the last hour, as a share of the limit.",
            w=12, h=8,
        ),
        timeseries_panel(
            "Budget usage", "percentunit", [usage],
            "Each budget's spend in its current period over its limit, as Prometheus records it.",
            w=12,
        ),
        table_panel(
            "Budgets", "currencyUSD", [status], "Every enabled budget in its current period.",
            w=12, h=8, units={"Used": "percentunit", "Period": "none", "Status": "none"},
        ),
    ]  # fmt: skip


def _breakdowns() -> list[object]:
    over_time = sql(
        f"""
        SELECT $__timeGroupAlias(hour, $__interval), provider AS metric, {SPEND} AS spend
        FROM {HOURS} GROUP BY 1, 2 ORDER BY 1
        """,
        "time_series",
    )
    per_call = (
        "sum by (gen_ai_provider_name, gen_ai_request_model) "
        f"(rate(nexus_llm_call_cost_usd_sum{prom_filter()}[$__rate_interval])) / "
        "sum by (gen_ai_provider_name, gen_ai_request_model) "
        f"(rate(nexus_llm_call_cost_usd_count{prom_filter()}[$__rate_interval]))"
    )
    return [
        _spend_by("provider", "provider"),
        _spend_by("model", "model"),
        _spend_by("operation", "operation"),
        _spend_by("service_name", "service"),
        timeseries_panel(
            "Spend per provider", "currencyUSD", [over_time],
            "Spend per hour, stacked by provider.", stacked=True, colors=PROVIDER_COLORS,
        ),
        timeseries_panel(
            "Average cost per call by model", "currencyUSD",
            [promql(per_call, "{{gen_ai_provider_name}} {{gen_ai_request_model}}")],
            "From the exporter's per-call cost histogram (priced calls).",
        ),
    ]  # fmt: skip


def _calls() -> list[object]:
    expensive = sql(f"""
        SELECT "timestamp" AS "Time", provider AS "Provider", model AS "Model",
               nullif(operation, '') AS "Operation", service_name AS "Service",
               total_tokens AS "Tokens", cost_usd AS "Cost", correlation_id AS "Correlation"
        FROM api_calls WHERE cost_usd IS NOT NULL AND {IN_RANGE}
        ORDER BY cost_usd DESC NULLS LAST LIMIT 20
    """)
    unpriced = sql(f"""
        SELECT provider AS "Provider", model AS "Model", count(*) AS "Calls",
               sum(total_tokens) AS "Tokens", max("timestamp") AS "Last seen"
        FROM api_calls WHERE cost_usd IS NULL AND {IN_RANGE}
        GROUP BY 1, 2 ORDER BY 3 DESC
    """)
    return [
        table_panel(
            "Most expensive calls", "short", [expensive], "The 20 costliest calls in the range.",
            w=14, units={"Cost": "currencyUSD"},
        ),
        table_panel(
            "Unpriced models", "short", [unpriced],
            "Models with no known price (stored with a NULL cost, never $0).", w=10,
        ),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = new_dashboard(UID, "LLM cost and budgets", "Spend by every dimension, budgets.")
    for variable in llm_variables():
        board.with_variable(variable)
    place(board, [*_totals(), *_budgets(), *_breakdowns(), *_calls()])  # type: ignore[list-item]
    return board
