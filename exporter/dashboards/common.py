"""What every nexus-otel dashboard shares: datasources, variables, filters, colours, panel kinds."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import bargauge, dashboard, gauge, prometheus, stat, table
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import timeseries as ts
from grafana_foundation_sdk.cog import builder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm

from exporter.dashboards.sql import POSTGRES_TYPE, SQLFormat, SQLQueryBuilder

# Pinned in grafana/provisioning/datasources so links and panels survive re-provisioning.
PROMETHEUS = dm.DataSourceRef(type_val="prometheus", uid="nexus-prometheus")
POSTGRES = dm.DataSourceRef(type_val=POSTGRES_TYPE, uid="nexus-postgres")
TAGS = ["nexus-otel"]
REFRESH = "5s"  # Grafana's fastest default refresh

# One colour per provider on every dashboard: Groq purple, Gemini green, Claude blue.
PROVIDER_COLORS = {
    "groq": "#8b5cf6",
    "gcp.gemini": "#10b981",
    "gcp.vertex_ai": "#34d399",
    "anthropic": "#3b82f6",
    "openai": "#f59e0b",
}
OK, WARN, BAD = "#4caf50", "#ff9800", "#f44336"

# Template variables: one set serves PromQL and SQL panels alike, because the Prometheus label
# values are the stored column values. They are read from daily_usage_summary (small, complete
# history). Grafana expands a multi-value selection per datasource: `(a|b)` in PromQL, `'a','b'`
# in SQL; `ARRAY[...]` keeps the SQL valid even when a variable has no values yet.
VARIABLES = {
    "service": ("Service", "service_name", "service_name"),
    "provider": ("Provider", "provider", "gen_ai_provider_name"),
    "model": ("Model", "model", "gen_ai_request_model"),
    "operation": ("Operation", "operation", "nexus_operation"),
}


def sql_filter(alias: str = "") -> str:
    """The WHERE conditions of the dashboard variables over api_calls-shaped columns."""
    prefix = f"{alias}." if alias else ""
    return " AND ".join(
        f"{prefix}{column} = ANY(ARRAY[${name}]::text[])"
        for name, (_, column, _) in VARIABLES.items()
    )


def prom_filter(*extra: str) -> str:
    """The label matchers of the dashboard variables, plus `extra` matchers."""
    matchers = [f'{label}=~"${name}"' for name, (_, _, label) in VARIABLES.items()]
    return "{" + ", ".join([*matchers, *extra]) + "}"


def llm_variables() -> list[builder.Builder[dm.VariableModel]]:
    variables: list[builder.Builder[dm.VariableModel]] = []
    for name, (label, column, _) in VARIABLES.items():
        # An empty operation is stored as '': give it a readable name in the picker.
        text = f"coalesce(nullif({column}, ''), '(none)')" if column == "operation" else column
        query = (
            f"SELECT DISTINCT {text} AS __text, {column} AS __value "
            f"FROM daily_usage_summary ORDER BY 1"
        )
        variables.append(
            dashboard.QueryVariable(name)
            .label(label)
            .datasource(POSTGRES)
            .query(query)
            .multi(True)
            .include_all(True)
            .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
        )
    return variables


def new_dashboard(uid: str, title: str, description: str) -> dashboard.Dashboard:
    return (
        dashboard.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh(REFRESH)
        .time("now-24h", "now")
        .timezone("browser")
        .readonly()
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .link(
            dashboard.DashboardLink("nexus-otel")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(TAGS)
            .as_dropdown(False)
            .include_vars(True)
            .keep_time(True)
        )
    )


# --- queries --------------------------------------------------------------------------------


def promql(expr: str, legend: str = "__auto", instant: bool = False) -> prometheus.Dataquery:
    query = prometheus.Dataquery().expr(expr).legend_format(legend).datasource(PROMETHEUS)
    if instant:
        return query.instant().format(pm.PromQueryFormat.TABLE)
    return query.range()


def sql(raw_sql: str, format: SQLFormat = "table") -> SQLQueryBuilder:
    return SQLQueryBuilder(" ".join(raw_sql.split()), format).datasource(POSTGRES)


Query = prometheus.Dataquery | SQLQueryBuilder


def _with_targets(panel: Any, queries: Sequence[Query]) -> Any:
    for ref, query in zip("ABCDEFGH", queries, strict=False):
        panel = panel.with_target(query.ref_id(ref))
    source = PROMETHEUS if isinstance(queries[0], prometheus.Dataquery) else POSTGRES
    return panel.datasource(source)


# --- panels ---------------------------------------------------------------------------------


def thresholds(*steps: tuple[float | None, str]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=value, color=color) for value, color in steps])
    )


def unit_override(unit: str) -> list[dm.DynamicConfigValue]:
    return [dm.DynamicConfigValue(id_val="unit", value=unit)]


def color_overrides(panel: Any, colors: dict[str, str]) -> Any:
    for name, color in colors.items():
        panel = panel.override_by_name(
            name,
            [dm.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": color})],
        )
    return panel


def stat_panel(
    title: str, unit: str, queries: Sequence[Query], description: str = "", w: int = 6, h: int = 5
) -> stat.Panel:
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(h)
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(thresholds((None, "#03a9f4")))
    )
    return _with_targets(panel, queries)  # type: ignore[no-any-return]


def trend_stat(
    title: str, unit: str, query: SQLQueryBuilder, description: str, w: int = 6
) -> stat.Panel:
    """A value with its change vs yesterday (a `trend` column, in percent, coloured)."""
    panel = stat_panel(title, unit, [query], description, w=w)
    return panel.override_by_name(  # type: ignore[no-any-return]
        "vs yesterday",
        [
            dm.DynamicConfigValue(id_val="unit", value="percent"),
            dm.DynamicConfigValue(id_val="decimals", value=1),
            dm.DynamicConfigValue(
                id_val="thresholds",
                value={
                    "mode": "absolute",
                    "steps": [
                        {"color": OK, "value": None},
                        {"color": WARN, "value": 0.001},
                    ],
                },
            ),
        ],
    )


def timeseries_panel(
    title: str,
    unit: str,
    queries: Sequence[Query],
    description: str = "",
    w: int = 12,
    h: int = 8,
    stacked: bool = False,
    colors: dict[str, str] | None = None,
) -> ts.Panel:
    panel = (
        ts.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(h)
        .line_width(2)
        .fill_opacity(15 if stacked else 8)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .show_legend(True)
            .display_mode(cm.LegendDisplayMode.TABLE)
            .placement(cm.LegendPlacement.BOTTOM)
            .calcs(["mean", "max", "lastNotNull"])
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI))
    )
    if stacked:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    panel = color_overrides(panel, colors or {})
    return _with_targets(panel, queries)  # type: ignore[no-any-return]


def table_panel(
    title: str,
    unit: str,
    queries: Sequence[Query],
    description: str = "",
    w: int = 24,
    h: int = 9,
    units: dict[str, str] | None = None,
) -> table.Panel:
    panel = table.Panel().title(title).description(description).unit(unit).span(w).height(h)
    panel = panel.cell_height(cm.TableCellHeight.SM).filterable(True)
    for field, field_unit in (units or {}).items():
        panel = panel.override_by_name(field, unit_override(field_unit))
    return _with_targets(panel, queries)  # type: ignore[no-any-return]


def gauge_panel(
    title: str, unit: str, queries: Sequence[Query], description: str = "", w: int = 6, h: int = 7
) -> gauge.Panel:
    """Budget gauges: green, amber from the usual 80 % warning, red when exceeded."""
    panel = (
        gauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .min(0)
        .max(1.2)
        .span(w)
        .height(h)
        .show_threshold_markers(True)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
        .thresholds(thresholds((None, OK), (0.8, WARN), (1.0, BAD)))
    )
    return _with_targets(panel, queries)  # type: ignore[no-any-return]


def bar_panel(
    title: str,
    unit: str,
    queries: Sequence[Query],
    description: str = "",
    w: int = 12,
    h: int = 8,
    colors: dict[str, str] | None = None,
) -> bargauge.Panel:
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .span(w)
        .height(h)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.GRADIENT)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(True))
        .color_scheme(dashboard.FieldColor().mode(dm.FieldColorModeId.CONTINUOUS_BL_PU))
    )
    panel = color_overrides(panel, colors or {})
    return _with_targets(panel, queries)  # type: ignore[no-any-return]


def place(board: dashboard.Dashboard, panels: Sequence[builder.Builder[dm.Panel]]) -> None:
    """Adds panels left to right, top to bottom, with ids unique in the dashboard."""
    for number, panel in enumerate(panels, start=1):
        board.with_panel(panel.id(number))  # type: ignore[attr-defined]
