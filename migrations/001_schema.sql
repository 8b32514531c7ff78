-- nexus-otel schema: one row per LLM call, summaries, budgets, content ROI, alert history.

-- One row per LLM call. Partitioned by month on the span's start time; partitions are created
-- ahead of time and on demand by nexus_ensure_partition(). The unique key makes every write
-- idempotent: a replayed batch, or the same span sent as JSON and as protobuf, stores one row.
CREATE TABLE api_calls (
    trace_id               text        NOT NULL,
    span_id                text        NOT NULL,
    parent_span_id         text,
    "timestamp"            timestamptz NOT NULL,
    service_name           text        NOT NULL,
    provider               text        NOT NULL,
    model                  text        NOT NULL,
    response_model         text,
    gen_ai_operation       text        NOT NULL,
    operation              text        NOT NULL DEFAULT '',
    correlation_id         text,
    input_tokens           bigint      NOT NULL DEFAULT 0 CHECK (input_tokens >= 0),
    output_tokens          bigint      NOT NULL DEFAULT 0 CHECK (output_tokens >= 0),
    cache_read_tokens      bigint      NOT NULL DEFAULT 0 CHECK (cache_read_tokens >= 0),
    cache_write_tokens     bigint      NOT NULL DEFAULT 0 CHECK (cache_write_tokens >= 0),
    reasoning_tokens       bigint      NOT NULL DEFAULT 0 CHECK (reasoning_tokens >= 0),
    total_tokens           bigint      NOT NULL DEFAULT 0 CHECK (total_tokens >= 0),
    cost_usd               numeric(20, 12),           -- NULL when the model is unpriced
    cost_source            text,                      -- override | genai-prices | span
    duration_ms            double precision NOT NULL DEFAULT 0,
    time_to_first_chunk_ms double precision,
    success                boolean     NOT NULL,
    error_type             text,
    error_message          text,
    usage_source           text        NOT NULL DEFAULT 'response',
    server_address         text,
    span_name              text        NOT NULL DEFAULT '',
    attributes             jsonb       NOT NULL DEFAULT '{}'::jsonb,
    ingested_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_calls_span_key UNIQUE (trace_id, span_id, "timestamp")
) PARTITION BY RANGE ("timestamp");

-- Dashboard queries filter by time first, then by provider, model, operation or service.
CREATE INDEX api_calls_timestamp_idx ON api_calls ("timestamp" DESC);
CREATE INDEX api_calls_provider_model_idx ON api_calls (provider, model, "timestamp" DESC);
CREATE INDEX api_calls_operation_idx ON api_calls (operation, "timestamp" DESC);
CREATE INDEX api_calls_service_idx ON api_calls (service_name, "timestamp" DESC);
CREATE INDEX api_calls_correlation_idx ON api_calls (correlation_id) WHERE correlation_id IS NOT NULL;
CREATE INDEX api_calls_cost_idx ON api_calls (cost_usd DESC NULLS LAST, "timestamp" DESC);

-- Creates the monthly partition holding `day` if it does not exist yet. Returns its name.
CREATE FUNCTION nexus_ensure_partition(day date) RETURNS text
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
        END IF;
    END IF;
    RETURN part_name;
END;
$$;

-- One row per UTC day and dimension, maintained in the same transaction as the raw rows it
-- summarises (only newly stored rows are added, so replays never count twice). Kept forever.
CREATE TABLE daily_usage_summary (
    day                date    NOT NULL,
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
    PRIMARY KEY (day, service_name, provider, model, operation)
);

-- Budgets: a period (calendar-aligned in `timezone`), an amount, a warning threshold, and a
-- scope (NULL scope columns match everything).
CREATE TABLE cost_budgets (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                  text           NOT NULL UNIQUE,
    period_type           text           NOT NULL CHECK (period_type IN ('daily', 'weekly', 'monthly')),
    budget_usd            numeric(20, 6) NOT NULL CHECK (budget_usd > 0),
    warning_threshold_pct numeric(5, 2)  NOT NULL DEFAULT 80 CHECK (warning_threshold_pct > 0 AND warning_threshold_pct <= 100),
    timezone              text           NOT NULL DEFAULT 'UTC',
    service_name          text,
    provider              text,
    model                 text,
    operation             text,
    start_date            date           NOT NULL DEFAULT CURRENT_DATE,
    end_date              date,
    enabled               boolean        NOT NULL DEFAULT true,
    created_at            timestamptz    NOT NULL DEFAULT now(),
    updated_at            timestamptz    NOT NULL DEFAULT now()
);

