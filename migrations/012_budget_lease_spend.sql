-- A lease needs each matching budget's spend, not its forecast: read nexus_budget_spend (one
-- pass over the period) instead of nexus_budget_status (two passes, and when a budget is
-- exceeded a search for when it was), so a refill waits on less. Otherwise as in 010.
CREATE OR REPLACE FUNCTION nexus_budget_lease(
    scope_service text, scope_provider text, scope_model text, scope_operation text,
    amount numeric, min_amount numeric, ttl interval, share numeric, keep interval
)
RETURNS TABLE (
    lease_id uuid, granted_usd numeric, expires_at timestamptz, budget_id bigint,
    budget_name text, spend_usd numeric, reserved_usd numeric, amount_usd numeric
)
LANGUAGE plpgsql VOLATILE AS $function$
DECLARE
    at timestamptz;
    tight record;
    headroom numeric;
    granted numeric := amount;
    new_id uuid;
    new_expiry timestamptz;
BEGIN
    PERFORM 1 FROM cost_budgets b
    WHERE b.enabled AND b.enforce
      AND (b.service_name IS NULL OR b.service_name = scope_service)
      AND (b.provider IS NULL OR b.provider = scope_provider)
      AND (b.model IS NULL OR b.model = scope_model)
      AND (b.operation IS NULL OR b.operation = scope_operation)
    ORDER BY b.id FOR UPDATE;
    at := clock_timestamp();  -- after the wait for the locks
    SELECT s.id, s.name, s.spend_usd, r.reserved_usd, s.amount_usd,
           s.amount_usd - s.spend_usd - r.reserved_usd AS headroom
    INTO tight
    FROM nexus_budget_spend(at) s
    JOIN cost_budgets b ON b.id = s.id
    JOIN nexus_budget_reservations(at) r ON r.budget_id = s.id
    WHERE b.enforce
      AND (b.service_name IS NULL OR b.service_name = scope_service)
      AND (b.provider IS NULL OR b.provider = scope_provider)
      AND (b.model IS NULL OR b.model = scope_model)
      AND (b.operation IS NULL OR b.operation = scope_operation)
    ORDER BY 6, 1
    LIMIT 1;
    IF FOUND THEN
        headroom := tight.headroom;
        IF headroom < min_amount THEN
            RETURN QUERY SELECT NULL::uuid, 0::numeric, NULL::timestamptz, tight.id, tight.name,
                tight.spend_usd, tight.reserved_usd, tight.amount_usd;
            RETURN;
        END IF;
        -- Cut to 12 decimal places, as amounts travel (never below min_amount, which fits).
        granted := trunc(least(amount, greatest(min_amount, headroom * share)), 12);
    END IF;
    DELETE FROM budget_leases l WHERE l.expires_at < at - keep;
    INSERT INTO budget_leases AS l (service_name, provider, model, operation, granted_usd,
                                    created_at, expires_at)
    VALUES (scope_service, scope_provider, scope_model, scope_operation, granted, at, at + ttl)
    RETURNING l.id, l.expires_at INTO new_id, new_expiry;
    RETURN QUERY SELECT new_id, granted, new_expiry, tight.id, tight.name, tight.spend_usd,
        tight.reserved_usd, tight.amount_usd;
END;
$function$;
