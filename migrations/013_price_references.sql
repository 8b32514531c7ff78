-- Where each call's price comes from, precisely enough to reproduce it, and a revision's calls
-- listed page by page.
--
-- api_calls.price_ref, beside cost_source (which keeps its kind: provider | override |
-- genai-prices | span, what queries, dashboards and repricing compare and group by): the
-- genai-prices version and its data ("genai-prices 0.2.5 (bundled data)"), the overrides entry
-- ("/etc/prices.yaml models[3] (acme-*, provider openai) valid_from 2026-11-01"), or, for a
-- cost the span reported, the attribute it was read from ("gen_ai.usage.cost.amount", kept in
-- `attributes`). NULL for an unpriced call, and for calls stored before this column existed.
-- Repricing leaves a call whose cost and kind stay the same as it is, reference included: that
-- reference still reproduces its cost.
ALTER TABLE api_calls ADD COLUMN price_ref text;

-- api_call_duplicates has api_calls' columns in api_calls' order, then set_aside_at (a span set
-- aside moves with INSERT ... SELECT *): price_ref goes before set_aside_at, which is made
-- again after it with its values.
ALTER TABLE api_call_duplicates RENAME COLUMN set_aside_at TO set_aside_at_before;
ALTER TABLE api_call_duplicates ADD COLUMN price_ref text, ADD COLUMN set_aside_at timestamptz;
UPDATE api_call_duplicates SET set_aside_at = set_aside_at_before;
ALTER TABLE api_call_duplicates
    DROP COLUMN set_aside_at_before,
    ALTER COLUMN set_aside_at SET NOT NULL,
    ALTER COLUMN set_aside_at SET DEFAULT now();

-- A revision's calls in the order it recorded them, page after page
-- (GET /api/prices/revisions/{id}/calls?cursor=N): a number per row, taken as rows are written
-- (the insert names no value for it). The index on (revision_id, id) only grows at its end, as
-- the one on revision_id alone did, and serves everything that one served.
ALTER TABLE price_revision_calls ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY;
-- And each changed call's previous reference, beside its previous cost and source.
ALTER TABLE price_revision_calls ADD COLUMN previous_price_ref text;
CREATE INDEX price_revision_calls_page_idx ON price_revision_calls (revision_id, id);
DROP INDEX IF EXISTS price_revision_calls_revision_idx;

-- A revision's call rows are written by the revision's own transaction, right after its
-- revision row, and revisions are never deleted: the foreign key checked each of a million rows
-- one by one (10 s of the 15 s that recording a million changed calls took).
ALTER TABLE price_revision_calls DROP CONSTRAINT price_revision_calls_revision_id_fkey;
