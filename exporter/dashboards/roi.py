"""Content ROI: what each generated carousel cost and the engagement it earned."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dm

from exporter.dashboards.common import (
    bar_panel,
    llm_variables,
    new_dashboard,
    place,
    sql,
    sql_filter,
    stat_panel,
    table_panel,
    timeseries_panel,
)

UID = "nexus-roi"
ENGAGEMENT = "likes + comments + shares + saves"
# An item's calls, found through the correlation id index: a refresh reads the calls of the
# items shown, never every call that carries a correlation id.
ITEM_CALLS = """
    SELECT count(*) AS calls, sum(a.cost_usd) AS cost FROM api_calls a
    WHERE a.correlation_id = c.correlation_id
"""
# Every content item with all of its generation's calls and cost (what v_carousel_roi says).
ITEMS = f"""
    SELECT c.correlation_id, c.title, c.platform, c.published_at, c.reach,
           {ENGAGEMENT} AS engagement, k.calls AS llm_calls, k.cost,
           ({ENGAGEMENT}) / NULLIF(k.cost, 0) AS per_dollar,
           k.cost / NULLIF({ENGAGEMENT}, 0) AS per_engagement
    FROM carousel_performance c CROSS JOIN LATERAL ({ITEM_CALLS}) k
"""


def _totals() -> list[object]:
    # Items published in the range with calls that pass the filters, and those calls' cost.
    totals = f"""
        FROM carousel_performance c
        CROSS JOIN LATERAL ({ITEM_CALLS} AND {sql_filter("a")}) k
        WHERE $__timeFilter(c.published_at) AND k.calls > 0
    """
    return [
        stat_panel(
            "Content generation spend", "currencyUSD",
            [sql(f'SELECT sum(k.cost) AS "Spend" {totals}')],
            "LLM spend of content published in the time range.",
        ),
        stat_panel(
            "Engagement", "short", [sql(f'SELECT sum({ENGAGEMENT}) AS "Engagement" {totals}')],
            "Likes, comments, shares and saves of that content.",
        ),
        stat_panel(
            "Cost per engagement", "currencyUSD",
            [sql(f"""SELECT sum(k.cost) / NULLIF(sum({ENGAGEMENT}), 0) AS "Cost per engagement"
                     {totals}""")],
            "Generation spend divided by engagement.",
        ),
        stat_panel(
            "Published items", "short", [sql(f'SELECT count(*) AS "Items" {totals}')],
            "Content items with both LLM calls and engagement in the time range.",
        ),
    ]  # fmt: skip


def _rankings() -> list[object]:
    ranked = sql(f"""
        SELECT correlation_id AS "Correlation id", title AS "Title", platform AS "Platform",
               published_at AS "Published", engagement AS "Engagement", reach AS "Reach",
               llm_calls AS "LLM calls", cost AS "Cost", per_dollar AS "Engagement per $",
               per_engagement AS "Cost per engagement"
        FROM ({ITEMS}) items ORDER BY per_dollar DESC NULLS LAST, correlation_id LIMIT 50
    """)
    per_dollar = sql(f"""
        SELECT coalesce(title, correlation_id) AS "Item", per_dollar AS "Engagement per $"
        FROM ({ITEMS}) items WHERE per_dollar IS NOT NULL
        ORDER BY per_dollar DESC LIMIT 15
    """)
    per_engagement = sql(f"""
        SELECT coalesce(title, correlation_id) AS "Item",
               per_engagement AS "Cost per engagement"
        FROM ({ITEMS}) items WHERE per_engagement IS NOT NULL
        ORDER BY per_engagement ASC LIMIT 15
    """)
    return [
        table_panel(
            "Content ranked by engagement per dollar", "short", [ranked],
            "Every item with its LLM cost (calls sharing its correlation id) and engagement.",
            units={"Cost": "currencyUSD", "Cost per engagement": "currencyUSD"},
        ),
        bar_panel(
            "Engagement per dollar by item", "short", [per_dollar], "Best value first."
        ),
        bar_panel(
            "Cost per engagement by item", "currencyUSD", [per_engagement],
            "Cheapest engagement first.",
        ),
    ]  # fmt: skip


def _over_time() -> list[object]:
    spend = sql(
        f"""
        SELECT $__timeGroupAlias(hour, $__interval),
               CASE WHEN sum(content_priced) > 0 THEN sum(content_cost_usd) END AS "Content spend"
        FROM hourly_performance_summary
        WHERE hour >= date_trunc('hour', $__timeFrom()::timestamptz)
          AND hour <= $__timeTo()::timestamptz AND {sql_filter()}
        GROUP BY 1 HAVING sum(content_calls) > 0 ORDER BY 1
        """,
        "time_series",
    )
    engagement = sql(
        f"""
        SELECT $__timeGroupAlias(published_at, $__interval), sum({ENGAGEMENT}) AS "Engagement"
        FROM carousel_performance WHERE $__timeFilter(published_at)
        GROUP BY 1 ORDER BY 1
        """,
        "time_series",
    )
    right_axis = [
        dm.DynamicConfigValue(id_val="unit", value="short"),
        dm.DynamicConfigValue(id_val="custom.axisPlacement", value="right"),
        dm.DynamicConfigValue(id_val="custom.drawStyle", value="bars"),
    ]
    return [
        timeseries_panel(
            "Spend vs engagement", "currencyUSD", [spend, engagement],
            "LLM spend on content per hour (left) and engagement of content published (right).",
            w=24,
        ).override_by_name("Engagement", right_axis),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = new_dashboard(UID, "Content ROI", "Engagement per dollar of generated content.")
    for variable in llm_variables():
        board.with_variable(variable)
    place(board, [*_totals(), *_rankings(), *_over_time()])  # type: ignore[list-item]
    return board
