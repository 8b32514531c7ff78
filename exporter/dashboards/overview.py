"""Overview: what the original dashboard showed (today's numbers with their trend, budgets,
tokens per provider, recent calls) and more (spend rate, success rate, alerts)."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dm

from exporter.dashboards.common import (
    BAD,
    OK,
    PROVIDER_COLORS,
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
    trend_stat,
)

UID = "nexus-overview"


def today_vs_yesterday(label: str, summed: str, raw: str | None = None) -> str:
    """A total since midnight and its change against yesterday up to the same time. Hours come
    from hourly_usage_summary (`summed`, over its columns; the current hour is in it as soon as
    its calls are stored), only yesterday's part of the same hour from raw rows (`raw`, over
    api_calls): these panels refresh every 5 s."""
    raw = raw or summed
    # A plain range condition on now(): the raw part is one index range scan of one partition.
    return f"""
        SELECT coalesce(sum(today), 0) AS "{label}",
               100.0 * (coalesce(sum(today), 0) - sum(yesterday)) / NULLIF(sum(yesterday), 0)
                   AS "vs yesterday"
        FROM (
            SELECT {summed} FILTER (WHERE hour >= date_trunc('day', now())) AS today,
                   {summed} FILTER (WHERE hour < date_trunc('hour', now() - interval '1 day'))
                       AS yesterday
            FROM hourly_usage_summary
            WHERE hour >= date_trunc('day', now()) - interval '1 day' AND {sql_filter()}
            UNION ALL
            SELECT NULL, {raw} FROM api_calls
            WHERE "timestamp" >= date_trunc('hour', now() - interval '1 day')
              AND "timestamp" < now() - interval '1 day' AND {sql_filter()}
        ) parts
    """


def _headline() -> list[object]:
    return [
        trend_stat(
            "Tokens today", "short", sql(today_vs_yesterday("Tokens today", "sum(total_tokens)")),
            "Input + output tokens since midnight (UTC), and the change vs yesterday at this time.",
        ),
        trend_stat(
            "Cost today", "currencyUSD", sql(today_vs_yesterday("Cost today", "sum(cost_usd)")),
            "Spend of priced calls since midnight (UTC); unpriced calls are not counted as $0.",
        ),
        trend_stat(
            "Calls today", "short",
            sql(today_vs_yesterday("Calls today", "sum(calls)", "count(*)")),
            "LLM calls since midnight (UTC), and the change vs yesterday at this time.",
        ),
        stat_panel(
            "Success rate", "percentunit",
            [sql(f"""
                SELECT sum(calls - failed_calls)::numeric / NULLIF(sum(calls), 0) AS "Success rate"
                FROM hourly_usage_summary
                WHERE hour >= date_trunc('hour', $__timeFrom()::timestamptz)
                  AND hour <= $__timeTo()::timestamptz AND {sql_filter()}
            """)],
            "Share of calls in the time range (whole hours) that succeeded.",
        ).thresholds(
            dashboard.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(
                [dm.Threshold(value=None, color=BAD), dm.Threshold(value=0.95, color=OK)]
            )
        ),
    ]  # fmt: skip


def _charts() -> list[object]:
    budgets = sql("""
        SELECT name AS "Budget", usage_pct / 100 AS "Used"
        FROM v_budget_status ORDER BY name
    """)
    tokens = sql(
        f"""
        SELECT $__timeGroupAlias(hour, $__interval), provider AS metric,
               sum(input_tokens + output_tokens) AS tokens
        FROM hourly_usage_summary
        WHERE hour >= date_trunc('hour', $__timeFrom()::timestamptz)
          AND hour <= $__timeTo()::timestamptz AND {sql_filter()}
        GROUP BY 1, 2 ORDER BY 1
        """,
        "time_series",
    )
    success = prom_filter('outcome="success"')
    sent = prom_filter('outcome!="blocked"')  # blocked by a budget: never reached the provider
    return [
        gauge_panel(
            "Budgets", "percentunit", [budgets],
            "Spend of each budget in its current period: amber from 80 %, red when exceeded.",
            w=8, h=8,
        ),
        timeseries_panel(
            "Token usage per provider (24 h)", "short", [tokens],
            "Input + output tokens per hour, by provider (the current hour so far).", w=16, h=8,
            colors=PROVIDER_COLORS,
        ).time_from("24h"),
        timeseries_panel(
            "Spend rate per provider", "currencyUSD",
            [promql(
                "sum by (gen_ai_provider_name) "
                f"(rate(nexus_llm_cost_usd_total{prom_filter()}[$__rate_interval])) * 3600",
                "{{gen_ai_provider_name}}",
            )],
            "US dollars per hour at the current pace, from the exporter's cost counter: each call"
            " at the cost it was stored with. A counter cannot be rewritten: `nexus-otel reprice`"
            " corrects the SQL panels, the API and budgets, not this; the gauge"
            " nexus_llm_cost_revisions_usd holds what revisions added.",
            colors=PROVIDER_COLORS,
        ).axis_label("per hour"),  # a rate: the unit alone would read as dollars
        timeseries_panel(
            "Success rate per provider", "percentunit",
            [promql(
                "sum by (gen_ai_provider_name) (rate(nexus_llm_calls_total"
                f"{success}[$__rate_interval])) / "
                "sum by (gen_ai_provider_name) "
                f"(rate(nexus_llm_calls_total{sent}[$__rate_interval]))",
                "{{gen_ai_provider_name}}",
            )],
            "Share of the calls sent to each provider that succeeded (calls a budget blocked"
            " before sending are not counted).", colors=PROVIDER_COLORS,
        ).min(0).max(1),
    ]  # fmt: skip


def _tables() -> list[object]:
    recent = sql(f"""
        SELECT "timestamp" AS "Time", provider AS "Provider", model AS "Model",
               nullif(operation, '') AS "Operation", total_tokens AS "Tokens",
               cost_usd AS "Cost", duration_ms AS "Duration",
               CASE WHEN success THEN 'ok' ELSE coalesce(error_type, 'error') END AS "Status"
        FROM api_calls WHERE $__timeFilter("timestamp") AND {sql_filter()}
        ORDER BY "timestamp" DESC LIMIT 50
    """)
    history = sql("""
        SELECT received_at AS "Time", alertname AS "Alert", status AS "Status",
               severity AS "Severity", summary AS "Summary"
        FROM alert_history WHERE $__timeFilter(received_at)
        ORDER BY received_at DESC LIMIT 50
    """)
    return [
        table_panel(
            "Recent calls", "short", [recent], "The latest LLM calls, newest first.", h=10,
            units={"Tokens": "short", "Cost": "currencyUSD", "Duration": "ms"},
        ).override_by_name("Status", _status_colors()),
        table_panel(
            "Active alerts", "short",
            # severity "none" is the Watchdog heartbeat: proof the pipeline works, not news.
            [promql('ALERTS{alertstate="firing", severity!="none"}', instant=True)],
            "Alerts Prometheus is firing now (routed by Alertmanager).", w=12, h=8,
        ),
        table_panel(
            "Alert history", "short", [history],
            "Notifications Alertmanager delivered, as stored by the alert-history webhook.",
            w=12, h=8,
        ),
    ]  # fmt: skip


def _status_colors() -> list[dm.DynamicConfigValue]:
    return [
        dm.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-text"}),
        dm.DynamicConfigValue(
            id_val="mappings",
            value=[
                {"type": "value", "options": {"ok": {"color": OK, "index": 0}}},
                {"type": "regex",
                 "options": {"pattern": ".+", "result": {"color": BAD, "index": 1}}},
            ],
        ),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = new_dashboard(
        UID, "LLM overview", "Tokens, cost and calls of every LLM call, live."
    ).live_now(True)
    for variable in llm_variables():
        board.with_variable(variable)
    place(board, [*_headline(), *_charts(), *_tables()])  # type: ignore[list-item]
    return board
