-- One definition of calendar periods and of budget state, read by the API, the budget gauges,
-- the digest and the Grafana dashboards alike.

-- 1. Where a local date begins in a zone: the first instant whose local date it is. Where
-- midnight is skipped (clocks jump from 23:59 to 01:00) that is the jump; where midnight comes
-- twice (clocks fall back from 01:00 to 00:00) it is the first midnight. PostgreSQL alone reads
-- such a midnight as the second one (in standard time), so the first is looked for: midnight
-- at the offset the zone had a day before, when that instant shows midnight too.
CREATE FUNCTION nexus_day_start(day date, zone text) RETURNS timestamptz
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN earlier < later AND earlier AT TIME ZONE zone = day::timestamp
                THEN earlier ELSE later END
    FROM (SELECT day::timestamp AT TIME ZONE zone AS later) l
    CROSS JOIN LATERAL (
        SELECT (day::timestamp - ((l.later - interval '1 day') AT TIME ZONE zone
                                  - (l.later - interval '1 day') AT TIME ZONE 'UTC'))
               AT TIME ZONE 'UTC' AS earlier
    ) e
$$;

-- Whether the database knows a zone name: the zone rules of Python and of PostgreSQL come from
-- separate copies of the tz database, and a name one knows the other may not (yet).
CREATE FUNCTION nexus_zone_known(zone text) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    PERFORM now() AT TIME ZONE zone;
    RETURN true;
EXCEPTION WHEN invalid_parameter_value THEN
    RETURN false;
END;
$$;

