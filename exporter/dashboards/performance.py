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
# prometheus/rules/recording.yml
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
        SELECT $__timeGroupAlias("timestamp", $__interval), model AS metric,
               sum(output_tokens) / NULLIF(sum(duration_ms - coalesce(time_to_first_chunk_ms, 0))
                                           / 1000.0, 0) AS tokens_per_second
        FROM api_calls
        WHERE success AND output_tokens > 0 AND $__timeFilter("timestamp") AND {sql_filter()}
        GROUP BY 1, 2 ORDER BY 1
        """,
        "time_series",
    )
    ttfc = [
        sql(
            f"""
            SELECT $__timeGroupAlias("timestamp", $__interval),
                   percentile_cont({q}) WITHIN GROUP (ORDER BY time_to_first_chunk_ms) AS "{name}"
            FROM api_calls WHERE time_to_first_chunk_ms IS NOT NULL
              AND $__timeFilter("timestamp") AND {sql_filter()}
            GROUP BY 1 ORDER BY 1
            """,
            "time_series",
        )
        for q, name in ((0.5, "p50"), (0.95, "p95"))
    ]
    output = prom_filter('gen_ai_token_type="output"')
    output_rate = promql(
        f"sum by (gen_ai_provider_name) (rate(nexus_llm_tokens_total{output}[$__rate_interval]))",
        "{{gen_ai_provider_name}}",
    )
    return [
        timeseries_panel(
            "Generation speed by model", "suffix: tok/s", [speed],
            "Output tokens per second of generation (duration after the first chunk).",
        ),
        timeseries_panel(
            "Output tokens per second", "suffix: tok/s", [output_rate],
            "Output tokens the whole fleet produces per second, by provider.",
            colors=PROVIDER_COLORS,
        ),
        timeseries_panel(
            "Time to first chunk", "ms", ttfc,
            "How long streaming calls wait for their first chunk (calls that report it).",
        ),
    ]  # fmt: skip


def _errors() -> list[object]:
    errors = prom_filter('outcome="error"')
    error_rate = promql(
        f"sum by ({BY_MODEL}) (rate(nexus_llm_calls_total{errors}[$__rate_interval])) / "
        f"sum by ({BY_MODEL}) (rate(nexus_llm_calls_total{prom_filter()}[$__rate_interval]))",
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
        SELECT provider AS "Provider", model AS "Model", coalesce(error_type, 'error') AS "Error",
               count(*) AS "Calls", max("timestamp") AS "Last seen"
        FROM api_calls WHERE NOT success AND $__timeFilter("timestamp") AND {sql_filter()}
        GROUP BY 1, 2, 3 ORDER BY 4 DESC
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
        table_panel("Errors by type", "short", [by_type], "Failed calls in the range.", w=12),
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
