-- Holding under hostile input: one row per span whatever its start time claims, engagement
-- counts in a plausible range, and views and summaries that cannot overflow.

-- 1. A span is its trace and span id. api_calls is partitioned by month and a unique key on a
-- partitioned table must include the partition column, so the key (trace_id, span_id) is kept
-- by each monthly partition instead (PostgreSQL's ON CONFLICT DO NOTHING without a target, and
-- COPY, check every unique index of the partition a row goes to). The writer checks rows close
-- to a month boundary against the other month itself.
--
-- Rows already stored twice within a month (same ids, another start time) are removed first,
-- keeping the earliest, and taken out of the summaries that counted them.
CREATE TEMP TABLE nexus_copies ON COMMIT DROP AS
SELECT tableoid AS part, ctid AS row_id
FROM (
    SELECT tableoid, ctid,
           row_number() OVER (PARTITION BY tableoid, trace_id, span_id
                              ORDER BY "timestamp", ingested_at, ctid) AS copy
    FROM api_calls
) numbered
WHERE copy > 1;

CREATE TEMP TABLE nexus_removed ON COMMIT DROP AS
WITH removed AS (
    DELETE FROM api_calls a USING nexus_copies c
    WHERE a.tableoid = c.part AND a.ctid = c.row_id
    RETURNING a.*
)
SELECT * FROM removed;

UPDATE daily_usage_summary s SET
    calls = s.calls - r.calls,
    failed_calls = s.failed_calls - r.failed_calls,
    unpriced_calls = s.unpriced_calls - r.unpriced_calls,
    input_tokens = s.input_tokens - r.input_tokens,
    output_tokens = s.output_tokens - r.output_tokens,
    cache_read_tokens = s.cache_read_tokens - r.cache_read_tokens,
    cache_write_tokens = s.cache_write_tokens - r.cache_write_tokens,
    reasoning_tokens = s.reasoning_tokens - r.reasoning_tokens,
    total_tokens = s.total_tokens - r.total_tokens,
    cost_usd = s.cost_usd - r.cost_usd,
    duration_ms_sum = s.duration_ms_sum - r.duration_ms_sum,
    updated_at = now()
FROM (
    SELECT ("timestamp" AT TIME ZONE 'UTC')::date AS day, service_name, provider, model, operation,
           count(*) AS calls, count(*) FILTER (WHERE NOT success) AS failed_calls,
           count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cache_read_tokens) AS cache_read_tokens,
           sum(cache_write_tokens) AS cache_write_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(total_tokens) AS total_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd, sum(duration_ms) AS duration_ms_sum
    FROM nexus_removed
    GROUP BY 1, 2, 3, 4, 5
) r
WHERE (s.day, s.service_name, s.provider, s.model, s.operation)
    = (r.day, r.service_name, r.provider, r.model, r.operation);

UPDATE hourly_usage_summary s SET
    calls = s.calls - r.calls,
    failed_calls = s.failed_calls - r.failed_calls,
    unpriced_calls = s.unpriced_calls - r.unpriced_calls,
    input_tokens = s.input_tokens - r.input_tokens,
    output_tokens = s.output_tokens - r.output_tokens,
    cache_read_tokens = s.cache_read_tokens - r.cache_read_tokens,
    cache_write_tokens = s.cache_write_tokens - r.cache_write_tokens,
    reasoning_tokens = s.reasoning_tokens - r.reasoning_tokens,
    total_tokens = s.total_tokens - r.total_tokens,
    cost_usd = s.cost_usd - r.cost_usd,
    duration_ms_sum = s.duration_ms_sum - r.duration_ms_sum,
    updated_at = now()
