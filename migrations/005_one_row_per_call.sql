-- One call, one row, whoever instrumented it. Two spans of one call (two instrumentations of
-- the same request) keep only the span closest to the wire in api_calls; the other is moved
-- here, so that a replay of it, or a span arriving later, can still be matched against it.
-- Same columns as api_calls, not partitioned: it holds only the spans set aside.
CREATE TABLE api_call_duplicates (LIKE api_calls INCLUDING DEFAULTS);
ALTER TABLE api_call_duplicates ADD COLUMN set_aside_at timestamptz NOT NULL DEFAULT now();
ALTER TABLE api_call_duplicates ADD PRIMARY KEY (trace_id, span_id);
CREATE INDEX api_call_duplicates_parent_idx ON api_call_duplicates (trace_id, parent_span_id)
    WHERE parent_span_id IS NOT NULL;
CREATE INDEX api_call_duplicates_response_idx
    ON api_call_duplicates (left(attributes ->> 'gen_ai.response.id', 128))
    WHERE attributes ? 'gen_ai.response.id';
CREATE INDEX api_call_duplicates_timestamp_idx ON api_call_duplicates ("timestamp");

-- How a new span finds the other spans of its call among the stored ones: its children (a
-- span nested in it) and the spans that carry the same provider response id. The response id
-- is indexed by its first 128 characters: an index row must stay under PostgreSQL's 2.7 kB.
CREATE INDEX api_calls_parent_idx ON api_calls (trace_id, parent_span_id)
    WHERE parent_span_id IS NOT NULL;
CREATE INDEX api_calls_response_idx ON api_calls (left(attributes ->> 'gen_ai.response.id', 128))
    WHERE attributes ? 'gen_ai.response.id';
