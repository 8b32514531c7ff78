"""Recording a revision: its totals per provider and model, each changed call's previous and
new cost, and the summaries corrected by the same differences, from the rows the reprice's
updates changed (the temporary table nexus_reprice_changed), in the reprice's transaction."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.types.json import Jsonb

_REVISION = """
INSERT INTO price_revisions (since, until, model_pattern, provider, include_provider_costs,
    price_sources, calls_examined, calls_changed, newly_priced, newly_unpriced, old_cost_usd,
    new_cost_usd)
VALUES (%(since)s, %(until)s, %(pattern)s, %(provider)s, %(include_provider)s, %(sources)s,
        %(examined)s, 0, 0, 0, 0, 0)
RETURNING id
"""
_REVISION_CALLS = """
INSERT INTO price_revision_calls (revision_id, trace_id, span_id, "timestamp",
    previous_cost_usd, previous_cost_source, previous_price_ref, cost_usd, cost_source, price_ref)
SELECT %(revision)s, trace_id, span_id, "timestamp", old_cost, old_source, old_ref, new_cost,
       new_source, price_ref
FROM nexus_reprice_changed
"""
_REVISION_MODELS = """
INSERT INTO price_revision_models
SELECT %(revision)s, provider, model, count(*),
       count(*) FILTER (WHERE old_cost IS NULL AND new_cost IS NOT NULL),
       count(*) FILTER (WHERE old_cost IS NOT NULL AND new_cost IS NULL),
       coalesce(sum(old_cost), 0), coalesce(sum(new_cost), 0)
FROM nexus_reprice_changed GROUP BY provider, model
"""
_REVISION_TOTALS = """
UPDATE price_revisions r SET calls_changed = t.calls, newly_priced = t.priced,
       newly_unpriced = t.unpriced, old_cost_usd = t.old, new_cost_usd = t.new
FROM (SELECT sum(calls_changed) AS calls, sum(newly_priced) AS priced,
             sum(newly_unpriced) AS unpriced, sum(old_cost_usd) AS old, sum(new_cost_usd) AS new
      FROM price_revision_models WHERE revision_id = %(revision)s) t
WHERE r.id = %(revision)s
"""
# The summaries move by each changed call's difference: cost, and unpriced count.
_SUMMARY_DELTA = """
UPDATE {table} s SET cost_usd = s.cost_usd + d.cost, unpriced_calls = s.unpriced_calls + d.unpriced,
       updated_at = now()
FROM (SELECT {key} AS key, service_name, provider, model, operation,
             sum(coalesce(new_cost, 0) - coalesce(old_cost, 0)) AS cost,
             sum((new_cost IS NULL)::int - (old_cost IS NULL)::int) AS unpriced
      FROM nexus_reprice_changed GROUP BY 1, 2, 3, 4, 5) d
WHERE (s.{column}, s.service_name, s.provider, s.model, s.operation)
    = (d.key, d.service_name, d.provider, d.model, d.operation)
"""
_DAILY = _SUMMARY_DELTA.format(
    table="daily_usage_summary", column="day", key="(\"timestamp\" AT TIME ZONE 'UTC')::date"
)
_HOURLY = _SUMMARY_DELTA.format(
    table="hourly_usage_summary", column="hour", key="date_trunc('hour', \"timestamp\", 'UTC')"
)
_TEN_MINUTES = _SUMMARY_DELTA.format(
    table="ten_minute_usage_summary", column="bucket", key='nexus_ten_minutes("timestamp")'
)
# Content spend (calls with a correlation id) per the performance summary's own key.
_PERFORMANCE = """
UPDATE hourly_performance_summary s
SET content_priced = s.content_priced + d.priced, content_cost_usd = s.content_cost_usd + d.cost
FROM (SELECT date_trunc('hour', "timestamp", 'UTC') AS hour, service_name, provider, model,
             operation,
             md5(CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END) AS error_key,
             coalesce(nexus_ttfc_bucket(time_to_first_chunk_ms), -1) AS ttfc_bucket_ms,
             sum((new_cost IS NOT NULL)::int - (old_cost IS NOT NULL)::int) AS priced,
             sum(coalesce(new_cost, 0) - coalesce(old_cost, 0)) AS cost
      FROM nexus_reprice_changed WHERE content GROUP BY 1, 2, 3, 4, 5, 6, 7) d
WHERE (s.hour, s.service_name, s.provider, s.model, s.operation, s.error_key, s.ttfc_bucket_ms)
    = (d.hour, d.service_name, d.provider, d.model, d.operation, d.error_key, d.ttfc_bucket_ms)
"""


def record_revision(
    conn: psycopg.Connection[Any],
    params: dict[str, Any],
    sources: dict[str, Any],
    calls_examined: int,
) -> int | None:
    """The revision: its call rows, its totals per model, and the summaries corrected. None
    when the update changed no row (calls removed since they were read)."""
    changed = conn.execute("SELECT count(*) FROM nexus_reprice_changed").fetchone()
    if not changed or not changed[0]:
        return None
    row = conn.execute(
        _REVISION,
        {
            **params,
            "sources": Jsonb(sources),
            "examined": calls_examined,
        },
    ).fetchone()
    assert row is not None
    revision = {"revision": row[0]}
    for statement in (_REVISION_CALLS, _REVISION_MODELS, _REVISION_TOTALS):
        conn.execute(statement, revision)
    for statement in (_DAILY, _HOURLY, _TEN_MINUTES, _PERFORMANCE):
        conn.execute(statement)
    return int(row[0])
