-- Usage per UTC ten minutes, for the parts of a range that are not whole hours: "yesterday up to
-- this time", a day that starts at :30 (Asia/Kolkata), a range given to the minute. Without it
-- such an edge read up to half an hour of raw rows; now whole ten minutes come from here and
-- raw rows are read for at most five minutes at each end.
--
-- The same columns and key as hourly_usage_summary, maintained in the same transaction as the
-- raw rows and the other summaries, and corrected by repricing like them. Kept forever, like
-- them: about 150 rows a day for each service, provider, model and operation.
CREATE TABLE ten_minute_usage_summary (LIKE hourly_usage_summary INCLUDING DEFAULTS);
ALTER TABLE ten_minute_usage_summary RENAME COLUMN hour TO bucket;
ALTER TABLE ten_minute_usage_summary
    ADD PRIMARY KEY (bucket, service_name, provider, model, operation);
COMMENT ON COLUMN ten_minute_usage_summary.bucket IS 'the first instant of the ten minutes (UTC)';

-- The ten minutes holding a start time (exporter.ingest.summaries.floor_to in Python).
CREATE FUNCTION nexus_ten_minutes(at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN date_bin('10 minutes', at, TIMESTAMPTZ '2000-01-01 00:00:00+00');

INSERT INTO ten_minute_usage_summary (bucket, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT nexus_ten_minutes("timestamp"), service_name, provider, model, operation, count(*),
       count(*) FILTER (WHERE NOT success), count(*) FILTER (WHERE cost_usd IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(reasoning_tokens), sum(total_tokens), coalesce(sum(cost_usd), 0), sum(duration_ms)
FROM api_calls
GROUP BY 1, 2, 3, 4, 5;
