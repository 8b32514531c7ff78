-- Spans that share a response id are found by it nearest in time first. Twins of one call
-- (an instrumentation's span and the SDK's own) start milliseconds apart; but a server that
-- answers every call with one fixed id, or an instrumentation that writes a constant, gives
-- thousands of stored spans one id, and a lookup that read them all slowed ingest with every
-- call stored (417 spans/s in the memory soak whose copies shared their ids). With the start
-- time in the index, a lookup reads a few entries either side of the new span's start.
DROP INDEX api_calls_response_idx;
CREATE INDEX api_calls_response_idx
    ON api_calls (left(attributes ->> 'gen_ai.response.id', 128), "timestamp")
    WHERE attributes ? 'gen_ai.response.id';
DROP INDEX api_call_duplicates_response_idx;
CREATE INDEX api_call_duplicates_response_idx
    ON api_call_duplicates (left(attributes ->> 'gen_ai.response.id', 128), "timestamp")
    WHERE attributes ? 'gen_ai.response.id';
