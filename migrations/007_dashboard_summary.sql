-- What the performance and content ROI dashboards need per UTC hour, so a refresh never reads a
-- day of raw calls (the performance board took 3.3 s at 10 million calls): generation speed,
-- time to first chunk as a histogram, failures by error type, and the spend of calls made for
-- content (those with a correlation id). Kept by a statement trigger on api_calls from the rows
-- each statement inserted (its transition table): rows an INSERT ... ON CONFLICT DO NOTHING
-- skipped are not in it, so a replayed call never counts twice, and a rolled-back write undoes
-- its part. One aggregate per statement, over the statement's rows only.

-- Lower bounds of the time-to-first-chunk buckets in milliseconds: a bucket holds the calls from
-- its bound up to the next one; the last is open. Finer where first chunks usually arrive
-- (0.1 to 2 s): a percentile read from these buckets is off by at most half a bucket's width.
CREATE FUNCTION nexus_ttfc_bounds() RETURNS float8[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY[0, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500, 600, 700, 800,
             900, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000, 5000, 7500, 10000, 15000, 20000,
             30000, 60000]::float8[];

-- The bucket (its lower bound) of a time to first chunk; NULL when the call reported none.
-- The trigger spells it out (the same bounds as constants): no function call per row.
CREATE FUNCTION nexus_ttfc_bucket(ms float8) RETURNS float8
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN (nexus_ttfc_bounds())[width_bucket(greatest(ms, 0), nexus_ttfc_bounds())];

-- Where the bucket starting at `bound` ends; NULL for the last, open bucket.
CREATE FUNCTION nexus_ttfc_bucket_end(bound float8) RETURNS float8
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (nexus_ttfc_bounds())[array_position(nexus_ttfc_bounds(), bound) + 1];

CREATE TABLE hourly_performance_summary (
    hour             timestamptz NOT NULL,
    service_name     text    NOT NULL,
    provider         text    NOT NULL,
    model            text    NOT NULL,
    operation        text    NOT NULL,
    error_type       text    NOT NULL,  -- '' for calls that succeeded
    -- md5 of error_type: keyed by it, the key stays under PostgreSQL's 2,704-byte index entry
    -- limit with every text at its longest (multi-byte) length.
    error_key        text    NOT NULL,
    ttfc_bucket_ms   float8  NOT NULL,  -- nexus_ttfc_bucket, -1 when no first chunk was reported
    calls            bigint  NOT NULL,
    last_call        timestamptz NOT NULL,
    -- Successful calls that produced output: their output tokens and the time spent generating
    -- them (duration after the first chunk), for tokens per second.
    generated_tokens bigint  NOT NULL,
    generation_ms    float8  NOT NULL,
    -- Calls with a correlation id (made for a content item): how many, how many priced, and
    -- the spend of those (no priced call: no spend figure, not $0).
    content_calls    bigint  NOT NULL,
    content_priced   bigint  NOT NULL,
    content_cost_usd numeric NOT NULL,
    PRIMARY KEY (hour, service_name, provider, model, operation, error_key, ttfc_bucket_ms)
);

CREATE FUNCTION nexus_add_performance() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO hourly_performance_summary AS s
    SELECT date_trunc('hour', "timestamp", 'UTC'), service_name, provider, model, operation,
           CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END,
           md5(CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END),
           CASE WHEN time_to_first_chunk_ms IS NULL THEN -1
                ELSE (ARRAY[0, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500,
                            600, 700, 800, 900, 1000, 1250, 1500, 1750, 2000, 2500, 3000, 4000,
                            5000, 7500, 10000, 15000, 20000, 30000, 60000]::float8[])
                     [width_bucket(greatest(time_to_first_chunk_ms, 0),
                                   ARRAY[0, 25, 50, 75, 100, 125, 150, 175, 200, 250, 300, 350,
                                         400, 450, 500, 600, 700, 800, 900, 1000, 1250, 1500,
                                         1750, 2000, 2500, 3000, 4000, 5000, 7500, 10000, 15000,
                                         20000, 30000, 60000]::float8[])] END,
           count(*), max("timestamp"),
           coalesce(sum(output_tokens) FILTER (WHERE success AND output_tokens > 0), 0),
           coalesce(sum(duration_ms - coalesce(time_to_first_chunk_ms, 0))
                    FILTER (WHERE success AND output_tokens > 0), 0),
           count(*) FILTER (WHERE correlation_id IS NOT NULL),
           count(cost_usd) FILTER (WHERE correlation_id IS NOT NULL),
           coalesce(sum(cost_usd) FILTER (WHERE correlation_id IS NOT NULL), 0)
    FROM new_calls
    GROUP BY 1, 2, 3, 4, 5, 6, 8
    ORDER BY 1, 2, 3, 4, 5, 7, 8  -- one lock order for concurrent writers
    ON CONFLICT (hour, service_name, provider, model, operation, error_key, ttfc_bucket_ms)
    DO UPDATE SET calls = s.calls + EXCLUDED.calls,
                  last_call = greatest(s.last_call, EXCLUDED.last_call),
                  generated_tokens = s.generated_tokens + EXCLUDED.generated_tokens,
                  generation_ms = s.generation_ms + EXCLUDED.generation_ms,
                  content_calls = s.content_calls + EXCLUDED.content_calls,
                  content_priced = s.content_priced + EXCLUDED.content_priced,
                  content_cost_usd = s.content_cost_usd + EXCLUDED.content_cost_usd;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_calls_performance
AFTER INSERT ON api_calls REFERENCING NEW TABLE AS new_calls
FOR EACH STATEMENT EXECUTE FUNCTION nexus_add_performance();

-- The calls stored before this migration.
INSERT INTO hourly_performance_summary
SELECT date_trunc('hour', "timestamp", 'UTC'), service_name, provider, model, operation,
       CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END,
       md5(CASE WHEN success THEN '' ELSE coalesce(error_type, 'error') END),
       coalesce(nexus_ttfc_bucket(time_to_first_chunk_ms), -1),
       count(*), max("timestamp"),
       coalesce(sum(output_tokens) FILTER (WHERE success AND output_tokens > 0), 0),
       coalesce(sum(duration_ms - coalesce(time_to_first_chunk_ms, 0))
                FILTER (WHERE success AND output_tokens > 0), 0),
       count(*) FILTER (WHERE correlation_id IS NOT NULL),
       count(cost_usd) FILTER (WHERE correlation_id IS NOT NULL),
       coalesce(sum(cost_usd) FILTER (WHERE correlation_id IS NOT NULL), 0)
FROM api_calls
GROUP BY 1, 2, 3, 4, 5, 6, 8;
