"""Content ROI: register an item by correlation id, post its engagement, rank by value."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from psycopg.rows import dict_row
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from exporter.api.deps import Conn, Now

router = APIRouter(tags=["content"])
CorrelationId = Annotated[str, Path(min_length=1, max_length=200)]
# A post seen a hundred times by every person on earth is 10^12: no count is larger. Four of them
# summed (engagement) stay far inside bigint; the views sum them in numeric anyway.
MAX_ENGAGEMENT_COUNT = 10**12
Count = Annotated[int, Field(ge=0, le=MAX_ENGAGEMENT_COUNT)]
Sort = Literal["engagement_per_dollar", "cost_per_engagement", "engagement", "cost"]


class CarouselCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    correlation_id: str = Field(min_length=1, max_length=200, description="nexus.correlation_id")
    title: str | None = Field(default=None, max_length=1000)
    platform: str = Field(default="instagram", min_length=1, max_length=100)
    # An offset is required (422 without one): a naive time would be read in the database
    # server's own time zone, which the client cannot see.
    published_at: AwareDatetime | None = None


class EngagementCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    likes: Count = 0
    comments: Count = 0
    shares: Count = 0
    saves: Count = 0
    reach: Count = 0
    impressions: Count = 0
    measured_at: AwareDatetime | None = Field(
        default=None, description="with its time zone offset; default: now"
    )


class CarouselPublic(BaseModel):
    correlation_id: str
    title: str | None
    platform: str
    published_at: datetime | None
    likes: int
    comments: int
    shares: int
    saves: int
    reach: int
    impressions: int
    measured_at: datetime | None


class CarouselRoiPublic(CarouselPublic):
    engagement: int = Field(description="likes + comments + shares + saves")
    llm_calls: int
    unpriced_calls: int = Field(description="calls of unknown price, not in the cost")
    total_tokens: int
    generation_cost_usd: float | None
    engagement_per_dollar: float | None
    cost_per_engagement_usd: float | None


_CAROUSEL = (
    "SELECT correlation_id, title, platform, published_at, likes, comments, shares, saves, "
    "reach, impressions, measured_at FROM carousel_performance WHERE correlation_id = %s"
)
_ROI = (
    "SELECT correlation_id, title, platform, published_at, likes, comments, shares, saves, "
    "reach, impressions, measured_at, engagement, llm_calls, unpriced_calls, total_tokens, "
    "generation_cost_usd::float8 AS generation_cost_usd, "
    "engagement_per_dollar::float8 AS engagement_per_dollar, "
    "cost_per_engagement_usd::float8 AS cost_per_engagement_usd FROM v_carousel_roi"
)
_ORDER = {
    "engagement_per_dollar": "engagement_per_dollar DESC NULLS LAST, correlation_id",
    "cost_per_engagement": "cost_per_engagement_usd ASC NULLS LAST, correlation_id",
    "engagement": "engagement DESC, correlation_id",
    "cost": "generation_cost_usd DESC NULLS LAST, correlation_id",
}


def _fetch(conn: Conn, correlation_id: str) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(_CAROUSEL, (correlation_id,)).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no content item {correlation_id!r}")
    return row


@router.post("/api/carousels", status_code=status.HTTP_201_CREATED, response_model=CarouselPublic)
def create_carousel(body: CarouselCreate, conn: Conn) -> dict[str, Any]:
    row = conn.execute(
        "INSERT INTO carousel_performance (correlation_id, title, platform, published_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
        (body.correlation_id, body.title, body.platform, body.published_at),
    ).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"{body.correlation_id!r} already exists")
    return _fetch(conn, body.correlation_id)


@router.get("/api/carousels/{correlation_id}", response_model=CarouselPublic)
def get_carousel(correlation_id: CorrelationId, conn: Conn) -> dict[str, Any]:
    return _fetch(conn, correlation_id)


@router.post(
    "/api/carousels/{correlation_id}/engagement",
    status_code=status.HTTP_201_CREATED,
    response_model=CarouselPublic,
)
def post_engagement(
    correlation_id: CorrelationId, body: EngagementCreate, conn: Conn, now: Now
) -> dict[str, Any]:
    """Records a measurement; the item shows the latest one by measured_at."""
    _fetch(conn, correlation_id)
    values = body.model_dump()
    values["measured_at"] = values["measured_at"] or now
    counts = ("likes", "comments", "shares", "saves", "reach", "impressions")
    with conn.transaction():
        conn.execute(
            "INSERT INTO content_engagement (correlation_id, measured_at, likes, comments, shares,"
            " saves, reach, impressions) VALUES (%(id)s, %(measured_at)s, %(likes)s, %(comments)s,"
            " %(shares)s, %(saves)s, %(reach)s, %(impressions)s) ON CONFLICT (correlation_id,"
            " measured_at) DO UPDATE SET likes = EXCLUDED.likes, comments = EXCLUDED.comments,"
            " shares = EXCLUDED.shares, saves = EXCLUDED.saves, reach = EXCLUDED.reach,"
            " impressions = EXCLUDED.impressions",
            {**values, "id": correlation_id},
        )
        assignments = ", ".join(f"{c} = %({c})s" for c in counts)
        conn.execute(
            f"UPDATE carousel_performance SET {assignments}, measured_at = %(measured_at)s,"  # type: ignore[arg-type]
            " updated_at = now() WHERE correlation_id = %(id)s"
            " AND (measured_at IS NULL OR measured_at <= %(measured_at)s)",
            {**values, "id": correlation_id},
        )
    return _fetch(conn, correlation_id)


@router.get("/api/analytics/carousel-performance", response_model=list[CarouselRoiPublic])
def carousel_performance(
    conn: Conn,
    sort: Sort = "engagement_per_dollar",
    platform: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Content ranked by engagement per dollar (default) or cost per engagement (cheapest
    first). Generation cost is the sum of the item's priced LLM calls."""
    where = " WHERE platform = %(platform)s" if platform else ""
    statement = f"{_ROI}{where} ORDER BY {_ORDER[sort]} LIMIT %(limit)s"
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(statement, {"platform": platform, "limit": limit}).fetchall()  # type: ignore[arg-type]
