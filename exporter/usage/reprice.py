"""Repricing stored calls with today's prices and overrides, in one transaction, with a record.

Prices come from the exporter's own PriceBook, by the rule ingest prices by (the overrides'
valid_from dates, a genai-prices price history by timestamp), per model and UTC day (or time,
for a model genai-prices prices by time of day). Where that price is linear in the token counts
(an override, a price set without tiers), it is reduced to coefficients, checked against
PriceBook, and the database prices the calls itself (exporter.usage.linear_prices). The other
calls are read as groups: calls of one model on one day with the same token counts and the same
current cost and source cost the same, so each group is priced once in Python; the groups that
change go to a temporary table with COPY. The calls either way changes are chosen once, into
the temporary table nexus_reprice_changed, and written by exporter.usage.cost_writes (in place,
or a partition written anew). They correct the daily, hourly, ten-minute and performance
summaries, and become the revision's call rows, in the same transaction: the API, budgets,
reports and SQL dashboards move together, or not at all.

Calls whose cost the provider reported (`cost_source` = provider) are left as they are unless
`include_provider_costs`; repriced, they keep that cost when no price table knows the model.
A call repriced to nothing known (an override removed, say) becomes unpriced, as ingest would
store it today. A call changes when its cost or its source's kind (`cost_source`) does; then
it gets the new `price_ref` too. A call whose cost and kind stay keeps its `price_ref`, which
still reproduces its cost: a new genai-prices version with the same prices changes nothing.
"""

from __future__ import annotations

import contextlib
import fnmatch
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg

from exporter.ingest.pricing import MAX_CALL_COST_USD, PriceBook, stored_cost
from exporter.usage.cost_writes import write_changed_costs
from exporter.usage.linear_prices import COST_SQL, linear_price
from exporter.usage.revision_record import record_revision

# Groups read per round trip: enough to keep PostgreSQL busy, a few MB of Python objects.
FETCH_GROUPS = 20_000
# A new cost is rounded as the row stores it (stored_cost) before it is compared with the
# stored one. As at ingest, no call costs MAX_CALL_COST_USD: a group priced at more is left as
# it is and counted.
# Grouping a million calls and joining a million groups in memory, not in batches on disk (the
# server's default is 4 MB), and the temporary tables of a million rows each in memory too (the
# default temp_buffers is 8 MB; it can be set only before the session's first temporary table,
# so repricing runs on a connection of its own); for the reprice's own transaction only.
SET_WORK_MEM = "SET LOCAL work_mem = '256MB'"
# A partition written anew has its indexes built by sorting: in memory, not in runs on disk.
SET_SORT_MEM = "SET LOCAL maintenance_work_mem = '256MB'"
SET_TEMP_BUFFERS = "SET LOCAL temp_buffers = '256MB'"
# The groups are read through a cursor, which PostgreSQL plans for its first tenth by default
# (a merge join without the day in its key: 30 s instead of 2 s at a million calls); every
# group is read.
SET_READ_ALL = "SET LOCAL cursor_tuple_fraction = 1.0"
# One reprice at a time: a second waits for the first to commit (it would see its result).
REPRICE_LOCK = "LOCK TABLE price_revisions IN SHARE ROW EXCLUSIVE MODE"

Progress = Callable[[int, int], None]  # (calls priced so far, calls to price)


@dataclass(frozen=True)
class RepriceRequest:
    since: datetime
    until: datetime
    model_pattern: str | None = None  # fnmatch, case-insensitive, request or response model
    provider: str | None = None
    include_provider_costs: bool = False


@dataclass
class ModelChange:
    """What repricing changes for one provider and (request) model."""

    provider: str
    model: str
    calls_changed: int = 0
    newly_priced: int = 0
    newly_unpriced: int = 0
    old_cost_usd: Decimal = Decimal(0)
    new_cost_usd: Decimal = Decimal(0)

    def add_totals(self, calls: int, newly_priced: int, old: Decimal, new: Decimal) -> None:
        """Calls a linear price changes (it prices every call: none becomes unpriced)."""
        self.calls_changed += calls
        self.newly_priced += newly_priced
        self.old_cost_usd += old
        self.new_cost_usd += new

    def add(self, calls: int, old: Decimal | None, new: Decimal | None) -> None:
        self.calls_changed += calls
        self.newly_priced += calls if old is None and new is not None else 0
        self.newly_unpriced += calls if old is not None and new is None else 0
        self.old_cost_usd += (old or 0) * calls
        self.new_cost_usd += (new or 0) * calls


