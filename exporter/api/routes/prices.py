"""GET /api/prices/revisions: the record of every repricing (`nexus-otel reprice`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, Field

from exporter.api.deps import Conn
from exporter.usage.revisions import MAX_REVISIONS_LISTED, revisions

router = APIRouter(tags=["prices"])


class RevisionModelPublic(BaseModel):
    """A revision's changed calls of one provider and (request) model."""

    provider: str
    model: str
    calls_changed: int
    newly_priced: int = Field(description="calls unpriced before, priced now")
    newly_unpriced: int = Field(description="calls priced before, with no known price now")
    old_cost_usd: float
    new_cost_usd: float
    net_usd: float = Field(description="new minus old")


class RevisionPublic(BaseModel):
    id: int
    created_at: datetime
    since: datetime = Field(description="calls from this time (inclusive)")
    until: datetime = Field(description="calls before this time")
    model_pattern: str | None = Field(description="the model filter; null: every model")
    provider: str | None = Field(description="the provider filter; null: every provider")
    include_provider_costs: bool = Field(description="provider-reported costs repriced too")
    price_sources: dict[str, Any] = Field(
        description="the genai-prices version and data, and the overrides file (its sha256"
        " and entries), that priced the revision"
    )
    calls_examined: int
    calls_changed: int
    newly_priced: int
    newly_unpriced: int
    old_cost_usd: float = Field(description="the changed calls' total before")
    new_cost_usd: float = Field(description="the changed calls' total after")
    net_usd: float = Field(description="new minus old")
    models: list[RevisionModelPublic]


@router.get(
    "/api/prices/revisions",
    response_model=list[RevisionPublic],
    status_code=status.HTTP_200_OK,
)
def list_revisions(
    conn: Conn,
    limit: Annotated[
        int, Query(ge=1, le=MAX_REVISIONS_LISTED, description="how many, newest first")
    ] = 50,
) -> list[dict[str, Any]]:
    """Every repricing that changed stored costs, newest first: when, the range and filters,
    the price sources, how many calls changed and the totals before and after, per model."""
    return revisions(conn, limit)
