-- hourly_performance_summary follows rows that leave api_calls too: a span set aside because
-- another span of the same call was kept (005, one row per call) leaves by DELETE, and the
-- summary must equal the rows kept. (Retention drops whole partitions, not rows: the summary
-- keeps those hours, as the other summaries do.) `last_call` stays the latest time seen.

CREATE FUNCTION nexus_subtract_performance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    WITH gone AS (
        SELECT date_trunc('hour', "timestamp", 'UTC') AS hour, service_name, provider, model,
               operation,
               md5(CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END) AS error_key,
               coalesce(nexus_ttfc_bucket(time_to_first_chunk_ms), -1) AS ttfc_bucket_ms,
               count(*) AS calls,
               coalesce(sum(output_tokens) FILTER (WHERE success AND output_tokens > 0), 0)
                   AS generated_tokens,
               coalesce(sum(duration_ms - coalesce(time_to_first_chunk_ms, 0))
                        FILTER (WHERE success AND output_tokens > 0), 0) AS generation_ms,
               count(*) FILTER (WHERE correlation_id IS NOT NULL) AS content_calls,
               count(cost_usd) FILTER (WHERE correlation_id IS NOT NULL) AS content_priced,
               coalesce(sum(cost_usd) FILTER (WHERE correlation_id IS NOT NULL), 0)
                   AS content_cost_usd
        FROM old_calls
        GROUP BY 1, 2, 3, 4, 5, 6, 7
    )
    UPDATE hourly_performance_summary s
    SET calls = s.calls - g.calls,
        generated_tokens = s.generated_tokens - g.generated_tokens,
        generation_ms = s.generation_ms - g.generation_ms,
        content_calls = s.content_calls - g.content_calls,
        content_priced = s.content_priced - g.content_priced,
        content_cost_usd = s.content_cost_usd - g.content_cost_usd
    FROM gone g
    WHERE s.hour = g.hour AND s.service_name = g.service_name AND s.provider = g.provider
      AND s.model = g.model AND s.operation = g.operation AND s.error_key = g.error_key
      AND s.ttfc_bucket_ms = g.ttfc_bucket_ms;
    DELETE FROM hourly_performance_summary WHERE calls <= 0;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_calls_performance_deletes
AFTER DELETE ON api_calls REFERENCING OLD TABLE AS old_calls
FOR EACH STATEMENT EXECUTE FUNCTION nexus_subtract_performance();