@dataclass
class RepricePlan:
    calls_examined: int = 0
    groups: int = 0  # distinct (model, day, token counts, old cost) priced in Python
    linear_examined: int = 0  # calls priced in SQL by a linear price (their days', rather)
    out_of_range: int = 0  # calls a new price would put at MAX_CALL_COST_USD or more: unchanged
    models: dict[tuple[str, str], ModelChange] = field(default_factory=dict)
    revision_id: int | None = None  # set once applied (None: nothing changed, or a dry run)
    seconds: dict[str, float] = field(default_factory=dict)  # by phase, for the benchmark
    writes: dict[str, int] = field(default_factory=dict)  # how the costs were written

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = time.perf_counter() - started

    @property
    def calls_changed(self) -> int:
        return sum(m.calls_changed for m in self.models.values())

    def change(self, provider: str, model: str) -> ModelChange:
        key = (provider, model)
        if key not in self.models:
            self.models[key] = ModelChange(provider, model)
        return self.models[key]


_SCOPE = """
SELECT provider, model, coalesce(response_model, ''), date_trunc('day', "timestamp", 'UTC'),
       count(*), coalesce(service_tier, '')
FROM api_calls
WHERE "timestamp" >= %(since)s AND "timestamp" < %(until)s
  AND (%(include_provider)s OR cost_source IS DISTINCT FROM 'provider')
GROUP BY 1, 2, 3, 4, 6
"""
_MODELS_TABLE = """
CREATE TEMP TABLE nexus_reprice_models (
    provider text, model text, response_model text, by_time boolean
) ON COMMIT DROP
"""
# The group key of a call, in the same terms in the read and in the update.
_AT = "CASE WHEN m.by_time THEN a.\"timestamp\" ELSE date_trunc('day', a.\"timestamp\", 'UTC') END"
_JOIN_MODELS = (
    "a.provider = m.provider AND a.model = m.model"
    " AND coalesce(a.response_model, '') = m.response_model"
)
# A call that told only its total (no input or output count) is priced by no table at ingest,
# so not here either: priced by its tokens, it would come out at $0.
_RANGE = (
    'a."timestamp" >= %(since)s AND a."timestamp" < %(until)s'
    " AND (%(include_provider)s OR a.cost_source IS DISTINCT FROM 'provider')"
    " AND NOT (a.input_tokens = 0 AND a.output_tokens = 0 AND a.total_tokens > 0)"
)
# The calls priced by a linear price in SQL (exporter.usage.linear_prices): one such price per
# model and UTC day, for the usage PriceBook prices (cache counts within the input). A row with
# no source marks a model and day no price source knows: its calls without a cost stay so.
_LINEAR_TABLE = """
CREATE TEMP TABLE nexus_reprice_linear (
    provider text, model text, response_model text, day timestamptz, source text,
    input_mtok numeric, output_mtok numeric, cache_read_mtok numeric, cache_write_mtok numeric,
    per_call numeric, subtract_read boolean, subtract_write boolean, above bigint, up_to bigint,
    cache_write_1h_mtok numeric, split_1h boolean, price_ref text, service_tier text
) ON COMMIT DROP
"""
_JOIN_LINEAR = (
    "l.provider = a.provider AND l.model = a.model"
    " AND l.response_model = coalesce(a.response_model, '')"
    " AND l.day = date_trunc('day', a.\"timestamp\", 'UTC')"
    " AND a.input_tokens > l.above AND (l.up_to IS NULL OR a.input_tokens <= l.up_to)"
    " AND l.service_tier = coalesce(a.service_tier, '')"
)
_VALID = "a.cache_read_tokens + a.cache_write_tokens <= a.input_tokens"
# What the linear prices change, per model, from the calls they change (out-of-range costs
# taken out first).
_LINEAR_TOTALS = """
SELECT provider, model, count(*), count(*) FILTER (WHERE old_cost IS NULL),
       coalesce(sum(old_cost), 0), coalesce(sum(new_cost), 0)
FROM nexus_reprice_changed GROUP BY 1, 2
"""
_OUT_OF_RANGE_LINEAR = "DELETE FROM nexus_reprice_changed WHERE new_cost >= %(max_cost)s"
_GROUPS = f"""
SELECT a.provider, a.model, m.response_model, {_AT}, a.input_tokens, a.output_tokens,
       a.cache_read_tokens, a.cache_write_tokens, a.cache_write_1h_tokens, a.cost_usd,
       coalesce(a.cost_source, ''), count(*), coalesce(a.service_tier, '')
FROM api_calls a JOIN nexus_reprice_models m ON {_JOIN_MODELS}
LEFT JOIN nexus_reprice_linear l ON {_JOIN_LINEAR}
WHERE {_RANGE} AND NOT (l.source IS NOT NULL AND {_VALID})
  AND NOT (l.provider IS NOT NULL AND l.source IS NULL AND a.cost_usd IS NULL
           AND a.cost_source IS NULL)
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13
"""
_PRICES_TABLE = """
CREATE TEMP TABLE nexus_reprice_prices (
    provider text, model text, response_model text, at timestamptz, input_tokens bigint,
    output_tokens bigint, cache_read_tokens bigint, cache_write_tokens bigint,
    cache_write_1h_tokens bigint, old_cost numeric, old_source text, new_cost numeric,
    new_source text, price_ref text, service_tier text
) ON COMMIT DROP
"""
_PRICE_TYPES = [
    "text", "text", "text", "timestamptz", "int8", "int8", "int8", "int8", "int8", "numeric",
    "text", "numeric", "text", "text", "text",
]  # fmt: skip
_CHANGED_TABLE = """
CREATE TEMP TABLE nexus_reprice_changed (
    part oid, row_id tid,
    trace_id text, span_id text, "timestamp" timestamptz, service_name text, provider text,
    model text, operation text, content boolean, success boolean, error_type text,
    time_to_first_chunk_ms float8, old_cost numeric, old_source text, new_cost numeric,
    new_source text, price_ref text, old_ref text
) ON COMMIT DROP
"""
# What a changed call's row says of it, for the record and the summaries.
_CALL_FACTS = """a.trace_id, a.span_id, a."timestamp", a.service_name, a.provider, a.model,
       a.operation, a.correlation_id IS NOT NULL, a.success, a.error_type,
       a.time_to_first_chunk_ms"""
