-- Forecasts a person can trust, in the one definition of budget state that the API, the budget
-- gauges, the digest, the demo and the Grafana dashboards read (nexus_budget_status):
-- - a budget already exceeded says when it was exceeded (exceeded_at: the time of the call that
--   took the period's cumulative spend to the amount), never a run-out time in the past;
-- - the forecast follows the recent rate: the spend of the last hour (or of the period so far,
--   when it began less than an hour ago), carried on to the period's end. An hour, because a
--   person can check it against the calls of the last hour, it reacts within the hour to a
--   change of pace, and it comes from the hourly summaries at the cost of one more spend read;
--   forecast_method says which window it used.

DROP VIEW v_budget_status;

-- 004's spend, usage and state, kept under a name of its own; the status below adds the outlook.
ALTER FUNCTION nexus_budget_status(timestamptz, bigint) RENAME TO nexus_budget_spend;

-- When the priced spend of a scope (NULL: any value) counted from `from_at` first reached
-- `limit_usd` before `until_at`: the timestamp of the call that took it there, or NULL. Whole
-- UTC hours are summed from hourly_usage_summary (only the hours that have calls); only the
-- partial hours at the edges and the stretch of the crossing are read from api_calls. A
-- stretch runs to the next one with calls, so it holds the same calls as its hour.
CREATE FUNCTION nexus_budget_exceeded_at(
    from_at timestamptz, until_at timestamptz, limit_usd numeric, for_service text,
    for_provider text, for_model text, for_operation text
) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    WITH bounds AS (
        SELECT date_trunc('hour', from_at, 'UTC')
               + CASE WHEN date_trunc('hour', from_at, 'UTC') = from_at THEN interval '0'
                      ELSE interval '1 hour' END AS first_hour,
               date_trunc('hour', until_at, 'UTC') AS last_hour
    ), piece AS (
        -- The whole hours that have calls, from the summaries.
        SELECT s.hour AS piece_start, sum(s.cost_usd) AS cost
        FROM bounds b
        JOIN hourly_usage_summary s ON s.hour >= b.first_hour AND s.hour < b.last_hour
        WHERE (for_service IS NULL OR s.service_name = for_service)
          AND (for_provider IS NULL OR s.provider = for_provider)
          AND (for_model IS NULL OR s.model = for_model)
          AND (for_operation IS NULL OR s.operation = for_operation)
        GROUP BY s.hour
        UNION ALL
        -- The partial hours before the first whole hour and after the last (or the whole
        -- range, when it holds no whole hour), from the calls.
        SELECT e.piece_start, (
            SELECT sum(a.cost_usd) FROM api_calls a
            WHERE a."timestamp" >= e.piece_start AND a."timestamp" < e.piece_end
              AND (for_service IS NULL OR a.service_name = for_service)
              AND (for_provider IS NULL OR a.provider = for_provider)
              AND (for_model IS NULL OR a.model = for_model)
              AND (for_operation IS NULL OR a.operation = for_operation))
        FROM bounds b
        CROSS JOIN LATERAL (VALUES
            (from_at, least(b.first_hour, until_at)),
            (greatest(b.last_hour, least(b.first_hour, until_at)), until_at)
        ) e (piece_start, piece_end)
        WHERE e.piece_start < e.piece_end
    ), running AS (
        SELECT piece_start, lead(piece_start, 1, until_at) OVER w AS piece_end,
               sum(cost) OVER w AS through, sum(cost) OVER w - cost AS before
        FROM (SELECT piece_start, coalesce(cost, 0) AS cost FROM piece) p
        WINDOW w AS (ORDER BY piece_start)
    ), crossing AS (
        SELECT * FROM running WHERE through >= limit_usd ORDER BY piece_start LIMIT 1
    )
    -- Calls of one timestamp count together (the window's peers): the order among them is
    -- not known, the moment is.
    SELECT min(c."timestamp") FROM (
        SELECT a."timestamp", x.before + sum(a.cost_usd) OVER (ORDER BY a."timestamp") AS spent
        FROM crossing x
        JOIN api_calls a ON a."timestamp" >= x.piece_start AND a."timestamp" < x.piece_end
        WHERE a.cost_usd IS NOT NULL
          AND (for_service IS NULL OR a.service_name = for_service)
          AND (for_provider IS NULL OR a.provider = for_provider)
          AND (for_model IS NULL OR a.model = for_model)
          AND (for_operation IS NULL OR a.operation = for_operation)
    ) c
    WHERE c.spent >= limit_usd
$$;

-- Budget state at `at` (as 004) with its outlook:
-- - forecast_usd: spend + the window's spend * (seconds left in the period / the window's
--   seconds): the spend at the period's end if the window's pace goes on;
-- - forecast_method: 'last_hour' (the window is the hour before `at`) or 'period_so_far' (the
--   period began less than an hour ago); forecast_window_start: where the window begins;
-- - projected_exhaustion_at: when the amount is reached at that pace, if within the period and
--   not reached yet; NULL otherwise;
-- - exceeded_at: when an exceeded budget reached its amount (NULL unless exceeded, and when
--   `with_exceeded_at` is false: the gauges do not need it).
CREATE FUNCTION nexus_budget_status(
    at timestamptz, only_id bigint DEFAULT NULL, with_exceeded_at boolean DEFAULT true
)
RETURNS TABLE (
    id bigint, name text, period text, amount_usd numeric, warning_threshold_pct numeric,
    timezone text, service_name text, provider text, model text, operation text,
    enabled boolean, created_at timestamptz, updated_at timestamptz,
    period_start timestamptz, period_end timestamptz, spend_usd numeric, calls bigint,
    unpriced_calls bigint, remaining_usd numeric, usage_pct numeric, state text,
    forecast_usd numeric, forecast_method text, forecast_window_start timestamptz,
    projected_exhaustion_at timestamptz, exceeded_at timestamptz
)
LANGUAGE sql STABLE AS $$
    SELECT s.*,
           s.spend_usd + CASE WHEN w.seconds > 0
                              THEN w.spend * extract(epoch FROM s.period_end - at) / w.seconds
                              ELSE 0 END,
           CASE WHEN w.start = s.period_start THEN 'period_so_far' ELSE 'last_hour' END,
           w.start,
           CASE WHEN s.spend_usd < s.amount_usd AND w.spend > 0
                     AND s.amount_usd - s.spend_usd
                         <= w.spend * extract(epoch FROM s.period_end - at) / w.seconds
                THEN at + ((s.amount_usd - s.spend_usd) * w.seconds / w.spend)::float8
                          * interval '1 second' END,
           CASE WHEN with_exceeded_at AND s.state = 'exceeded'
                THEN nexus_budget_exceeded_at(s.period_start, least(at, s.period_end),
                                              s.amount_usd, s.service_name, s.provider,
                                              s.model, s.operation) END
    FROM nexus_budget_spend(at, only_id) s
    LEFT JOIN nexus_budget_spend(at - interval '1 hour', only_id) e
        ON e.id = s.id AND e.period_start = s.period_start
    CROSS JOIN LATERAL (
        SELECT greatest(s.period_start, at - interval '1 hour') AS start,
               s.spend_usd - coalesce(e.spend_usd, 0) AS spend,
               extract(epoch FROM at - greatest(s.period_start, at - interval '1 hour')) AS seconds
    ) w
$$;

CREATE VIEW v_budget_status AS SELECT * FROM nexus_budget_status(now());
