"""One call, one row, whoever instrumented it.

Two instrumentations of one request (an instrumentation library and the provider SDK's own
tracing, say) send two spans for one call. Two stored spans describe the same call when they
have the same GenAI operation, model and service, and either

- one is the other's parent (same trace): the child is closer to the wire and is kept; or
- they carry the same provider response id (`gen_ai.response.id`, same provider) and one
  lasts within the other: the inner one is kept, as an instrumentation wrapping the SDK's
  method starts before and ends after the SDK's own span of the request. (Two calls to a
  server that answers every call with one fixed id are merged only if one lies within the
  other too.)

Spans that are no model call (agents, tools, workflows) never become rows, so they neither hide
a call nor are hidden. The span not kept is moved from `api_calls` to `api_call_duplicates`,
where a replay of it, or a span of the same call arriving later, still finds it: the rule
holds whichever span arrives first, in whichever batch, and a replayed batch changes nothing.

`resolve` runs after a write's new rows are in `api_calls`, in the same transaction, as one
statement over all of them (a few index probes per row, no round trip per row, in the monthly
partitions within a day of them only); a second statement moves what it found, when it found
anything.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row

# Two spans of one call both start within the call: at most a call's longest duration apart
# (MAX_CALL_DURATION_NS, 24 h). Bounds every lookup to the one or two monthly partitions
# around a span's start.
SAME_CALL_WINDOW = timedelta(hours=24)
# The response id is compared on its first this-many characters, as indexed (migration 005:
# an index row must stay under PostgreSQL's 2.7 kB limit).
RESPONSE_ID_CHARS = 128

_FACTS = (
    "trace_id", "span_id", "timestamp", "service_name", "provider", "model", "gen_ai_operation",
    "operation", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
    "reasoning_tokens", "total_tokens", "cost_usd", "duration_ms", "success", "error_type",
)  # fmt: skip
_RID = f"left(%s.attributes ->> 'gen_ai.response.id', {RESPONSE_ID_CHARS})"
_HAS_RID = "%s.attributes ? 'gen_ai.response.id'"
# d is preferred to (closer to the wire than) n, of two spans of one response id one of which
# lies within the other: the later start, then the earlier end, then the ids (a total order).
_PREFERRED = (
    '(d."timestamp", n.ended, d.span_id, d.trace_id) > (n."timestamp", '
    "d.\"timestamp\" + d.duration_ms * interval '1 millisecond', n.span_id, n.trace_id)"
)
_SAME_CALL = (
    "d.gen_ai_operation = n.gen_ai_operation AND d.model = n.model AND "
    "d.service_name = n.service_name AND "
    'd."timestamp" BETWEEN n."timestamp" - %(window)s AND n."timestamp" + %(window)s'
)
_D_ENDED = "d.\"timestamp\" + d.duration_ms * interval '1 millisecond'"
_SAME_RESPONSE = (
    "d.provider = n.provider AND (d.trace_id, d.span_id) <> (n.trace_id, n.span_id) AND"
    f' ((d."timestamp" >= n."timestamp" AND {_D_ENDED} <= n.ended)'
    f' OR (n."timestamp" >= d."timestamp" AND n.ended <= {_D_ENDED}))'
)
# How each lookup finds its rows: by an index alone, in a subquery of its own (OFFSET 0 keeps
# both it a per-row probe and the other conditions out of it), so that no planner estimate
# (a table just filled has no statistics) can make it a scan of another index.
_CHILDREN = "d.trace_id = n.trace_id AND d.parent_span_id = n.span_id"
_PARENT = "d.trace_id = n.trace_id AND d.span_id = n.parent_span_id"
_SAME_ID = "d.trace_id = n.trace_id AND d.span_id = n.span_id"
_TWINS = f"n.rid IS NOT NULL AND {_HAS_RID % 'd'} AND {_RID % 'd'} = n.rid"
# Spans of one response id read per lookup, on each side of the new span's start: twins of one
# call start milliseconds apart, and an id that a server gives every call (thousands of stored
# spans) must not make each lookup read them all (migration 016 indexes the id with the start).
TWIN_PROBES = 16


_PREFERRED_TWIN = f"{_SAME_RESPONSE} AND {_SAME_CALL} AND {_PREFERRED}"
_RESPONSE_ID = "gen_ai.response.id"
_NO_RESPONSE_ID: Any = object()
# A lookup line's response id when it is not known for sure where the line is made: the row
# is read for it (and the span looked up whole, as if it had a twin).
READ_FROM_ROW = "?"


def lookup_line(key: str, parent_span_id: str | None, attributes: dict[str, Any]) -> str:
    """What the lookup needs of a span about to be written, known where it was decoded, as one
    line: its key (rows.call_key), its parent span id (16 hex characters, or nothing) and
    its response id as the index holds it (the stored attribute's first RESPONSE_ID_CHARS
    characters), `=` and the text in hex, since any text can be an id (the empty one too);
    nothing without one, READ_FROM_ROW when it is not text (its stored text is read). An id
    left out of a row whose attributes were cut to their bound is stored as none: then no span
    is its twin, and looking for one is only wasted (the span is read whole before anything is
    decided about it)."""
    rid = attributes.get(_RESPONSE_ID, _NO_RESPONSE_ID)
    if rid is _NO_RESPONSE_ID:
        code = ""
    elif rid.__class__ is str and "\x00" not in rid:
        try:
            code = "=" + rid[:RESPONSE_ID_CHARS].encode().hex()
        except UnicodeEncodeError:  # a lone surrogate: the database refuses the row anyway
            code = READ_FROM_ROW
    else:
        code = READ_FROM_ROW
    return f"{key}|{parent_span_id or ''}|{code}"


def key_of(line: str) -> str:
    """The key a lookup line starts with."""
    return line[: line.index("|")]


def lookups_of(keys: set[str], lines: Iterable[str]) -> str:
    """The lookup lines of `keys` among `lines`, one per key, joined: a span sent twice with the
    same key and something else different is read from its row, as stored (either copy)."""
    chosen: dict[str, str] = {}
    for line in lines:
        key = key_of(line)
        if key in keys and chosen.setdefault(key, line) != line:
            chosen[key] = f"{key}||{READ_FROM_ROW}"
    return "\n".join(chosen.values())


def _probe(table: str, key: str) -> str:
    return f"(SELECT d.* FROM {table} d WHERE {key} OFFSET 0) d"


# The columns the lookups read of a stored span.
_PROBED = (
    'trace_id, span_id, parent_span_id, "timestamp", provider, model, gen_ai_operation, '
    "service_name, duration_ms, attributes"
)


def _calls_in(partitions: tuple[str, ...]) -> str:
    """api_calls as its partitions that can hold another span of a call being written (those
    within SAME_CALL_WINDOW of the write's spans), so each lookup probes only them. A condition
    on the start time cannot do it: whatever it is written as, the planner may then scan the
    start time's index for it, every row of a day, for each span."""
    union = " UNION ALL ".join(f"SELECT {_PROBED} FROM {name}" for name in partitions)
    return f"({union})"


def _exists(table: str, key: str, condition: str = "true") -> str:
    return f"EXISTS (SELECT FROM {_probe(table, key)} WHERE {condition} OFFSET 0)"


def _another_of_its_response(table: str) -> str:
    """Whether `table` holds a span other than the new one of its response id starting within
    SAME_CALL_WINDOW of it: every twin satisfies this, and for an id no other span has (nearly
    every span) it is one index probe that reads the span's own entry and stops, where the
    probe of both sides (_twins_probe) is two, each sorted and limited: a fifth of the lookup's
    cost per span. Only spans for which it holds are probed for their twins."""
    return (
        f"EXISTS (SELECT FROM {table} d WHERE {_TWINS}"
        f' AND d."timestamp" BETWEEN n."timestamp" - %(window)s AND n."timestamp" + %(window)s'
        " AND (d.trace_id, d.span_id) <> (n.trace_id, n.span_id) OFFSET 0)"
    )


def _twins_probe(table: str) -> str:
    """The spans of the new span's response id in `table` nearest its start: TWIN_PROBES
    starting with or after it, as many before it, each side an index scan in time order."""
    sides = (
        f'(SELECT d.* FROM {table} d WHERE {_TWINS} AND d."timestamp" {op} n."timestamp"'
        f' ORDER BY d."timestamp" {order} LIMIT {TWIN_PROBES})'
        for op, order in ((">=", "ASC"), ("<", "DESC"))
    )
    return f"({' UNION ALL '.join(sides)}) d"


# The spans written just now (`lookups`, lines of lookup_line) that another stored or set-aside
# span may share a call with, by the indexes alone (c: a child, the parent, another span of the
# response id; replays and the like among those set aside), read whole (n): nearly every span
# has none, and reading each new row back cost half the lookup. Then, of those: the ones set
# aside before (a replay: removed again, counted nowhere); the stored spans a new one is closer
# to the wire than (its parent, a response-id twin it is preferred to), each with the new span
# it leaves for (`by`); the new spans something stored or set aside is closer to the wire than.
# Every lookup is an index probe per new span (OFFSET 0 keeps each a per-row subplan: never a
# join that scans a table, whatever the planner's statistics say). Usually finds nothing.
@functools.lru_cache(maxsize=64)
def _find(any_set_aside: bool, partitions: tuple[str, ...] | None) -> str:
    """The statement finding the other spans of the new spans' calls: without the lookups in
    api_call_duplicates when it holds no span at all, and (`partitions`) with the lookups in
    api_calls made in these partitions only."""
    calls = "api_calls" if partitions is None else _calls_in(partitions)
    maybe_set_aside = (
        f"""
       OR EXISTS (SELECT FROM api_call_duplicates d WHERE {_SAME_ID} OFFSET 0)
       OR EXISTS (SELECT FROM api_call_duplicates d WHERE {_CHILDREN} OFFSET 0)
       OR (n.rid IS NOT NULL AND {_another_of_its_response("api_call_duplicates")})"""
        if any_set_aside
        else ""
    )
    set_aside = (
        f"""
   OR EXISTS (SELECT FROM api_call_duplicates d WHERE {_SAME_ID})  -- a replay, at any start
   OR {_exists("api_call_duplicates", _CHILDREN, _SAME_CALL)}
   OR ({_another_of_its_response("api_call_duplicates")}
       AND EXISTS (SELECT FROM {_twins_probe("api_call_duplicates")} WHERE {_PREFERRED_TWIN}))"""
        if any_set_aside
        else ""
    )
    return f"""
WITH k AS MATERIALIZED (
    -- convert_from's text takes the collation of its encoding's name ("C"): compared in it,
    -- the index of response ids (in the default one) could not be used
    SELECT k.*, CASE WHEN left(k.rid_code, 1) = '='
                THEN convert_from(decode(substr(k.rid_code, 2), 'hex'), 'UTF8') COLLATE "default"
                END AS rid
    FROM (
        SELECT split_part(l.line, '|', 1) AS key, substr(l.line, 1, 32) AS trace_id,
               substr(l.line, 33, 16) AS span_id,
               timestamptz 'epoch' + split_part(substr(l.line, 49), '|', 1)::int8
                   * interval '1 microsecond' AS "timestamp",
               nullif(split_part(l.line, '|', 2), '') AS parent_span_id,
               split_part(l.line, '|', 3) AS rid_code
        FROM unnest(string_to_array(%(lookups)s, E'\\n')) AS l(line)
    ) k
),
c AS MATERIALIZED (
    SELECT n.key FROM k n
    WHERE n.rid_code = '{READ_FROM_ROW}'
       OR EXISTS (SELECT FROM {calls} d WHERE {_CHILDREN} OFFSET 0)
       OR (n.parent_span_id IS NOT NULL AND EXISTS (SELECT FROM {calls} d WHERE {_PARENT} OFFSET 0))
       OR (n.rid IS NOT NULL AND {_another_of_its_response(calls)}){maybe_set_aside}
),
n AS MATERIALIZED (
    SELECT a.* FROM c CROSS JOIN LATERAL (
        SELECT a.trace_id, a.span_id, a.parent_span_id, a."timestamp", a.provider, a.model,
               a.gen_ai_operation, a.service_name,
               a."timestamp" + a.duration_ms * interval '1 millisecond' AS ended,
               CASE WHEN {_HAS_RID % "a"} THEN {_RID % "a"} END AS rid
        FROM {calls} a
        WHERE a.trace_id = substr(c.key, 1, 32) AND a.span_id = substr(c.key, 33, 16)
          AND a."timestamp" = timestamptz 'epoch'
              + substr(c.key, 49)::int8 * interval '1 microsecond'
        OFFSET 0
    ) a
),
twins AS MATERIALIZED (
    SELECT n.trace_id AS n_trace, n.span_id AS n_span, n."timestamp" AS n_timestamp,
           d.trace_id, d.span_id, d."timestamp", {_PREFERRED} AS preferred
    FROM (SELECT * FROM n WHERE {_another_of_its_response(calls)}) n
    CROSS JOIN LATERAL {_twins_probe(calls)}
    WHERE {_SAME_RESPONSE} AND {_SAME_CALL}
)
SELECT n.trace_id, n.span_id, n."timestamp", NULL AS by FROM n
WHERE {_exists(calls, _CHILDREN, _SAME_CALL)}{set_aside}
UNION ALL
SELECT d.trace_id, d.span_id, d."timestamp", n.trace_id || n.span_id
FROM n CROSS JOIN LATERAL {_probe(calls, _PARENT)} WHERE {_SAME_CALL}
UNION ALL
SELECT n_trace, n_span, n_timestamp, NULL FROM twins WHERE preferred
UNION ALL
SELECT trace_id, span_id, "timestamp", n_trace || n_span FROM twins WHERE NOT preferred
"""


# Whether any span is set aside at all, and the partitions of api_calls whose range meets
# (%(low)s, %(high)s) (one whose bound is not of the FROM ... TO form, DEFAULT, always does).
_BEFORE_FIND = r"""
SELECT EXISTS (SELECT FROM api_call_duplicates), ARRAY(
    SELECT c.oid::regclass::text
    FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL regexp_match(
        pg_get_expr(c.relpartbound, c.oid), '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') AS b
    WHERE i.inhparent = 'api_calls'::regclass
      AND (b IS NULL OR (
          (b[1] = 'MINVALUE' OR trim(both chr(39) from b[1])::timestamptz <= %(high)s)
          AND (b[2] = 'MAXVALUE' OR trim(both chr(39) from b[2])::timestamptz > %(low)s)))
    ORDER BY 1)
"""
# Two writers (exporters on one database) storing two spans of one call at the same time would
# each miss the other's uncommitted row. Finding and committing are one at a time: the lock is
# held to commit, and each writer's rows are in before it waits, so writers still copy rows in
# parallel and the later one to find sees the earlier one's rows.
_LOCK = "SELECT pg_advisory_xact_lock(hashtext('nexus-otel: one call, one row'))"
# What the lookup found leaves api_calls; what was not set aside before is set aside now. Returns
# what the summaries and metrics need of each row that left.
_MOVE = f"""
WITH leaving AS (
    SELECT trace_id, span_id, "timestamp", min(by) AS by
    FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::text[])
        AS l(trace_id, span_id, "timestamp", by)
    GROUP BY trace_id, span_id, "timestamp"
),
gone AS (
    DELETE FROM api_calls a USING leaving l
    WHERE a.trace_id = l.trace_id AND a.span_id = l.span_id AND a."timestamp" = l."timestamp"
    RETURNING a.*
),
aside AS (
    INSERT INTO api_call_duplicates SELECT * FROM gone ON CONFLICT DO NOTHING
    RETURNING trace_id, span_id
)
SELECT {", ".join(f'g."{c}"' for c in _FACTS)}, s.span_id IS NOT NULL AS set_aside, l.by
FROM gone g JOIN leaving l ON l.trace_id = g.trace_id AND l.span_id = g.span_id
LEFT JOIN aside s ON s.trace_id = g.trace_id AND s.span_id = g.span_id
"""


async def find_statement(
    conn: psycopg.AsyncConnection[Any], first: datetime, last: datetime
) -> str:
    """Takes the lock finding is done under, and returns the statement that finds the other
    spans of the calls of spans starting from `first` to `last` (parameters: lookups, window)."""
    span = {"low": first - SAME_CALL_WINDOW, "high": last + SAME_CALL_WINDOW}
    async with conn.pipeline():
        await conn.execute(_LOCK)
        before = await conn.execute(_BEFORE_FIND, span)
    # Read under the lock: every writer that sets spans aside has committed them by now. Most
    # databases hold none (one instrumentation per call): three probes a span fewer.
    any_set_aside, partitions = await before.fetchone() or (True, None)
    return _find(any_set_aside, tuple(partitions) if partitions else None)


async def resolve(
    conn: psycopg.AsyncConnection[Any], lookups: str, first: datetime, last: datetime
) -> list[Any]:
    """Applies the rule to the spans just written (their lookup lines, joined; the earliest
    and latest start among them) inside the caller's transaction: the rows that left
    api_calls, each with `set_aside` (False: a replay of a span set aside before) and, for a
    row stored before, `by`: the trace and span id of a span written now that it left for.
    Usually none."""
    find = await find_statement(conn, first, last)
    found = await conn.execute(find, {"lookups": lookups, "window": SAME_CALL_WINDOW})
    leaving = await found.fetchall()
    if not leaving:
        return []
    cursor = conn.cursor(row_factory=namedtuple_row)
    await cursor.execute(_MOVE, [list(column) for column in zip(*leaving, strict=True)])
    return await cursor.fetchall()


_FACT_COLUMNS = ", ".join(f'a."{c}"' for c in _FACTS)
_FACTS_OF = (
    f"SELECT {_FACT_COLUMNS} FROM unnest(%s::text[]) AS k(key) "
    "JOIN api_calls a ON a.trace_id = substr(k.key, 1, 32) AND a.span_id = substr(k.key, 33, 16)"
    " AND a.\"timestamp\" = timestamptz 'epoch'"
    " + substr(k.key, 49)::int8 * interval '1 microsecond'"
)


async def facts_of(conn: psycopg.AsyncConnection[Any], keys: list[str]) -> list[Any]:
    """What the summaries and metrics need of the stored rows with these keys."""
    cursor = conn.cursor(row_factory=namedtuple_row)
    return await (await cursor.execute(_FACTS_OF, (keys,))).fetchall()


def counted_already(kept: list[Any], replaced: list[Any]) -> set[tuple[str, str]]:
    """The new rows kept whose call the metrics counted already, with a span it replaces: the
    span a replaced row left for, or (when that span left too, for one written with it) the
    row kept of the same call in its trace."""
    by_id = {(f.trace_id, f.span_id): f for f in kept}
    counted: set[tuple[str, str]] = set()
    for old in replaced:
        by = (old.by[:32], old.by[32:]) if old.by else None
        if by not in by_id:
            same_call = (old.trace_id, old.service_name, old.model, old.gen_ai_operation)
            by = next(
                (
                    k
                    for k, f in by_id.items()
                    if (f.trace_id, f.service_name, f.model, f.gen_ai_operation) == same_call
                    and k not in counted
                ),
                None,
            )
        if by is not None:
            counted.add(by)
    return counted