# The calls to change (in a run that applies, chosen under HOLD_WRITERS): written by
# exporter.usage.cost_writes, recorded by exporter.usage.revision_record.
_CHANGED_LINEAR = f"""
INSERT INTO nexus_reprice_changed
SELECT * FROM (
    SELECT a.tableoid, a.ctid, {_CALL_FACTS}, a.cost_usd AS old_cost,
           a.cost_source AS old_source, {COST_SQL} AS new_cost, l.source AS new_source,
           l.price_ref, a.price_ref AS old_ref
    FROM api_calls a JOIN nexus_reprice_linear l ON {_JOIN_LINEAR}
    WHERE {_RANGE} AND {_VALID} AND l.source IS NOT NULL
) c
WHERE (c.new_cost, c.new_source) IS DISTINCT FROM (c.old_cost, c.old_source)
"""
_CHANGED_GROUPS = f"""
INSERT INTO nexus_reprice_changed
SELECT a.tableoid, a.ctid, {_CALL_FACTS}, p.old_cost, nullif(p.old_source, ''), p.new_cost,
       p.new_source, p.price_ref, a.price_ref
FROM api_calls a JOIN nexus_reprice_models m ON {_JOIN_MODELS}
     JOIN nexus_reprice_prices p
     ON m.provider = p.provider AND m.model = p.model AND m.response_model = p.response_model
WHERE {_RANGE}
  AND a.provider = p.provider AND a.model = p.model
  AND coalesce(a.response_model, '') = p.response_model AND {_AT} = p.at
  AND a.input_tokens = p.input_tokens AND a.output_tokens = p.output_tokens
  AND a.cache_read_tokens = p.cache_read_tokens
  AND a.cache_write_tokens = p.cache_write_tokens
  AND a.cache_write_1h_tokens = p.cache_write_1h_tokens
  AND coalesce(a.service_tier, '') = p.service_tier
  AND coalesce(a.cost_usd, -1) = coalesce(p.old_cost, -1)
  AND coalesce(a.cost_source, '') = p.old_source
"""
# Taken first by a run that applies, to its commit: stored calls wait to be written, so none
# arrives, moves or changes between choosing the calls to change and writing them (readers go
# on). Row ids chosen before it could point at another row by the time they are written.
HOLD_WRITERS = "LOCK TABLE api_calls IN SHARE MODE"


