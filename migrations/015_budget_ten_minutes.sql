-- Budgets read whole ten minutes from the summaries too, and never scan a month of calls.
--
-- Their spend (the gauges every few seconds, the API, the digest, every lease an app takes) read
-- the partial hour up to `at` from raw rows: up to an hour of calls, twice with the forecast's
-- hour before. Now whole hours come from hourly_usage_summary, whole ten minutes from
-- ten_minute_usage_summary, and raw rows are read for at most five minutes at each end of a
-- period (the same cut as the range totals of exporter/usage/totals.py).
--
-- The raw pieces' bounds are computed inside the statements, so the planner cannot know how
-- short they are: it took them for a ninth of a monthly partition and scanned the partition
-- whole (7.9 million rows, 1 to 3 s per read at 10 million calls). The functions that read
-- them run with enable_seqscan off: every read of api_calls here is a short range of its
-- start-time index.

-- Period bounds PostgreSQL can inline into the statements that use them. As functions it
-- could not inline (a FROM clause, OUT parameters), each call was planned anew: half a
-- millisecond per budget period and zone, on every budget read. Same definitions as 004.

-- Midnight of `day` at the offset `zone` had a day before (see nexus_day_start).
CREATE FUNCTION nexus_midnight_at_earlier_offset(day date, zone text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (day::timestamp - ((day::timestamp AT TIME ZONE zone - interval '1 day') AT TIME ZONE zone
                          - (day::timestamp AT TIME ZONE zone - interval '1 day') AT TIME ZONE 'UTC'))
       AT TIME ZONE 'UTC';

CREATE OR REPLACE FUNCTION nexus_day_start(day date, zone text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN nexus_midnight_at_earlier_offset(day, zone) < day::timestamp AT TIME ZONE zone
     AND nexus_midnight_at_earlier_offset(day, zone) AT TIME ZONE zone = day::timestamp
    THEN nexus_midnight_at_earlier_offset(day, zone)
    ELSE day::timestamp AT TIME ZONE zone END;

DROP FUNCTION nexus_period_bounds(text, text, timestamptz);
DROP FUNCTION nexus_period_of_day(text, text, date);

CREATE FUNCTION nexus_period_of_day(period text, zone text, day date)
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $$
    SELECT nexus_day_start(first, zone),
           nexus_day_start(CASE period WHEN 'daily' THEN first + 1
                                       WHEN 'weekly' THEN first + 7
                                       ELSE (first + interval '1 month')::date END, zone)
    FROM (SELECT CASE period WHEN 'daily' THEN day
                             WHEN 'weekly' THEN day - (extract(isodow FROM day)::int - 1)
                             ELSE date_trunc('month', day)::date END AS first) f
$$;

CREATE FUNCTION nexus_period_bounds(period text, zone text, at timestamptz)
RETURNS TABLE (period_start timestamptz, period_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE ROWS 1 AS $$
    SELECT * FROM nexus_period_of_day(period, zone, (at AT TIME ZONE zone)::date)
$$;

-- How [from_at, until_at) is read: 'h' whole UTC hours (hourly summary), 't' whole UTC ten
-- minutes of the partial hours (ten-minute summary), and under ten minutes at each end from raw
-- rows: 'e' read as it is (five minutes or less), 'c' (more than five minutes) read as its ten
-- minutes' summary less the raw rows of the rest of them. Pieces never overlap and cover the
-- range exactly; none is empty.
CREATE FUNCTION nexus_usage_pieces(from_at timestamptz, until_at timestamptz)
RETURNS TABLE (kind text, piece_start timestamptz, piece_end timestamptz)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p.kind, p.piece_start, p.piece_end
    FROM (SELECT date_trunc('hour', from_at, 'UTC') AS hour_of_start) s
    CROSS JOIN LATERAL (
        SELECT least(s.hour_of_start + CASE WHEN s.hour_of_start = from_at THEN interval '0'
                                            ELSE interval '1 hour' END, until_at) AS first_hour
    ) f
    CROSS JOIN LATERAL (
        SELECT greatest(date_trunc('hour', until_at, 'UTC'), f.first_hour) AS last_hour
    ) l
    CROSS JOIN LATERAL (
        SELECT 'h', f.first_hour, l.last_hour
        UNION ALL
        SELECT t.kind, t.piece_start, t.piece_end
        FROM (VALUES (from_at, f.first_hour), (l.last_hour, until_at)) e (edge_start, edge_end)
        CROSS JOIN LATERAL (SELECT nexus_ten_minutes(e.edge_start) AS bucket) b
        CROSS JOIN LATERAL (
            SELECT least(b.bucket + CASE WHEN b.bucket = e.edge_start THEN interval '0'
                                         ELSE interval '10 minutes' END, e.edge_end) AS first_ten
        ) ft
        CROSS JOIN LATERAL (
            SELECT greatest(nexus_ten_minutes(e.edge_end), ft.first_ten) AS last_ten
        ) lt
        CROSS JOIN LATERAL (
            SELECT 't', ft.first_ten, lt.last_ten
            UNION ALL
            SELECT CASE WHEN r.raw_end - r.raw_start > interval '5 minutes' THEN 'c' ELSE 'e' END,
                   r.raw_start, r.raw_end
            FROM (VALUES (e.edge_start, ft.first_ten), (lt.last_ten, e.edge_end))
                AS r (raw_start, raw_end)
        ) t (kind, piece_start, piece_end)
        WHERE e.edge_start < e.edge_end
    ) p (kind, piece_start, piece_end)
    WHERE p.piece_start < p.piece_end
$$;

-- Whether a call (or summary row) of these labels is within a budget's scope (NULL: any value).
CREATE FUNCTION nexus_in_scope(
    service_name text, provider text, model text, operation text, for_service text,
    for_provider text, for_model text, for_operation text
) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN (for_service IS NULL OR service_name = for_service)
   AND (for_provider IS NULL OR provider = for_provider)
   AND (for_model IS NULL OR model = for_model)
   AND (for_operation IS NULL OR operation = for_operation);

-- Cost, calls and calls of unknown price of the raw rows in [from_at, until_at) within one scope
-- (NULL: any value), for the pieces of nexus_usage_pieces read from raw rows: 'e' as it is, 'c'
-- as its ten minutes' summary less the rest of them.
CREATE FUNCTION nexus_raw_piece_cost(
    kind text, from_at timestamptz, until_at timestamptz, for_service text, for_provider text,
    for_model text, for_operation text
) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(x.cost), 0) FROM (
        SELECT a.cost_usd AS cost FROM api_calls a
        WHERE kind = 'e' AND a."timestamp" >= from_at AND a."timestamp" < until_at
          AND nexus_in_scope(a.service_name, a.provider, a.model, a.operation,
                             for_service, for_provider, for_model, for_operation)
        UNION ALL
        SELECT s.cost_usd FROM ten_minute_usage_summary s
        WHERE kind = 'c' AND s.bucket = nexus_ten_minutes(from_at)
          AND nexus_in_scope(s.service_name, s.provider, s.model, s.operation,
                             for_service, for_provider, for_model, for_operation)
        UNION ALL
        SELECT -a.cost_usd FROM api_calls a
        WHERE kind = 'c'
          AND ((a."timestamp" >= nexus_ten_minutes(from_at) AND a."timestamp" < from_at)
               OR (a."timestamp" >= until_at
                   AND a."timestamp" < nexus_ten_minutes(from_at) + interval '10 minutes'))
          AND nexus_in_scope(a.service_name, a.provider, a.model, a.operation,
                             for_service, for_provider, for_model, for_operation)
    ) x
$$;

-- When the priced spend of a scope counted from `from_at` first reached `limit_usd` before
-- `until_at` (006's definition), reading the pieces above: the first piece whose running sum
-- reaches the amount and, when that is an hour, the first of its ten minutes that does; only
-- the calls of that ten minutes (or raw piece) are read one by one.
CREATE OR REPLACE FUNCTION nexus_budget_exceeded_at(
    from_at timestamptz, until_at timestamptz, limit_usd numeric, for_service text,
    for_provider text, for_model text, for_operation text
) RETURNS timestamptz
LANGUAGE sql STABLE SET enable_seqscan = off AS $$
    WITH cut AS MATERIALIZED (
        SELECT * FROM nexus_usage_pieces(from_at, until_at)
    ), piece AS (
        -- Each whole hour, and each whole ten minutes, that has calls.
        SELECT 'h' AS kind, s.hour AS piece_start, s.hour + interval '1 hour' AS piece_end,
               sum(s.cost_usd) AS cost
        FROM cut c
        JOIN hourly_usage_summary s ON s.hour >= c.piece_start AND s.hour < c.piece_end
        WHERE c.kind = 'h'
          AND nexus_in_scope(s.service_name, s.provider, s.model, s.operation,
                             for_service, for_provider, for_model, for_operation)
        GROUP BY s.hour
        UNION ALL
        SELECT 't', s.bucket, s.bucket + interval '10 minutes', sum(s.cost_usd)
        FROM cut c
        JOIN ten_minute_usage_summary s ON s.bucket >= c.piece_start AND s.bucket < c.piece_end
        WHERE c.kind = 't'
          AND nexus_in_scope(s.service_name, s.provider, s.model, s.operation,
                             for_service, for_provider, for_model, for_operation)
        GROUP BY s.bucket
        UNION ALL
        SELECT 'e', c.piece_start, c.piece_end,
               nexus_raw_piece_cost(c.kind, c.piece_start, c.piece_end, for_service,
                                    for_provider, for_model, for_operation)
        FROM cut c WHERE c.kind IN ('e', 'c')
    ), running AS (
        SELECT kind, piece_start, piece_end, sum(cost) OVER w AS through,
               sum(cost) OVER w - cost AS before
        FROM piece
        WINDOW w AS (ORDER BY piece_start)
    ), crossing AS (
        SELECT * FROM running WHERE through >= limit_usd ORDER BY piece_start LIMIT 1
    ), fine AS (
        -- A crossing hour's ten minutes that have calls, with the running sum carried on.
        SELECT s.bucket AS piece_start, s.bucket + interval '10 minutes' AS piece_end,
               x.before + sum(sum(s.cost_usd)) OVER w AS through,
               x.before + sum(sum(s.cost_usd)) OVER w - sum(s.cost_usd) AS before
        FROM crossing x
        JOIN ten_minute_usage_summary s ON s.bucket >= x.piece_start AND s.bucket < x.piece_end
        WHERE x.kind = 'h'
          AND nexus_in_scope(s.service_name, s.provider, s.model, s.operation,
                             for_service, for_provider, for_model, for_operation)
        GROUP BY x.before, s.bucket
        WINDOW w AS (ORDER BY s.bucket)
        UNION ALL
        SELECT piece_start, piece_end, through, before FROM crossing WHERE kind <> 'h'
    ), fine_crossing AS (
        SELECT * FROM fine WHERE through >= limit_usd ORDER BY piece_start LIMIT 1
    )
    -- Calls of one timestamp count together (the window's peers): the order among them is
    -- not known, the moment is.
    SELECT min(c."timestamp") FROM (
        SELECT a."timestamp", x.before + sum(a.cost_usd) OVER (ORDER BY a."timestamp") AS spent
        FROM fine_crossing x
        JOIN api_calls a ON a."timestamp" >= x.piece_start AND a."timestamp" < x.piece_end
        WHERE a.cost_usd IS NOT NULL
          AND nexus_in_scope(a.service_name, a.provider, a.model, a.operation,
                             for_service, for_provider, for_model, for_operation)
    ) c
    WHERE c.spent >= limit_usd
$$;

-- Budget spend at `at` (004's definition, which 006 named nexus_budget_spend), its periods read
-- through nexus_usage_pieces: the periods' whole hours cut at every bound as before, their
-- whole ten minutes from the ten-minute summary, and what is left from raw rows.
CREATE OR REPLACE FUNCTION nexus_budget_spend(at timestamptz, only_id bigint DEFAULT NULL)
RETURNS TABLE (
    id bigint, name text, period text, amount_usd numeric, warning_threshold_pct numeric,
    timezone text, service_name text, provider text, model text, operation text,
    enabled boolean, created_at timestamptz, updated_at timestamptz,
    period_start timestamptz, period_end timestamptz, spend_usd numeric, calls bigint,
    unpriced_calls bigint, remaining_usd numeric, usage_pct numeric, state text
)
LANGUAGE plpgsql STABLE SET enable_seqscan = off AS $function$
DECLARE
    -- A budget's scope as a bit mask, as GROUPING() would give it: a bit set = any value.
    scope_columns CONSTANT text[] := ARRAY['service_name', 'provider', 'model', 'operation'];
    scope_bits CONSTANT int[] := ARRAY[8, 4, 2, 1];
    branches text[] := '{}';
    kept text[];
    selected text[];
    named text;
    mask int;
BEGIN
    -- Only the scopes some budget has (so no branch needs to check that one does): planning
    -- 16 branches cost more than most answers.
    FOR mask IN
        SELECT DISTINCT CASE WHEN b.service_name IS NULL THEN 8 ELSE 0 END
                        + CASE WHEN b.provider IS NULL THEN 4 ELSE 0 END
                        + CASE WHEN b.model IS NULL THEN 2 ELSE 0 END
                        + CASE WHEN b.operation IS NULL THEN 1 ELSE 0 END
        FROM cost_budgets b
        WHERE CASE WHEN only_id IS NULL THEN b.enabled ELSE b.id = only_id END
    LOOP
        kept := ARRAY(SELECT c FROM unnest(scope_columns, scope_bits) s(c, b) WHERE mask & b = 0);
        selected := ARRAY(SELECT CASE WHEN mask & b = 0 THEN c ELSE 'NULL::text AS ' || c END
                          FROM unnest(scope_columns, scope_bits) s(c, b));
        named := coalesce((SELECT string_agg(', ' || c, '') FROM unnest(kept) c), '');
        branches := branches || format(
            'SELECT p.range_id, %s, %s AS scope_mask, sum(t.cost) AS cost,'
            ' sum(t.calls) AS calls, sum(t.unpriced) AS unpriced'
            ' FROM (SELECT piece, piece_start, piece_end%s, sum(cost) AS cost,'
            ' sum(calls) AS calls, sum(unpriced) AS unpriced FROM piece_total%s'
            ' GROUP BY piece, piece_start, piece_end%s) t'
            ' JOIN range_piece p ON p.piece = t.piece AND p.piece_start = t.piece_start'
            ' AND p.piece_end = t.piece_end GROUP BY p.range_id%s',
            array_to_string(selected, ', '), mask, named,
            CASE WHEN cardinality(kept) > 0 THEN format(
                ' WHERE (%s) IN (SELECT %s FROM budget WHERE scope_mask = %s)',
                array_to_string(kept, ', '), array_to_string(kept, ', '), mask) ELSE '' END,
            named, named);
    END LOOP;
    IF cardinality(branches) = 0 THEN
        RETURN;
    END IF;
    RETURN QUERY EXECUTE format($statement$
WITH zone_period AS MATERIALIZED (
    SELECT DISTINCT period_type, timezone FROM cost_budgets b
    WHERE CASE WHEN $2 IS NULL THEN b.enabled ELSE b.id = $2 END
), combo AS MATERIALIZED (
    -- Each (period, zone) in use once, with its current bounds; zones often share bounds,
    -- so each distinct period gets one range_id.
    SELECT z.period_type, z.timezone, p.period_start, p.period_end,
           dense_rank() OVER (ORDER BY p.period_start, p.period_end)::int AS range_id
    FROM zone_period z
    CROSS JOIN LATERAL nexus_period_bounds(z.period_type, z.timezone, $1) p
    WHERE nexus_zone_known(z.timezone)
), budget AS MATERIALIZED (
    -- A left join, so that the planner expects every budget here: it then joins them to
    -- their totals by hashing, not by a loop over the budgets.
    SELECT b.*, c.range_id, c.period_start, c.period_end,
           (CASE WHEN b.service_name IS NULL THEN 8 ELSE 0 END
            + CASE WHEN b.provider IS NULL THEN 4 ELSE 0 END
            + CASE WHEN b.model IS NULL THEN 2 ELSE 0 END
            + CASE WHEN b.operation IS NULL THEN 1 ELSE 0 END) AS scope_mask
    FROM cost_budgets b
    LEFT JOIN combo c ON c.period_type = b.period_type AND c.timezone = b.timezone
    WHERE CASE WHEN $2 IS NULL THEN b.enabled ELSE b.id = $2 END
), range AS MATERIALIZED (
    SELECT DISTINCT range_id, period_start, least($1, period_end) AS range_end FROM combo
), cut AS MATERIALIZED (
    -- Each distinct period cut into pieces (nexus_usage_pieces).
    SELECT r.range_id, p.kind, p.piece_start, p.piece_end
    FROM range r CROSS JOIN LATERAL nexus_usage_pieces(r.period_start, r.range_end) p
), hour_cut AS (
    -- The periods' whole hours cut at every one of their bounds: spans that never overlap,
    -- so a summary row is read once however many periods hold it.
    SELECT moment AS piece_start, lead(moment) OVER (ORDER BY moment) AS piece_end
    FROM (SELECT piece_start AS moment FROM cut WHERE kind = 'h'
          UNION SELECT piece_end FROM cut WHERE kind = 'h') m
), range_piece AS MATERIALIZED (
    SELECT s.range_id, 'h' AS piece, c.piece_start, c.piece_end
    FROM cut s
    JOIN hour_cut c ON c.piece_start >= s.piece_start AND c.piece_end <= s.piece_end
    WHERE s.kind = 'h'
    UNION ALL
    SELECT range_id, kind, piece_start, piece_end FROM cut WHERE kind <> 'h'
), used_piece AS (
    SELECT DISTINCT piece, piece_start, piece_end FROM range_piece
), piece_total AS MATERIALIZED (
    SELECT u.piece, u.piece_start, u.piece_end, s.service_name, s.provider, s.model,
           s.operation, sum(s.cost_usd) AS cost, sum(s.calls) AS calls,
           sum(s.unpriced_calls) AS unpriced
    FROM used_piece u
    JOIN hourly_usage_summary s ON s.hour >= u.piece_start AND s.hour < u.piece_end
    WHERE u.piece = 'h'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    UNION ALL
    SELECT u.piece, u.piece_start, u.piece_end, s.service_name, s.provider, s.model,
           s.operation, sum(s.cost_usd), sum(s.calls), sum(s.unpriced_calls)
    FROM used_piece u
    JOIN ten_minute_usage_summary s ON s.bucket >= u.piece_start AND s.bucket < u.piece_end
    WHERE u.piece = 't'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    UNION ALL
    SELECT u.piece, u.piece_start, u.piece_end, a.service_name, a.provider, a.model,
           a.operation, sum(coalesce(a.cost_usd, 0)), count(*),
           count(*) FILTER (WHERE a.cost_usd IS NULL)
    FROM used_piece u
    JOIN api_calls a ON a."timestamp" >= u.piece_start AND a."timestamp" < u.piece_end
    WHERE u.piece = 'e'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    UNION ALL
    -- More than five minutes: the ten minutes' summary less the raw rows of the rest of them.
    SELECT u.piece, u.piece_start, u.piece_end, x.service_name, x.provider, x.model,
           x.operation, sum(x.cost), sum(x.calls), sum(x.unpriced)
    FROM used_piece u
    CROSS JOIN LATERAL (
        SELECT s.service_name, s.provider, s.model, s.operation, s.cost_usd AS cost,
               s.calls, s.unpriced_calls AS unpriced
        FROM ten_minute_usage_summary s WHERE s.bucket = nexus_ten_minutes(u.piece_start)
        UNION ALL
        SELECT a.service_name, a.provider, a.model, a.operation, -coalesce(a.cost_usd, 0), -1,
               -(a.cost_usd IS NULL)::int
        FROM api_calls a
        WHERE a."timestamp" >= nexus_ten_minutes(u.piece_start) AND a."timestamp" < u.piece_start
        UNION ALL
        SELECT a.service_name, a.provider, a.model, a.operation, -coalesce(a.cost_usd, 0), -1,
               -(a.cost_usd IS NULL)::int
        FROM api_calls a
        WHERE a."timestamp" >= u.piece_end
          AND a."timestamp" < nexus_ten_minutes(u.piece_start) + interval '10 minutes'
    ) x
    WHERE u.piece = 'c'
    GROUP BY 1, 2, 3, 4, 5, 6, 7
), scope_total AS (
    %s
), spent AS (
    SELECT budget.*, coalesce(t.cost, 0) AS spend, coalesce(t.calls, 0)::bigint AS calls,
           coalesce(t.unpriced, 0)::bigint AS unpriced
    FROM budget
    LEFT JOIN scope_total t
        ON t.range_id = budget.range_id AND t.scope_mask = budget.scope_mask
       AND coalesce(t.service_name, '') = coalesce(budget.service_name, '')
       AND coalesce(t.provider, '') = coalesce(budget.provider, '')
       AND coalesce(t.model, '') = coalesce(budget.model, '')
       AND coalesce(t.operation, '') = coalesce(budget.operation, '')
    WHERE budget.range_id IS NOT NULL
)
SELECT s.id, s.name, s.period_type, s.budget_usd::numeric, s.warning_threshold_pct::numeric,
       s.timezone, s.service_name, s.provider, s.model, s.operation, s.enabled, s.created_at,
       s.updated_at, s.period_start, s.period_end, s.spend, s.calls, s.unpriced,
       s.budget_usd - s.spend,
       -- 30 decimal places: as exact as the Decimal arithmetic of a client, not 16 digits.
       trunc(s.spend, 30) * 100 / s.budget_usd,
       CASE WHEN s.spend >= s.budget_usd THEN 'exceeded'
            WHEN s.spend * 100 >= s.warning_threshold_pct * s.budget_usd THEN 'warning'
            ELSE 'ok' END
FROM spent s
$statement$, array_to_string(branches, ' UNION ALL ')) USING at, only_id;
END;
$function$;

