"""Budget leases: allowances an app takes before its calls spend, and gives back unused."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from exporter.api.deps import Conn
from exporter.ingest.leases import MAX_LEASE_USD
from exporter.usage import leases

router = APIRouter(tags=["budgets"])
LeaseMoney = Annotated[Decimal, Field(ge=0, le=MAX_LEASE_USD, max_digits=30, decimal_places=12)]
ScopeName = Annotated[str, Field(min_length=1, max_length=200)]


class LeaseRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    service: ScopeName
    provider: ScopeName
    model: ScopeName
    operation: str = Field(default="", max_length=200, description="'' for none, as stored")
    amount_usd: LeaseMoney = Field(description="the allowance wanted")
    min_amount_usd: LeaseMoney = Field(description="less than this is no use: refuse instead")
    ttl_seconds: int = Field(
        default=leases.DEFAULT_LEASE_SECONDS, ge=1, le=leases.MAX_LEASE_SECONDS
    )
    return_lease_id: uuid.UUID | None = Field(
        default=None, description="a lease to give back first, in the same transaction"
    )
    return_unused_usd: LeaseMoney = Decimal(0)

    @model_validator(mode="after")
    def _minimum_within_amount(self) -> LeaseRequest:
        # A validation error like every other 422 of the API (FastAPI's `detail` list).
        if self.min_amount_usd > self.amount_usd:
            raise ValueError("min_amount_usd is more than amount_usd")
        return self


class LeaseGranted(BaseModel):
    lease_id: uuid.UUID
    granted_usd: Decimal
    expires_at: datetime
    budget: str | None = Field(description="the tightest enforced budget; None when none matches")


class LeaseReturn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    unused_usd: LeaseMoney


def _refusal(grant: leases.Grant) -> JSONResponse:
    assert grant.amount_usd is not None and grant.spend_usd is not None
    assert grant.reserved_usd is not None
    return JSONResponse(
        status_code=status.HTTP_409_CONFLICT,
        content={
            "detail": f"budget {grant.budget_name!r} has too little left for this lease",
            "budget": grant.budget_name,
            "budget_id": grant.budget_id,
            # Money as JSON numbers, as every other answer of the API writes it.
            "spend_usd": float(grant.spend_usd),
            "reserved_usd": float(grant.reserved_usd),
            "amount_usd": float(grant.amount_usd),
        },
    )


@router.post(
    "/api/budget/leases",
    status_code=status.HTTP_201_CREATED,
    response_model=LeaseGranted,
    responses={409: {"description": "a matching enforced budget has too little left"}},
)
def take_lease(body: LeaseRequest, conn: Conn) -> Any:
    """Grants up to `amount_usd` (at least `min_amount_usd`) from every enabled budget whose scope
    matches, or answers 409 naming the tightest enforced budget, its spend, reserved amount and
    limit. The lease counts against those budgets until `ttl_seconds` pass. `return_lease_id`
    gives back `return_unused_usd` of an earlier lease first (a refill in one round trip)."""
    scope = (body.service, body.provider, body.model, body.operation)
    returning = (
        None if body.return_lease_id is None else (body.return_lease_id, body.return_unused_usd)
    )
    grant = leases.take(
        conn, scope, body.amount_usd, body.min_amount_usd, body.ttl_seconds, returning
    )
    if grant.lease_id is None:
        return _refusal(grant)
    return {
        "lease_id": grant.lease_id,
        "granted_usd": grant.granted_usd,
        "expires_at": grant.expires_at,
        "budget": grant.budget_name,
    }


@router.post("/api/budget/leases/{lease_id}/return", status_code=status.HTTP_204_NO_CONTENT)
def return_lease(lease_id: uuid.UUID, body: LeaseReturn, conn: Conn) -> None:
    """Gives back what the app did not use of a lease (at most what it still holds)."""
    if not leases.give_back(conn, lease_id, body.unused_usd):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no lease with id {lease_id}")