def reprice(
    conn: psycopg.Connection[Any],
    book: PriceBook,
    request: RepriceRequest,
    *,
    apply: bool = True,
    progress: Progress | None = None,
    before_apply: Callable[[RepricePlan], None] | None = None,
) -> RepricePlan:
    """Prices the calls of `request` again and, with `apply`, writes the changes and a revision,
    all in one transaction (committed here). Without `apply`, nothing is written.
    `before_apply` sees the plan (the changes per model) once priced, before anything is
    written."""
    params = {
        "since": request.since,
        "until": request.until,
        "include_provider": request.include_provider_costs,
        "max_cost": MAX_CALL_COST_USD,
    }
    plan = RepricePlan()
    with conn.transaction(force_rollback=not apply):
        with plan.timed("read and price"):
            _larger_temp_buffers(conn)
            conn.execute(REPRICE_LOCK)
            if apply:
                conn.execute(HOLD_WRITERS)
            conn.execute(SET_WORK_MEM)
            conn.execute(SET_READ_ALL)
            conn.execute(SET_SORT_MEM)
            plan.calls_examined, days = _choose_models(conn, book, request, params)
            _price_linear(conn, book, params, plan, days)
            if progress is not None:
                progress(plan.linear_examined, plan.calls_examined)
            conn.execute(_PRICES_TABLE)
            _price_groups(conn, book, params, plan, progress)
        if before_apply is not None:
            before_apply(plan)
        if apply and plan.models:
            with plan.timed("write calls"):
                conn.execute("ANALYZE nexus_reprice_prices")
                conn.execute(_CHANGED_GROUPS, params)
                conn.execute("ANALYZE nexus_reprice_changed")
                plan.writes = write_changed_costs(conn)
            with plan.timed("record and summaries"):
                plan.revision_id = record_revision(
                    conn,
                    {**params, "pattern": request.model_pattern, "provider": request.provider},
                    book.sources(),
                    plan.calls_examined,
                )
    return plan


def _larger_temp_buffers(conn: psycopg.Connection[Any]) -> None:
    """SET_TEMP_BUFFERS, unless this session already used temporary tables with another size:
    then PostgreSQL refuses it, and repricing goes on with the session's size."""
    with contextlib.suppress(psycopg.errors.InvalidParameterValue), conn.transaction():
        conn.execute(SET_TEMP_BUFFERS)


def _choose_models(
    conn: psycopg.Connection[Any],
    book: PriceBook,
    request: RepriceRequest,
    params: dict[str, Any],
) -> tuple[int, list[tuple[str, str, str, datetime, int, str]]]:
    """Fills nexus_reprice_models with the models in range that the filters select; returns
    how many calls they made, and their calls per UTC day and service tier (provider, model,
    response model, day, calls, tier or '') but those of models priced by time of day."""
    pattern = request.model_pattern.lower() if request.model_pattern else None
    provider = request.provider.lower() if request.provider else None
    chosen: dict[tuple[str, str, str], bool] = {}
    days = []
    for prov, model, response, day, count, tier in conn.execute(_SCOPE, params).fetchall():
        if provider is not None and prov.lower() != provider:
            continue
        names = (model.lower(), response.lower()) if response else (model.lower(),)
        if pattern is not None and not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            continue
        key = (prov, model, response)
        if key not in chosen:
            chosen[key] = book.time_of_day_priced(prov, model, response)
        days.append((prov, model, response, day, count, tier))
    conn.execute(_MODELS_TABLE)
    with conn.cursor().copy("COPY nexus_reprice_models FROM STDIN") as copy:
        for key, by_time in chosen.items():
            copy.write_row((*key, by_time))
    conn.execute("ANALYZE nexus_reprice_models")  # else joins with it are planned blind
    return sum(d[4] for d in days), [d for d in days if not chosen[d[:3]]]


