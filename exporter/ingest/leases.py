"""Settling budget leases as calls are stored (what a lease is: `exporter.usage.leases`).

A guarded call's span says which lease paid for it and the estimate it took from the lease;
when its row is written, that estimate leaves what the lease holds, in the same transaction,
so a budget's stored spend and its reservations move together and nothing counts twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg

# The span attributes a guarded call carries: its lease, and the estimate it took from it.
LEASE_ID_ATTRIBUTE = "nexus.budget.lease_id"
RESERVED_ATTRIBUTE = "nexus.budget.reserved_usd"
# No lease or settlement is larger: a value past it is no amount an app took.
MAX_LEASE_USD = Decimal("1e9")


def settlements(attribute_pairs: Iterable[tuple[Any, Any]]) -> dict[uuid.UUID, Decimal]:
    """What stored calls took out of each lease, from their (lease id, reserved) attributes.
    A value that is no lease id or no amount settles nothing (its lease expires in time)."""
    totals: dict[uuid.UUID, Decimal] = {}
    for lease, reserved in attribute_pairs:
        try:
            lease_id = uuid.UUID(str(lease))
            amount = Decimal(str(reserved))
        except (ValueError, InvalidOperation):
            continue
        if amount.is_finite() and 0 < amount <= MAX_LEASE_USD:
            totals[lease_id] = totals.get(lease_id, Decimal(0)) + amount
    return totals


_SETTLE = (
    "UPDATE budget_leases l SET settled_usd = l.settled_usd + s.amount"
    " FROM unnest(%s::uuid[], %s::numeric[]) s(id, amount) WHERE l.id = s.id"
)


async def settle(conn: psycopg.AsyncConnection[Any], totals: dict[uuid.UUID, Decimal]) -> None:
    """Moves what stored calls took from their leases out of what the leases hold; in the
    transaction that stores the calls, so spend and reservation move together."""
    if totals:
        ids = sorted(totals)  # one lock order for every writer
        await conn.execute(_SETTLE, (ids, [totals[i] for i in ids]))
