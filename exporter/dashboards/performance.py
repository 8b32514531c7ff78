"""Performance: latency, throughput, time to first chunk, errors, prompt-cache hits."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard

from exporter.dashboards.common import (
    PROVIDER_COLORS,
    llm_variables,
    new_dashboard,
    place,
    prom_filter,
    promql,
    sql,
    sql_filter,
    table_panel,
    timeseries_panel,
)

UID = "nexus-performance"
DURATION = "gen_ai_client_operation_duration_seconds_bucket"
BY_MODEL = "gen_ai_provider_name, gen_ai_request_model"
# Raw calls are never read: a day of them is a second's scan at 10 million calls. The SQL panels
# read hourly_performance_summary (kept at ingest); the hour holding the range's start counts whole.
HOURS = (
    "hourly_performance_summary WHERE hour >= date_trunc('hour', $__timeFrom()::timestamptz) "
    f"AND hour <= $__timeTo()::timestamptz AND {sql_filter()}"
)
TTFC_QUANTILES = ((0.5, "p50"), (0.95, "p95"))
# Recorded in prometheus/rules/recording.yml.
ERROR_RATIO_RULE = "service_provider_model_operation:nexus_llm_calls_errors:ratio_rate5m"


def _latency() -> list[object]:
    overall = [
        promql(
            f"histogram_quantile({q}, sum by (le) "
            f"(rate({DURATION}{prom_filter()}[$__rate_interval])))",
            f"p{round(q * 100)}",
        )
        for q in (0.5, 0.9, 0.99)
    ]
    by_model = promql(
        f"histogram_quantile(0.95, sum by (le, {BY_MODEL}) "
        f"(rate({DURATION}{prom_filter()}[$__rate_interval])))",
        "{{gen_ai_provider_name}} {{gen_ai_request_model}}",
    )
    return [
        timeseries_panel(
            "Latency percentiles", "s", overall,
            "Call duration (semantic-convention histogram), p50, p90 and p99.",
        ),
        timeseries_panel(
            "p95 latency by model", "s", [by_model], "95th percentile call duration per model."
        ),
    ]  # fmt: skip


def _throughput() -> list[object]:
    speed = sql(
        f"""
        SELECT $__timeGroupAlias(hour, $__interval), model AS metric,
               sum(generated_tokens) / NULLIF(sum(generation_ms) / 1000.0, 0) AS tokens_per_second
        FROM {HOURS} AND generated_tokens > 0
        GROUP BY 1, 2 ORDER BY 1
        """,
        "time_series",
    )
    # Percentiles from the buckets, as Prometheus's histogram_quantile reads them: find the
    # bucket holding the rank, interpolate linearly inside it (the last, open bucket: its bound).
    quantiles = ",\n".join(
        f"min(coalesce(bound + (bound_end - bound) * ({q} * total - before) / calls, bound))"
        f' FILTER (WHERE before + calls >= {q} * total) AS "{name}"'
        for q, name in TTFC_QUANTILES
    )
    ttfc = sql(
        f"""
        SELECT time, {quantiles}
        FROM (SELECT time, bound, nexus_ttfc_bucket_end(bound) AS bound_end, calls,
                     sum(calls) OVER (PARTITION BY time ORDER BY bound) - calls AS before,
                     sum(calls) OVER (PARTITION BY time) AS total
              FROM (SELECT $__timeGroupAlias(hour, $__interval), ttfc_bucket_ms AS bound,
                           sum(calls) AS calls
                    FROM {HOURS} AND ttfc_bucket_ms >= 0
                    GROUP BY 1, 2) buckets) ranked
        GROUP BY 1 ORDER BY 1
        """,
        "time_series",
    )
    output = prom_filter('gen_ai_token_type="output"')
    output_rate = promql(
        f"sum by (gen_ai_provider_name) (rate(nexus_llm_tokens_total{output}[$__rate_interval]))",
        "{{gen_ai_provider_name}}",
    )
    return [
        timeseries_panel(
            "Generation speed by model", "suffix: tok/s", [speed],
            "Output tokens per second of generation (duration after the first chunk), per hour.",
        ),
        timeseries_panel(
            "Output tokens per second", "suffix: tok/s", [output_rate],
            "Output tokens the whole fleet produces per second, by provider.",
            colors=PROVIDER_COLORS,
        ),
        timeseries_panel(
            "Time to first chunk", "ms", [ttfc],
            "How long streaming calls wait for their first chunk (calls that report it), per hour:"
            " percentiles read from buckets, like Prometheus's histogram_quantile.",
        ),
    ]  # fmt: skip


def _errors() -> list[object]:
    errors = prom_filter('outcome="error"')
    sent = prom_filter('outcome!="blocked"')  # blocked by a budget: never reached the provider
    error_rate = promql(
        f"sum by ({BY_MODEL}) (rate(nexus_llm_calls_total{errors}[$__rate_interval])) / "
        f"sum by ({BY_MODEL}) (rate(nexus_llm_calls_total{sent}[$__rate_interval]))",
        "{{gen_ai_provider_name}} {{gen_ai_request_model}}",
    )
    cached = prom_filter('gen_ai_token_type="cache_read"')
    inputs = prom_filter('gen_ai_token_type="input"')
    cache_share = promql(
        f"sum by (gen_ai_provider_name) (rate(nexus_llm_tokens_total{cached}[$__rate_interval]))"
        " / sum by (gen_ai_provider_name) "
        f"(rate(nexus_llm_tokens_total{inputs}[$__rate_interval]))",
        "{{gen_ai_provider_name}}",
    )
    # Recorded per service too, so the service filter applies like every other filter.
    recorded = promql(
        f"{ERROR_RATIO_RULE}{prom_filter()}",
        "{{service_name}} {{gen_ai_provider_name}} {{gen_ai_request_model}} {{nexus_operation}}",
    )
    by_type = sql(f"""
        SELECT provider AS "Provider", model AS "Model", error_type AS "Error",
               sum(calls) AS "Calls", max(last_call) AS "Last seen"
        FROM {HOURS} AND error_type <> ''
        GROUP BY 1, 2, 3 ORDER BY 4 DESC, 1, 2, 3
    """)
    return [
        timeseries_panel(
            "Error rate by model", "percentunit", [error_rate],
            "Share of calls that failed, per provider and model.",
        ),
        timeseries_panel(
            "Cache hit share of input tokens", "percentunit", [cache_share],
            "Input tokens read from the provider's prompt cache, as a share of all input.",
            colors=PROVIDER_COLORS,
        ),
        table_panel(
            "Errors by type", "short", [by_type], "Failed calls in the range (whole hours).", w=12
        ),
        timeseries_panel(
            "Error ratio over 5 m", "percentunit", [recorded],
            "Share of calls that failed over the last 5 minutes, per service, provider, model and"
            " operation (a recorded series).",
            w=24,
        ),
    ]  # fmt: skip


def build() -> dashboard.Dashboard:
    board = new_dashboard(UID, "LLM performance", "Latency, throughput, errors and caching.")
    for variable in llm_variables():
        board.with_variable(variable)
    place(board, [*_latency(), *_throughput(), *_errors()])  # type: ignore[list-item]
    return board