def _price_linear(
    conn: psycopg.Connection[Any],
    book: PriceBook,
    params: dict[str, Any],
    plan: RepricePlan,
    days: list[tuple[str, str, str, datetime, int, str]],
) -> None:
    """Fills nexus_reprice_linear with the linear prices of the models and days in range, and
    nexus_reprice_changed with the calls they change, and adds those to the plan."""
    conn.execute(_LINEAR_TABLE)
    rows = []
    for provider, model, response, day, calls, tier in days:
        if book.price_set(provider, model, response or None, day, tier or None) is None:
            # No price source knows the model: its unpriced calls stay so, unread.
            rows.append((provider, model, response, day, *[None] * 8, -1, *[None] * 4, tier))
            plan.linear_examined += calls  # nearly all of them: those without a cost
            continue
        pieces = linear_price(book, provider, model, response or None, day, tier or None)
        if pieces:
            plan.linear_examined += calls
            ref = book.reference(provider, model, response or None, day, pieces[0].source)
            rows += [(provider, model, response, day, *astuple(p), ref, tier) for p in pieces]
    with conn.cursor().copy("COPY nexus_reprice_linear FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    conn.execute("ANALYZE nexus_reprice_linear")
    conn.execute(_CHANGED_TABLE)
    conn.execute(_CHANGED_LINEAR, params)
    plan.out_of_range += conn.execute(_OUT_OF_RANGE_LINEAR, params).rowcount
    for provider, model, calls, priced, old, new in conn.execute(_LINEAR_TOTALS).fetchall():
        plan.change(provider, model).add_totals(calls, priced, old, new)


def _price_groups(
    conn: psycopg.Connection[Any],
    book: PriceBook,
    params: dict[str, Any],
    plan: RepricePlan,
    progress: Progress | None,
) -> None:
    """Prices each group of the calls no linear price prices, once; the ones that change go
    to nexus_reprice_prices."""
    done = plan.linear_examined
    with conn.cursor(name="nexus_reprice_groups", binary=True) as groups:
        groups.itersize = FETCH_GROUPS
        groups.execute(_GROUPS, params)
        while rows := groups.fetchmany(FETCH_GROUPS):
            plan.groups += len(rows)
            changed = []
            for row in rows:
                update = _priced(book, row)
                if update is _OUT_OF_RANGE:
                    plan.out_of_range += row[11]
                elif update is not None:
                    changed.append(update)
                    plan.change(row[0], row[1]).add(row[11], row[9], update[11])
                done += row[11]
            if changed:
                with conn.cursor().copy(
                    "COPY nexus_reprice_prices FROM STDIN (FORMAT BINARY)"
                ) as c:
                    c.set_types(_PRICE_TYPES)
                    for each in changed:
                        c.write_row(each)
            if progress is not None:
                progress(min(done, plan.calls_examined), plan.calls_examined)
    if progress is not None:
        progress(plan.calls_examined, plan.calls_examined)


_OUT_OF_RANGE: tuple[Any, ...] = ("a cost of MAX_CALL_COST_USD or more",)  # a marker


def _priced(book: PriceBook, row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The nexus_reprice_prices row of a group whose cost or source changes, else None (or
    _OUT_OF_RANGE)."""
    provider, model, response, at, inp, out, read, write, write_1h, old_cost, old_source = row[:11]
    tier = row[12] or None
    by_provider = old_source == "provider"
    reported = old_cost if old_source == "span" or by_provider else None
    price = book.price(
        provider=provider,
        model=model,
        response_model=response or None,
        timestamp=at,
        input_tokens=inp,
        output_tokens=out,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=write_1h,
        reported_cost_usd=reported,
        service_tier=tier,
    )
    cost, source = price.cost_usd, price.source
    if by_provider and source == "span":
        source = "provider"  # no price table knows it: the provider's charge stays
    if cost is not None:
        cost = stored_cost(cost)
        if cost >= MAX_CALL_COST_USD:
            return _OUT_OF_RANGE
    if cost == old_cost and (source or "") == old_source:
        return None
    ref = book.reference(provider, model, response or None, at, source) if source else None
    return (*row[:11], cost, source, ref, row[12])


def utc_day_start(day: Any) -> datetime:
    """The start of a UTC calendar day, as a range bound."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC)