-- Generated content (an Instagram carousel or any item) keyed by the correlation id its LLM
-- calls carry, with its latest engagement.
CREATE TABLE carousel_performance (
    correlation_id text PRIMARY KEY,
    title          text,
    platform       text        NOT NULL DEFAULT 'instagram',
    published_at   timestamptz,
    likes          bigint      NOT NULL DEFAULT 0 CHECK (likes >= 0),
    comments       bigint      NOT NULL DEFAULT 0 CHECK (comments >= 0),
    shares         bigint      NOT NULL DEFAULT 0 CHECK (shares >= 0),
    saves          bigint      NOT NULL DEFAULT 0 CHECK (saves >= 0),
    reach          bigint      NOT NULL DEFAULT 0 CHECK (reach >= 0),
    impressions    bigint      NOT NULL DEFAULT 0 CHECK (impressions >= 0),
    measured_at    timestamptz,
    metadata       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Every firing and resolved notification Alertmanager delivered to the history webhook.
CREATE TABLE alert_history (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint text        NOT NULL,
    alertname   text        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('firing', 'resolved')),
    severity    text,
    summary     text,
    description text,
    labels      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    annotations jsonb       NOT NULL DEFAULT '{}'::jsonb,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz,
    receiver    text,
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_history_event_key UNIQUE (fingerprint, status, starts_at)
);
CREATE INDEX alert_history_received_idx ON alert_history (received_at DESC);

-- Rolling 24 hours, per hour and provider.
CREATE VIEW v_hourly_usage AS
SELECT date_trunc('hour', "timestamp")               AS hour,
       provider,
       count(*)                                      AS calls,
       count(*) FILTER (WHERE NOT success)           AS failed_calls,
       sum(input_tokens)                             AS input_tokens,
       sum(output_tokens)                            AS output_tokens,
       sum(total_tokens)                             AS total_tokens,
       sum(cost_usd)                                 AS cost_usd,
       avg(duration_ms)                              AS avg_duration_ms
FROM api_calls
WHERE "timestamp" >= now() - interval '24 hours'
GROUP BY 1, 2;

-- Last 30 days by business operation, from the daily summaries.
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

-- Content ranked by engagement per dollar of generation cost.
CREATE VIEW v_carousel_roi AS
WITH cost AS (
    SELECT correlation_id, count(*) AS llm_calls, sum(total_tokens) AS total_tokens,
           sum(cost_usd) AS generation_cost_usd
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
                                                                     AS cost_per_engagement_usd
FROM carousel_performance c
LEFT JOIN cost k USING (correlation_id)
ORDER BY engagement_per_dollar DESC NULLS LAST;

-- Spend of each enabled budget in its current calendar period (in the budget's time zone).
CREATE VIEW v_budget_status AS
WITH periods AS (
    SELECT b.*,
           date_trunc(
               CASE b.period_type WHEN 'daily' THEN 'day' WHEN 'weekly' THEN 'week' ELSE 'month' END,
               now() AT TIME ZONE b.timezone
           ) AT TIME ZONE b.timezone AS period_start
    FROM cost_budgets b
    WHERE b.enabled
)
SELECT p.id, p.name, p.period_type, p.timezone, p.budget_usd, p.warning_threshold_pct,
       p.service_name, p.provider, p.model, p.operation,
       p.period_start,
       (p.period_start AT TIME ZONE p.timezone
            + CASE p.period_type WHEN 'daily' THEN interval '1 day'
                                 WHEN 'weekly' THEN interval '1 week'
                                 ELSE interval '1 month' END) AT TIME ZONE p.timezone AS period_end,
       s.spend_usd,
       p.budget_usd - s.spend_usd                        AS remaining_usd,
       round(100 * s.spend_usd / p.budget_usd, 2)        AS usage_pct,
       CASE WHEN s.spend_usd >= p.budget_usd THEN 'exceeded'
            WHEN 100 * s.spend_usd >= p.warning_threshold_pct * p.budget_usd THEN 'warning'
            ELSE 'ok' END                                AS status
FROM periods p
CROSS JOIN LATERAL (
    SELECT coalesce(sum(a.cost_usd), 0) AS spend_usd
    FROM api_calls a
    WHERE a."timestamp" >= p.period_start
      AND (p.service_name IS NULL OR a.service_name = p.service_name)
      AND (p.provider IS NULL OR a.provider = p.provider)
      AND (p.model IS NULL OR a.model = p.model)
      AND (p.operation IS NULL OR a.operation = p.operation)
) s;
