"""Exporter health: what comes in, what is refused or replayed, and how storage keeps up."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard
from grafana_foundation_sdk.models import dashboard as dm

from exporter.dashboards.common import (
    BAD,
    OK,
    PROMETHEUS,
    new_dashboard,
    place,
    promql,
    stat_panel,
    thresholds,
    timeseries_panel,
)

UID = "nexus-exporter-health"
INSTANCE = '{instance=~"$instance"}'


# Counters with labels (a reject reason, a status code) have no series until their first event:
# `or on() vector(0)` shows 0 then, not "No data", and adds nothing once a series exists.
ZERO_UNTIL_FIRST = " or on() vector(0)"


def _rate(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{INSTANCE}[$__rate_interval]))"


def _counter_rate(metric: str, by: str = "") -> str:
    """A counter's rate, 0 before its first sample."""
    return _rate(metric, by) + ZERO_UNTIL_FIRST


def _increase(metric: str) -> str:
    """A counter's increase over the time range, 0 before its first sample."""
    return f"sum(increase({metric}{INSTANCE}[$__range])){ZERO_UNTIL_FIRST}"


def instance_variable() -> dashboard.QueryVariable:
    """Exporter instances as Prometheus sees them: several stateless exporters scale out."""
    return (
        dashboard.QueryVariable("instance")
        .label("Exporter")
        .datasource(PROMETHEUS)
        .query("label_values(nexus_exporter_spans_received_total, instance)")
        .multi(True)
        .include_all(True)
        .all_value(".*")
        .current(dm.VariableOption(selected=True, text=["All"], value=["$__all"]))
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_CASE_INSENSITIVE_ASC)
    )


def _status() -> list[object]:
    return [
        stat_panel(
            "Storage up", "bool_yes_no",
            [promql(f"min(nexus_exporter_storage_up{INSTANCE})", "storage")],
            "Whether the last database write of every exporter succeeded.",
        ).thresholds(thresholds((None, BAD), (1, OK))),
        stat_panel(
            "Spans received", "short",
            [promql(_increase("nexus_exporter_spans_received_total"))],
            "Spans received over OTLP in the time range.",
        ),
        stat_panel(
            "Spans rejected", "short",
            [promql(_increase("nexus_exporter_spans_rejected_total"))],
            "Spans refused as invalid (answered as OTLP partial success).",
        ).thresholds(thresholds((None, OK), (1, BAD))),
        stat_panel(
            "Queue depth", "short",
            [promql(f"sum(nexus_exporter_queue_depth_rows{INSTANCE})", "rows")],
            "Rows waiting for the database now; ingest answers 503 when it is full.",
        ),
    ]  # fmt: skip


def _flow() -> list[object]:
    return [
        timeseries_panel(
            "Spans per second", "cps",
            [
                promql(_counter_rate("nexus_exporter_spans_received_total"), "received"),
                promql(_counter_rate("nexus_exporter_spans_ignored_total"), "not LLM calls"),
                promql(_counter_rate("nexus_exporter_rows_written_total"), "rows written"),
            ],
            "Spans in, spans that describe no LLM call, and rows newly stored.",
        ),
        timeseries_panel(
            "Rejected and duplicate spans", "cps",
            [
                promql(_counter_rate("nexus_exporter_spans_rejected_total", "reason"),
                       "rejected: {{reason}}"),
                promql(_counter_rate("nexus_exporter_spans_duplicate_total"), "duplicates"),
            ],
            "Invalid spans by reason, and replays already stored (counted once).",
        ),
        timeseries_panel(
            "OTLP requests by status", "reqps",
            [promql(_counter_rate("nexus_exporter_requests_total", "code"), "{{code}}")],
            "Answers to senders: 503 means storage is behind and senders retry.",
        ),
        timeseries_panel(
            "Queue depth per exporter", "short",
            [promql(f"sum by (instance) (nexus_exporter_queue_depth_rows{INSTANCE})",
                    "{{instance}}")],
            "Rows waiting to be written, per exporter.",
        ),
    ]  # fmt: skip


def _storage() -> list[object]:
    write = "nexus_exporter_write_duration_seconds_bucket"
    return [
        timeseries_panel(
            "Write latency", "s",
            [
                promql(f"histogram_quantile({q}, {_rate(write, 'le')})", f"p{round(q * 100)}")
                for q in (0.5, 0.99)
            ],
            "Time to store one batch durably (COPY and commit).", w=8,
        ),
        timeseries_panel(
            "Writes rolled back", "ops",
            [promql(_counter_rate("nexus_exporter_writes_rolled_back_total"), "rolled back")],
            "Write transactions PostgreSQL rolled back to break a deadlock (the same spans"
            " written at once in two orders), each written again: a few are harmless, a steady"
            " rate means senders replay batches in parallel.", w=8,
        ),
        timeseries_panel(
            "Exporters up", "short",
            # The job too: with every exporter selected, $instance is .* and would match the
            # collector, Alertmanager and Prometheus as well.
            [promql('up{job="nexus-exporter", instance=~"$instance"}', "{{instance}}")],
            "1 while Prometheus can scrape the exporter.", w=8,
        ).min(0).max(1),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = new_dashboard(UID, "nexus-otel exporter health", "Ingest, rejects, queue, writes.")
    board.with_variable(instance_variable())
    place(board, [*_status(), *_flow(), *_storage()])  # type: ignore[list-item]
    return board
