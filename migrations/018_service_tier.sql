-- OpenAI prices some service tiers apart (flex at half, priority at about twice the standard
-- price): api_calls.service_tier is the tier that served a call (the span's
-- openai.response.service_tier: default, flex, priority, scale), so that its cost (and any
-- repricing of it) uses that tier's prices. NULL for calls stored before this column existed
-- and for calls whose provider names no tier: those keep the standard prices. No default: no
-- table rewrite.
ALTER TABLE api_calls ADD COLUMN service_tier text;

-- api_call_duplicates keeps api_calls' columns in api_calls' order, then set_aside_at (a span
-- set aside moves with INSERT ... SELECT *), as 013 and 017 did.
ALTER TABLE api_call_duplicates RENAME COLUMN set_aside_at TO set_aside_at_before;
ALTER TABLE api_call_duplicates ADD COLUMN service_tier text, ADD COLUMN set_aside_at timestamptz;
UPDATE api_call_duplicates SET set_aside_at = set_aside_at_before;
ALTER TABLE api_call_duplicates
    DROP COLUMN set_aside_at_before,
    ALTER COLUMN set_aside_at SET NOT NULL,
    ALTER COLUMN set_aside_at SET DEFAULT now();