-- The calendar period ('daily', 'weekly' from Monday, or 'monthly') holding the local date
-- `day` in `zone`: from its first day's start to the next period's.
CREATE FUNCTION nexus_period_of_day(
    period text, zone text, day date, OUT period_start timestamptz, OUT period_end timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nexus_day_start(first, zone),
           nexus_day_start(CASE period WHEN 'daily' THEN first + 1
                                       WHEN 'weekly' THEN first + 7
                                       ELSE (first + interval '1 month')::date END, zone)
    FROM (SELECT CASE period WHEN 'daily' THEN day
                             WHEN 'weekly' THEN day - (extract(isodow FROM day)::int - 1)
                             ELSE date_trunc('month', day)::date END AS first) f
$$;

-- The calendar period holding the instant `at`.
CREATE FUNCTION nexus_period_bounds(
    period text, zone text, at timestamptz, OUT period_start timestamptz,
    OUT period_end timestamptz
)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM nexus_period_of_day(period, zone, (at AT TIME ZONE zone)::date)
$$;

-- 2. Budget state at `at`: every enabled budget, or the one budget `only_id` (enabled or not).
-- A budget whose zone the database does not know has no period and is left out (the API
-- refuses to store such a zone). Spend counts the calls in [period_start, min(at, period_end)), priced ones only; calls of
-- unknown price are counted apart. Warning from warning_threshold_pct percent of the amount,
-- exceeded from the amount itself.
--
-- One statement for all budgets: whole UTC hours come from hourly_usage_summary and only the
-- partial hours at a period's edges from api_calls. Calls are summed once per distinct piece
-- (an hour span or an edge), then per scope over only the values some budget names (one
-- branch per combination of scope columns a budget leaves open, skipped when no budget has
-- it), then per period; each budget picks its row by a hash join. So the cost grows with the
-- distinct pieces and label sets, not with the number of budgets.
CREATE FUNCTION nexus_budget_status(at timestamptz, only_id bigint DEFAULT NULL)
RETURNS TABLE (
    id bigint, name text, period text, amount_usd numeric, warning_threshold_pct numeric,
    timezone text, service_name text, provider text, model text, operation text,
    enabled boolean, created_at timestamptz, updated_at timestamptz,
    period_start timestamptz, period_end timestamptz, spend_usd numeric, calls bigint,
    unpriced_calls bigint, remaining_usd numeric, usage_pct numeric, state text
)
LANGUAGE plpgsql STABLE AS $function$
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
    FOR mask IN 0..15 LOOP
        kept := ARRAY(SELECT c FROM unnest(scope_columns, scope_bits) s(c, b) WHERE mask & b = 0);
        selected := ARRAY(SELECT CASE WHEN mask & b = 0 THEN c ELSE 'NULL::text AS ' || c END
                          FROM unnest(scope_columns, scope_bits) s(c, b));
        named := coalesce((SELECT string_agg(', ' || c, '') FROM unnest(kept) c), '');
        branches := branches || format(
            'SELECT p.range_id, %s, %s AS scope_mask, sum(t.cost) AS cost,'
            ' sum(t.calls) AS calls, sum(t.unpriced) AS unpriced'
            ' FROM (SELECT piece, piece_start, piece_end%s, sum(cost) AS cost,'
            ' sum(calls) AS calls, sum(unpriced) AS unpriced FROM piece_total'
            ' WHERE EXISTS (SELECT FROM budget WHERE scope_mask = %s)%s'
            ' GROUP BY piece, piece_start, piece_end%s) t'
            ' JOIN range_piece p ON p.piece = t.piece AND p.piece_start = t.piece_start'
            ' AND p.piece_end = t.piece_end GROUP BY p.range_id%s',
            array_to_string(selected, ', '), mask, named, mask,
            CASE WHEN cardinality(kept) > 0 THEN format(
                ' AND (%s) IN (SELECT %s FROM budget WHERE scope_mask = %s)',
                array_to_string(kept, ', '), array_to_string(kept, ', '), mask) ELSE '' END,
            named, named);
    END LOOP;
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
    -- Each distinct period cut at whole UTC hours.
    SELECT range_id, period_start, period_end, least($1, period_end) AS range_end,
           date_trunc('hour', period_start, 'UTC')
           + CASE WHEN date_trunc('hour', period_start, 'UTC') = period_start
                  THEN interval '0' ELSE interval '1 hour' END AS first_hour,
           date_trunc('hour', least($1, period_end), 'UTC') AS last_hour
    FROM (SELECT DISTINCT range_id, period_start, period_end FROM combo) d
), period AS (
    SELECT range_id,
           CASE WHEN first_hour < last_hour THEN first_hour END AS hours_start,
           CASE WHEN first_hour < last_hour THEN last_hour END AS hours_end,
           CASE WHEN first_hour >= last_hour THEN period_start
                WHEN period_start < first_hour THEN period_start END AS edge0_start,
           CASE WHEN first_hour >= last_hour THEN range_end
                WHEN period_start < first_hour THEN first_hour END AS edge0_end,
           CASE WHEN first_hour < last_hour AND last_hour < range_end THEN last_hour
                END AS edge1_start,
           CASE WHEN first_hour < last_hour AND last_hour < range_end THEN range_end
                END AS edge1_end
    FROM range
), hour_span AS (
    SELECT range_id, hours_start, hours_end FROM period WHERE hours_start IS NOT NULL
), hour_cut AS (
    -- The periods' whole hours cut at every one of their bounds: spans that never overlap,
    -- so a summary row is read once however many periods hold it.
    SELECT moment AS piece_start, lead(moment) OVER (ORDER BY moment) AS piece_end
    FROM (SELECT hours_start AS moment FROM hour_span UNION SELECT hours_end FROM hour_span) m
), range_piece AS MATERIALIZED (
    SELECT s.range_id, 'h' AS piece, c.piece_start, c.piece_end
    FROM hour_span s
    JOIN hour_cut c ON c.piece_start >= s.hours_start AND c.piece_end <= s.hours_end
    UNION ALL
    SELECT range_id, 'e', edge0_start, edge0_end FROM period
    WHERE edge0_start IS NOT NULL AND edge0_start < edge0_end
    UNION ALL
    SELECT range_id, 'e', edge1_start, edge1_end FROM period WHERE edge1_start IS NOT NULL
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
    SELECT u.piece, u.piece_start, u.piece_end, a.service_name, a.provider, a.model,
           a.operation, sum(coalesce(a.cost_usd, 0)), count(*),
           count(*) FILTER (WHERE a.cost_usd IS NULL)
    FROM used_piece u
    JOIN api_calls a ON a."timestamp" >= u.piece_start AND a."timestamp" < u.piece_end
    WHERE u.piece = 'e'
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

-- 3. The view keeps its name and now reads the one definition, with the API's field names.
DROP VIEW v_budget_status;
CREATE VIEW v_budget_status AS SELECT * FROM nexus_budget_status(now());
