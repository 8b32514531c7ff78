"""GET /api/prices/revisions: the record of every repricing (`nexus-otel reprice`), and
GET /api/prices/revisions/{id}/calls: the calls one revision changed, page by page."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, Field

from exporter.api.deps import Conn
from exporter.core.db import BIGINT_MAX
from exporter.usage.revisions import (
    MAX_REVISION_CALLS_PAGE,
    MAX_REVISIONS_LISTED,
    revision_calls,
    revisions,
)

router = APIRouter(tags=["prices"])

RevisionId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


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


class RevisionCallPublic(BaseModel):
    """One call a revision changed: its cost and source before and after."""

    trace_id: str
    span_id: str
    timestamp: datetime = Field(description="the call's start time")
    provider: str | None = Field(description="null: the call is no longer stored")
    model: str | None
    response_model: str | None
    input_tokens: int | None
    output_tokens: int | None
    cache_read_tokens: int | None
    cache_write_tokens: int | None
    previous_cost_usd: float | None = Field(description="null: unpriced before")
    previous_cost_source: str | None
    previous_price_ref: str | None = Field(description="where the previous price came from")
    cost_usd: float | None = Field(description="null: unpriced since")
    cost_source: str | None = Field(description="provider | override | genai-prices | span")
    price_ref: str | None = Field(
        description="where the new price comes from: the genai-prices version and data, or"
        " the overrides file entry and its valid_from"
    )


class RevisionCallsPublic(BaseModel):
    revision_id: int
    calls_changed: int = Field(description="the calls the revision changed, as recorded")
    calls: list[RevisionCallPublic] = Field(description="in the order the revision recorded them")
    next_cursor: int | None = Field(
        description="pass as `cursor` for the next page; null: this is the last page"
    )


@router.get(
    "/api/prices/revisions/{revision_id}/calls",
    response_model=RevisionCallsPublic,
    status_code=status.HTTP_200_OK,
)
def list_revision_calls(
    revision_id: RevisionId,
    conn: Conn,
    limit: Annotated[
        int, Query(ge=1, le=MAX_REVISION_CALLS_PAGE, description="calls per page")
    ] = 100,
    cursor: Annotated[
        int, Query(ge=0, le=BIGINT_MAX, description="the previous page's next_cursor; 0: first")
    ] = 0,
) -> dict[str, Any]:
    """The calls one revision changed, each with its previous and new cost and source and
    where the new price comes from: how a revision's totals came about, call by call."""
    found = revision_calls(conn, revision_id, cursor, limit)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no price revision with id {revision_id}")
    return found
