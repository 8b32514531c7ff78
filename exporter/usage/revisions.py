"""Reading what repricing did (the revisions, their models and calls), the models seen without
a price, and the revisions' net amount as a gauge for /metrics.

Prometheus counters (`nexus_llm_cost_usd_total`) count a call's cost once, when it is stored,
and cannot be rewritten: a repriced call is not counted again. `nexus_llm_cost_revisions_usd`
is the net amount all revisions added (new minus old) per provider and model, read from the
database, so `sum(nexus_llm_cost_usd_total) + sum(nexus_llm_cost_revisions_usd)` reconciles
the counter with the stored costs.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from prometheus_client.utils import floatToGoString
from psycopg.rows import dict_row

log = logging.getLogger(__name__)

# /metrics reads the revisions at most this often; a revision is a rare, manual event.
REVISION_GAUGE_TTL_SECONDS = 30.0
# Label sets of the revisions gauge: as many as the models ever repriced, bounded like the
# other LLM metrics by the models' count; past it, the rest is summed into one series.
MAX_REVISION_SERIES = 2000
# How many revisions `GET /api/prices/revisions` and `reprice --history` list at most.
MAX_REVISIONS_LISTED = 1000
# Models listed by `prices --unpriced`; more than this is a misconfiguration to fix first.
MAX_UNPRICED_MODELS = 500
# Calls of a revision per page of `GET /api/prices/revisions/{id}/calls`: a revision may change
# a million calls; a page of this many is a few hundred kB of JSON, read by one index range.
MAX_REVISION_CALLS_PAGE = 1000

_REVISIONS = """
SELECT id, created_at, since, until, model_pattern, provider, include_provider_costs,
       price_sources, calls_examined, calls_changed, newly_priced, newly_unpriced,
       old_cost_usd, new_cost_usd, new_cost_usd - old_cost_usd AS net_usd
FROM price_revisions ORDER BY id DESC LIMIT %s
"""
_REVISION_MODELS = """
SELECT revision_id, provider, model, calls_changed, newly_priced, newly_unpriced, old_cost_usd,
       new_cost_usd, new_cost_usd - old_cost_usd AS net_usd
FROM price_revision_models WHERE revision_id = ANY(%s) ORDER BY revision_id, provider, model
"""
_REVISION_EXISTS = "SELECT calls_changed FROM price_revisions WHERE id = %s"
# A revision's calls after a cursor (the last row number seen), with what they are from the
# stored call (gone from api_calls, set aside as a duplicate since: NULL).
_REVISION_CALLS = """
SELECT c.id, c.trace_id, c.span_id, c."timestamp", a.provider, a.model, a.response_model,
       a.input_tokens, a.output_tokens, a.cache_read_tokens, a.cache_write_tokens,
       c.previous_cost_usd, c.previous_cost_source, c.previous_price_ref, c.cost_usd,
       c.cost_source, c.price_ref
FROM price_revision_calls c
LEFT JOIN api_calls a
       ON a.trace_id = c.trace_id AND a.span_id = c.span_id AND a."timestamp" = c."timestamp"
WHERE c.revision_id = %(revision)s AND c.id > %(after)s
ORDER BY c.id LIMIT %(limit)s
"""
_REVISION_CALLS_AFTER = (
    "SELECT count(*) FROM price_revision_calls WHERE revision_id = %s AND id > %s"
)
_UNPRICED = """
SELECT provider, model, count(*) AS calls, sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens, min("timestamp") AS first_call,
       max("timestamp") AS last_call
FROM api_calls WHERE cost_usd IS NULL AND "timestamp" >= %s
GROUP BY provider, model ORDER BY calls DESC, provider, model LIMIT %s
"""
_NET_BY_MODEL = """
SELECT provider, model, sum(new_cost_usd - old_cost_usd) AS net
FROM price_revision_models GROUP BY provider, model ORDER BY provider, model
"""


def revisions(conn: psycopg.Connection[Any], limit: int) -> list[dict[str, Any]]:
    """The latest `limit` revisions, newest first, each with its changes per model."""
    with conn.cursor(row_factory=dict_row) as cursor:
        found = cursor.execute(_REVISIONS, (limit,)).fetchall()
        models = cursor.execute(_REVISION_MODELS, ([r["id"] for r in found],)).fetchall()
    for revision in found:
        revision["models"] = [
            {k: v for k, v in m.items() if k != "revision_id"}
            for m in models
            if m["revision_id"] == revision["id"]
        ]
    return found


def revision_calls(
    conn: psycopg.Connection[Any], revision_id: int, after: int, limit: int
) -> dict[str, Any] | None:
    """A page of the calls a revision changed, in the order it recorded them, after row number
    `after` (0: from the first): `calls` (each with its previous and new cost and source, and
    where the new price comes from), `next_cursor` (the `after` of the next page; None: the
    last page) and the revision's `calls_changed`. None when there is no such revision."""
    with conn.cursor(row_factory=dict_row) as cursor:
        found = cursor.execute(_REVISION_EXISTS, (revision_id,)).fetchone()
        if found is None:
            return None
        params = {"revision": revision_id, "after": after, "limit": limit + 1}
        calls = cursor.execute(_REVISION_CALLS, params).fetchall()
    more = len(calls) > limit
    calls = calls[:limit]
    return {
        "revision_id": revision_id,
        "calls_changed": found["calls_changed"],
        "calls": calls,
        "next_cursor": calls[-1]["id"] if more else None,
    }


