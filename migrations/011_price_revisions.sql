-- Repricing stored calls (`nexus-otel reprice`): every run that changes costs leaves a revision,
-- its totals per provider and model, and one row per changed call with the cost and source it
-- had before and the ones it got.
--
-- A call's previous cost lives in price_revision_calls rather than in columns of api_calls:
-- api_calls and api_call_duplicates share their column order (a set-aside span moves with
-- INSERT ... SELECT *), and a row repriced twice keeps both steps, one per revision. The rows
-- of a revision are written once, in the revision's transaction, and never updated.

CREATE TABLE price_revisions (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at         timestamptz NOT NULL DEFAULT now(),
    since              timestamptz NOT NULL,         -- calls from here (inclusive)
    until              timestamptz NOT NULL,         -- up to here (exclusive)
    model_pattern      text,                         -- the --model pattern, NULL = any model
    provider           text,                         -- the --provider, NULL = any provider
    include_provider_costs boolean NOT NULL,         -- provider-reported costs repriced too
    price_sources      jsonb       NOT NULL,         -- genai-prices version and data, overrides
    calls_examined     bigint      NOT NULL,
    calls_changed      bigint      NOT NULL,
    newly_priced       bigint      NOT NULL,         -- unpriced before, priced now
    newly_unpriced     bigint      NOT NULL,         -- priced before, no price now
    old_cost_usd       numeric     NOT NULL,         -- the changed calls, before
    new_cost_usd       numeric     NOT NULL          -- the changed calls, after
);
CREATE INDEX price_revisions_created_idx ON price_revisions (created_at DESC);

-- A revision's changed calls per provider and model: what `reprice` showed before applying,
-- and the net amount per model that /metrics exposes (nexus_llm_cost_revisions_usd).
CREATE TABLE price_revision_models (
    revision_id    bigint  NOT NULL REFERENCES price_revisions ON DELETE CASCADE,
    provider       text    NOT NULL,
    model          text    NOT NULL,
    calls_changed  bigint  NOT NULL,
    newly_priced   bigint  NOT NULL,
    newly_unpriced bigint  NOT NULL,
    old_cost_usd   numeric NOT NULL,
    new_cost_usd   numeric NOT NULL,
    PRIMARY KEY (revision_id, provider, model)
);

-- One row per call a revision changed. NULL costs are unpriced. `price_ref` says where the new
-- price came from precisely enough to reproduce it (the overrides entry and its valid_from, or
-- the genai-prices version and data). Rows of calls removed by retention go with them.
CREATE TABLE price_revision_calls (
    revision_id          bigint      NOT NULL REFERENCES price_revisions ON DELETE CASCADE,
    trace_id             text        NOT NULL,
    span_id              text        NOT NULL,
    "timestamp"          timestamptz NOT NULL,
    previous_cost_usd    numeric(20, 12),
    previous_cost_source text,
    cost_usd             numeric(20, 12),
    cost_source          text,
    price_ref            text
);
-- One index, by revision: its keys only grow, so a revision of a million calls appends to it
-- instead of a million random inserts (an index on the call ids doubled the time to record a
-- revision). Explaining one call, and retention's delete by time, read the table through.
CREATE INDEX price_revision_calls_revision_idx ON price_revision_calls (revision_id);
