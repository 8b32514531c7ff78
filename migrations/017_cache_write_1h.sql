-- Anthropic's 1-hour cache writes cost more than its 5-minute ones (claude-sonnet-4-5: $6 a
-- million tokens, not $3.75): api_calls.cache_write_1h_tokens counts a call's writes to a
-- 1-hour cache, within cache_write_tokens, so that its cost (and any repricing of it) prices
-- them at their own price. 0 for every call stored before this column existed, and for calls
-- without a 1-hour cache: those cost what they cost before. A constant default: no table rewrite.
ALTER TABLE api_calls ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0
    CHECK (cache_write_1h_tokens >= 0 AND cache_write_1h_tokens <= cache_write_tokens);

-- api_call_duplicates has api_calls' columns in api_calls' order, then set_aside_at (a span set
-- aside moves with INSERT ... SELECT *): the new column goes before set_aside_at, which is made
-- again after it with its values (as 013 did for price_ref).
ALTER TABLE api_call_duplicates RENAME COLUMN set_aside_at TO set_aside_at_before;
ALTER TABLE api_call_duplicates
    ADD COLUMN cache_write_1h_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN set_aside_at timestamptz;
UPDATE api_call_duplicates SET set_aside_at = set_aside_at_before;
ALTER TABLE api_call_duplicates
    DROP COLUMN set_aside_at_before,
    ALTER COLUMN set_aside_at SET NOT NULL,
    ALTER COLUMN set_aside_at SET DEFAULT now();