def revision_calls_after(conn: psycopg.Connection[Any], revision_id: int, after: int) -> int:
    """How many calls of the revision come after row number `after`."""
    row = conn.execute(_REVISION_CALLS_AFTER, (revision_id, after)).fetchone()
    return int(row[0]) if row else 0


def unpriced_models(conn: psycopg.Connection[Any], since: datetime) -> list[dict[str, Any]]:
    """Models with calls stored without a price since `since`, the most calls first: at most
    MAX_UNPRICED_MODELS, and one more when there are more (the caller says so)."""
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(_UNPRICED, (since, MAX_UNPRICED_MODELS + 1)).fetchall()


def overrides_template(models: list[dict[str, Any]], since: str) -> str:
    """A price overrides file for these models, their prices left to fill in (USD per million
    tokens): loading it unfilled fails on the first empty price, naming it."""
    lines = [
        "# Price overrides for the models stored without a price. Fill in each price (USD per",
        "# million tokens), set NEXUS_PRICES_FILE to this file, restart the exporter, and price",
        f"# the calls already stored: nexus-otel reprice --since {since} --prices-file FILE",
        "models:",
    ]
    for m in models:
        lines += [
            f"  - model: {_yaml_string(_literal_pattern(m['model']))}",
            f"    provider: {_yaml_string(m['provider'])}",
            f"    # {m['calls']} calls, {m['input_tokens']} input and {m['output_tokens']} output"
            " tokens",
            "    input_mtok: null",
            "    output_mtok: null",
        ]
    return "\n".join(lines) + "\n"


def _literal_pattern(name: str) -> str:
    """An overrides `model` is an fnmatch pattern: a name with *, ? or [ in it matches itself
    only with those characters bracketed."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _yaml_string(value: str) -> str:
    """A YAML double-quoted scalar: any model name, quotes and escapes included, stays itself."""
    import json

    return json.dumps(value)


class RevisionGauge:
    """`nexus_llm_cost_revisions_usd` for /metrics, read from the database at most every
    REVISION_GAUGE_TTL_SECONDS (in the thread /metrics renders added expositions in)."""

    def __init__(self, database_url: str, ttl: float = REVISION_GAUGE_TTL_SECONDS) -> None:
        self._url = database_url
        self._ttl = ttl
        self._lock = threading.Lock()
        self._text = _render([])
        self._read_at = float("-inf")

    def exposition(self) -> bytes:
        with self._lock:
            if time.monotonic() - self._read_at > self._ttl:
                self._read()
            return self._text

    def _read(self) -> None:
        try:
            with psycopg.connect(self._url, connect_timeout=1, autocommit=True) as conn:
                rows = conn.execute(_NET_BY_MODEL).fetchall()
        except psycopg.Error as exc:  # keeps the last values; tries again after the ttl
            log.warning("reading price revisions for /metrics failed: %s", exc)
        else:
            self._text = _render(rows)
        self._read_at = time.monotonic()


def _render(rows: list[tuple[Any, ...]]) -> bytes:
    name = "nexus_llm_cost_revisions_usd"
    out = [
        f"# HELP {name} Net cost all price revisions added to stored calls (new minus old) in"
        " US dollars; add it to nexus_llm_cost_usd_total to reconcile with the database.\n",
        f"# TYPE {name} gauge\n",
    ]
    rest = Decimal(0)
    for index, (provider, model, net) in enumerate(rows):
        if index >= MAX_REVISION_SERIES:
            rest += net
            continue
        labels = (
            f'gen_ai_provider_name="{_escape(provider)}",gen_ai_request_model="{_escape(model)}"'
        )
        out.append(f"{name}{{{labels}}} {floatToGoString(float(net))}\n")
    if rest:
        out.append(f'{name}{{otel_metric_overflow="true"}} {floatToGoString(float(rest))}\n')
    return "".join(out).encode()


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