FROM (
    SELECT date_trunc('hour', "timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
           service_name, provider, model, operation,
           count(*) AS calls, count(*) FILTER (WHERE NOT success) AS failed_calls,
           count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls,
           sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens,
           sum(cache_read_tokens) AS cache_read_tokens,
           sum(cache_write_tokens) AS cache_write_tokens,
           sum(reasoning_tokens) AS reasoning_tokens, sum(total_tokens) AS total_tokens,
           coalesce(sum(cost_usd), 0) AS cost_usd, sum(duration_ms) AS duration_ms_sum
    FROM nexus_removed
    GROUP BY 1, 2, 3, 4, 5
) r
WHERE (s.hour, s.service_name, s.provider, s.model, s.operation)
    = (r.hour, r.service_name, r.provider, r.model, r.operation);

ALTER TABLE api_calls DROP CONSTRAINT api_calls_span_key;

DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'api_calls'::regclass
    LOOP
        EXECUTE format('CREATE UNIQUE INDEX %I ON %s (trace_id, span_id)',
                       part::text || '_span_key', part);
    END LOOP;
END;
$$;

-- Creates the monthly partition holding `day`, with its unique key, if it does not exist yet.
CREATE OR REPLACE FUNCTION nexus_ensure_partition(day date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', day)::date;
    month_end   date := (date_trunc('month', day) + interval '1 month')::date;
    part_name   text := format('api_calls_%s', to_char(month_start, 'YYYY_MM'));
BEGIN
    IF to_regclass(part_name) IS NULL THEN
        -- The advisory lock serialises concurrent creators of the same partition.
        PERFORM pg_advisory_xact_lock(hashtext(part_name));
        IF to_regclass(part_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF api_calls FOR VALUES FROM (%L) TO (%L)',
                part_name,
                month_start::timestamp AT TIME ZONE 'UTC',
                month_end::timestamp AT TIME ZONE 'UTC'
            );
            EXECUTE format('CREATE UNIQUE INDEX %I ON %I (trace_id, span_id)',
                           part_name || '_span_key', part_name);
        END IF;
    END IF;
    RETURN part_name;
END;
$$;

-- 2. Summed cost cannot overflow: a call costs under $1,000,000 (the exporter refuses more),
-- but numeric(24, 12) would stop a summary row at $10^12, a million such calls in a day. Plain
-- numeric has no such limit. (The token counts stay bigint: a call uses at most 10^8 tokens
-- in all, so a summary row would need 9.2 * 10^10 calls in one day or hour to overflow, over a
-- million calls a second for a whole day.)
DROP VIEW v_cost_by_operation;
ALTER TABLE daily_usage_summary ALTER COLUMN cost_usd TYPE numeric;
ALTER TABLE hourly_usage_summary ALTER COLUMN cost_usd TYPE numeric;
CREATE VIEW v_cost_by_operation AS
SELECT operation,
       sum(calls)                                          AS calls,
       sum(failed_calls)                                   AS failed_calls,
       sum(total_tokens)                                   AS total_tokens,
       sum(cost_usd)                                       AS cost_usd,
       sum(cost_usd) / NULLIF(sum(calls - unpriced_calls), 0) AS avg_cost_per_call_usd
FROM daily_usage_summary
WHERE day >= CURRENT_DATE - 30
GROUP BY operation;

-- 3. Engagement counts: at most 10^12 each (the API answers 422 past it; a post seen by every
-- person on earth a hundred times is 10^12). NOT VALID: rows stored before are kept as they
-- are; every new or updated row is checked.
ALTER TABLE carousel_performance ADD CONSTRAINT carousel_performance_counts_plausible CHECK (
    likes <= 1000000000000 AND comments <= 1000000000000 AND shares <= 1000000000000
    AND saves <= 1000000000000 AND reach <= 1000000000000 AND impressions <= 1000000000000
) NOT VALID;
ALTER TABLE content_engagement ADD CONSTRAINT content_engagement_counts_plausible CHECK (
    likes <= 1000000000000 AND comments <= 1000000000000 AND shares <= 1000000000000
    AND saves <= 1000000000000 AND reach <= 1000000000000 AND impressions <= 1000000000000
) NOT VALID;

-- Engagement summed in numeric, so no stored counts (older rows included) can overflow it.
DROP VIEW v_carousel_roi;
CREATE VIEW v_carousel_roi AS
WITH cost AS (
    SELECT correlation_id, count(*) AS llm_calls, sum(total_tokens) AS total_tokens,
           sum(cost_usd) AS generation_cost_usd,
           count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
    FROM api_calls
    WHERE correlation_id IS NOT NULL
    GROUP BY correlation_id
), engaged AS (
    SELECT c.*, c.likes::numeric + c.comments + c.shares + c.saves AS engagement
    FROM carousel_performance c
)
SELECT c.correlation_id,
       c.title,
       c.platform,
       c.published_at,
       c.likes, c.comments, c.shares, c.saves, c.reach, c.impressions,
       c.engagement,
       coalesce(k.llm_calls, 0)                                      AS llm_calls,
       coalesce(k.total_tokens, 0)                                   AS total_tokens,
       k.generation_cost_usd,
       c.engagement / NULLIF(k.generation_cost_usd, 0)               AS engagement_per_dollar,
       k.generation_cost_usd / NULLIF(c.engagement, 0)               AS cost_per_engagement_usd,
       coalesce(k.unpriced_calls, 0)                                 AS unpriced_calls,
       c.measured_at
FROM engaged c
LEFT JOIN cost k USING (correlation_id)
ORDER BY engagement_per_dollar DESC NULLS LAST;
