-- The API's tables: hourly summaries (answering dashboard and budget questions without scanning
-- raw rows) and the engagement history of content items.

-- One row per UTC hour and dimension, maintained in the same transaction as the raw rows, like
-- daily_usage_summary. Kept forever, like the daily summaries.
CREATE TABLE hourly_usage_summary (
    hour               timestamptz NOT NULL,
    service_name       text    NOT NULL,
    provider           text    NOT NULL,
    model              text    NOT NULL,
    operation          text    NOT NULL,
    calls              bigint  NOT NULL DEFAULT 0,
    failed_calls       bigint  NOT NULL DEFAULT 0,
    unpriced_calls     bigint  NOT NULL DEFAULT 0,
    input_tokens       bigint  NOT NULL DEFAULT 0,
    output_tokens      bigint  NOT NULL DEFAULT 0,
    cache_read_tokens  bigint  NOT NULL DEFAULT 0,
    cache_write_tokens bigint  NOT NULL DEFAULT 0,
    reasoning_tokens   bigint  NOT NULL DEFAULT 0,
    total_tokens       bigint  NOT NULL DEFAULT 0,
    cost_usd           numeric(24, 12) NOT NULL DEFAULT 0,
    duration_ms_sum    double precision NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (hour, service_name, provider, model, operation)
);

INSERT INTO hourly_usage_summary (hour, service_name, provider, model, operation, calls,
    failed_calls, unpriced_calls, input_tokens, output_tokens, cache_read_tokens,
    cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, duration_ms_sum)
SELECT date_trunc('hour', "timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
       service_name, provider, model, operation,
       count(*), count(*) FILTER (WHERE NOT success), count(*) FILTER (WHERE cost_usd IS NULL),
       sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cache_write_tokens),
       sum(reasoning_tokens), sum(total_tokens), coalesce(sum(cost_usd), 0), sum(duration_ms)
FROM api_calls
GROUP BY 1, 2, 3, 4, 5;

-- Every engagement measurement posted for a content item; carousel_performance keeps the latest.
CREATE TABLE content_engagement (
    correlation_id text        NOT NULL REFERENCES carousel_performance ON DELETE CASCADE,
    measured_at    timestamptz NOT NULL,
    likes          bigint      NOT NULL DEFAULT 0 CHECK (likes >= 0),
    comments       bigint      NOT NULL DEFAULT 0 CHECK (comments >= 0),
    shares         bigint      NOT NULL DEFAULT 0 CHECK (shares >= 0),
    saves          bigint      NOT NULL DEFAULT 0 CHECK (saves >= 0),
    reach          bigint      NOT NULL DEFAULT 0 CHECK (reach >= 0),
    impressions    bigint      NOT NULL DEFAULT 0 CHECK (impressions >= 0),
    PRIMARY KEY (correlation_id, measured_at)
);

CREATE INDEX alert_history_starts_idx ON alert_history (starts_at DESC);

-- Content ROI, now also counting the calls of unknown price (their cost is not in the sum).
CREATE OR REPLACE VIEW v_carousel_roi AS
WITH cost AS (
    SELECT correlation_id, count(*) AS llm_calls, sum(total_tokens) AS total_tokens,
           sum(cost_usd) AS generation_cost_usd,
           count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_calls
    FROM api_calls
    WHERE correlation_id IS NOT NULL
    GROUP BY correlation_id
)
SELECT c.correlation_id,
       c.title,
       c.platform,
       c.published_at,
       c.likes, c.comments, c.shares, c.saves, c.reach, c.impressions,
       c.likes + c.comments + c.shares + c.saves                     AS engagement,
       coalesce(k.llm_calls, 0)                                      AS llm_calls,
       coalesce(k.total_tokens, 0)                                   AS total_tokens,
       k.generation_cost_usd,
       (c.likes + c.comments + c.shares + c.saves) / NULLIF(k.generation_cost_usd, 0)
                                                                     AS engagement_per_dollar,
       k.generation_cost_usd / NULLIF(c.likes + c.comments + c.shares + c.saves, 0)
                                                                     AS cost_per_engagement_usd,
       coalesce(k.unpriced_calls, 0)                                 AS unpriced_calls,
       c.measured_at
FROM carousel_performance c
LEFT JOIN cost k USING (correlation_id)
ORDER BY engagement_per_dollar DESC NULLS LAST;
