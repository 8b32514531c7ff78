-- Budgets that act before the money is gone. An app takes allowances (leases) from the budgets
-- whose scope matches its calls before it spends, and spends them locally; each call's row, when
-- stored, settles what the call took out of its lease (`nexus.budget.reserved_usd`), in the
-- same transaction. So a budget's usage is its stored spend plus what its unexpired leases
-- still hold, and nothing is counted twice.

-- Whether a budget refuses leases past its amount (true), or only shows what is reserved.
ALTER TABLE cost_budgets ADD COLUMN enforce boolean NOT NULL DEFAULT true;

-- One allowance taken for one scope (the four summary dimensions of the calls it pays for; ''
-- for no business operation, as api_calls stores it). Held = granted - returned - settled, and
-- counted only until expires_at: an app killed while it holds one frees it then.
CREATE TABLE budget_leases (
    id           uuid           PRIMARY KEY DEFAULT gen_random_uuid(),
    service_name text           NOT NULL,
    provider     text           NOT NULL,
    model        text           NOT NULL,
    operation    text           NOT NULL DEFAULT '',
    granted_usd  numeric        NOT NULL CHECK (granted_usd >= 0),
    returned_usd numeric        NOT NULL DEFAULT 0 CHECK (returned_usd >= 0),
    settled_usd  numeric        NOT NULL DEFAULT 0 CHECK (settled_usd >= 0),
    created_at   timestamptz    NOT NULL DEFAULT clock_timestamp(),
    expires_at   timestamptz    NOT NULL
);
CREATE INDEX budget_leases_expires_idx ON budget_leases (expires_at);

-- What each budget's unexpired leases still hold at `at`: every budget, enabled or not, 0 when
-- none. A lease counts for every budget whose scope (NULL = any) matches its own.
CREATE FUNCTION nexus_budget_reservations(at timestamptz)
RETURNS TABLE (budget_id bigint, reserved_usd numeric)
LANGUAGE sql STABLE AS $$
    SELECT b.id, coalesce(sum(greatest(l.granted_usd - l.returned_usd - l.settled_usd, 0)), 0)
    FROM cost_budgets b
    LEFT JOIN budget_leases l
        ON l.expires_at > at AND l.created_at <= at
       AND (b.service_name IS NULL OR b.service_name = l.service_name)
       AND (b.provider IS NULL OR b.provider = l.provider)
       AND (b.model IS NULL OR b.model = l.model)
       AND (b.operation IS NULL OR b.operation = l.operation)
    GROUP BY b.id
$$;

-- Takes a lease of up to `amount` (at least `min_amount`) for a scope, atomically: the enabled,
-- enforced budgets matching the scope are locked (FOR UPDATE, in id order, so two takers never
-- deadlock) and only then read, in a statement of its own, so its snapshot holds every lease
-- and every stored call committed before the locks were ours. Grants the least of `amount`,
-- `share` of the tightest budget's headroom (amount - spend - reserved) and, at least,
-- `min_amount`; or, when that headroom is below `min_amount`, nothing: lease_id is NULL and the
-- row names the tightest budget. Leases expired for more than `keep` are deleted on the way.
-- It reads each budget's spend (nexus_budget_spend, one pass over the period), not its status:
-- the forecast's second pass, and an exceeded budget's search for when it was exceeded, would
-- only make a refill wait longer (60 ms instead of 32 over 500,000 calls and 10 budgets).
CREATE FUNCTION nexus_budget_lease(
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

-- The view Grafana reads shows what is reserved beside the spend.
CREATE VIEW v_budget_reservations AS
SELECT s.*, r.reserved_usd FROM nexus_budget_status(now()) s
JOIN nexus_budget_reservations(now()) r ON r.budget_id = s.id;
