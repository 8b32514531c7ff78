"""Budget leases: allowances an app takes from the budgets matching its calls before it spends.

A lease is taken atomically in PostgreSQL (`nexus_budget_lease`, migration 010): the enforced
budgets whose scope matches are locked, and the lease is granted only from what they have left
(amount - stored spend - what unexpired leases still hold). The app spends it locally, call by
call, and each call's stored row settles what the call took out of it (`exporter.ingest.leases`,
in the transaction that stores the row). What the app does not use it returns; what a killed
app held stops counting when the lease expires.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import dict_row

# A lease counts this long unless the taker asks otherwise: long enough for a call that used it
# to end and its span to be stored (apps stop drawing on a lease well before), short enough that
# a killed app frees its budget within minutes.
DEFAULT_LEASE_SECONDS = 120
MAX_LEASE_SECONDS = 3600  # an hour: past it, a crashed app would hold a budget too long
# A lease takes at most this share of the tightest budget's headroom (but always the minimum
# asked for): near the limit, allowances shrink, so no taker holds back what another needs.
LEASE_SHARE = Decimal("0.25")
# Expired leases are kept this long (a span arriving late still finds its lease), then deleted.
EXPIRED_LEASES_KEPT = timedelta(hours=1)


@dataclass(frozen=True)
class Grant:
    """What a lease request got: a lease (lease_id set), or a refusal naming the tightest
    enforced budget. The budget fields are None when no enforced budget matches the scope."""

    lease_id: uuid.UUID | None
    granted_usd: Decimal
    expires_at: datetime | None
    budget_id: int | None
    budget_name: str | None
    spend_usd: Decimal | None
    reserved_usd: Decimal | None
    amount_usd: Decimal | None


def take(
    conn: psycopg.Connection[Any],
    scope: tuple[str, str, str, str],
    amount: Decimal,
    min_amount: Decimal,
    ttl_seconds: int,
    returning: tuple[uuid.UUID, Decimal] | None = None,
) -> Grant:
    """A lease for `scope` (service, provider, model, operation) of up to `amount`, at least
    `min_amount`, or a refusal; committed before it returns. `returning` (a lease id and an
    amount) is given back first, in the same transaction."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cursor:
        if returning is not None:
            _give_back(conn, *returning)
        row = cursor.execute(
            "SELECT * FROM nexus_budget_lease(%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                *scope,
                amount,
                min_amount,
                timedelta(seconds=ttl_seconds),
                LEASE_SHARE,
                EXPIRED_LEASES_KEPT,
            ),
        ).fetchone()
    assert row is not None  # the function always answers one row
    return Grant(
        row["lease_id"],
        row["granted_usd"],
        row["expires_at"],
        row["budget_id"],
        row["budget_name"],
        row["spend_usd"],
        row["reserved_usd"],
        row["amount_usd"],
    )


def give_back(conn: psycopg.Connection[Any], lease_id: uuid.UUID, unused: Decimal) -> bool:
    """Returns `unused` of a lease (what it still holds, at most); False if there is no such
    lease."""
    with conn.transaction():
        return _give_back(conn, lease_id, unused)


def _give_back(conn: psycopg.Connection[Any], lease_id: uuid.UUID, unused: Decimal) -> bool:
    row = conn.execute(
        "UPDATE budget_leases SET returned_usd = returned_usd"
        " + least(%s, greatest(granted_usd - returned_usd - settled_usd, 0))"
        " WHERE id = %s RETURNING id",
        (unused, lease_id),
    ).fetchone()
    return row is not None
