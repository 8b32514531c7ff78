"""Budgets: create, list, update, delete, and their status in the current period."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, HTTPException, Path, status
from psycopg.rows import dict_row
from pydantic import BaseModel, ConfigDict, Field, field_validator

from exporter.api.deps import Conn, Now, SettingsDep, unprocessable
from exporter.api.routes import budgets_leases
from exporter.core.db import BIGINT_MAX
from exporter.core.zones import ZoneUnknownToDatabase, check_zone, check_zone_in_database
from exporter.usage import budgets
from exporter.usage.periods import Period

router = APIRouter(tags=["budgets"])
BudgetId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]
Money = Annotated[Decimal, Field(gt=0, le=Decimal("1e12"), max_digits=20, decimal_places=6)]
Threshold = Annotated[Decimal, Field(gt=0, le=100, max_digits=5, decimal_places=2)]
ScopeValue = Annotated[str | None, Field(default=None, min_length=1, max_length=200)]


def _check_zone(value: str | None) -> str | None:
    return None if value is None else check_zone(value)


class BudgetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    period: Period
    amount_usd: Money
    warning_threshold_pct: Threshold = Decimal(80)
    timezone: str | None = Field(default=None, description="IANA zone; default NEXUS_TIMEZONE")
    service_name: ScopeValue = None
    provider: ScopeValue = None
    model: ScopeValue = None
    operation: ScopeValue = None
    enabled: bool = True
    enforce: bool = Field(default=True, description="refuse leases past the amount")

    _zone = field_validator("timezone")(_check_zone)


class BudgetUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=200)
    period: Period | None = None
    amount_usd: Money | None = None
    warning_threshold_pct: Threshold | None = None
    timezone: str | None = None
    service_name: ScopeValue = None
    provider: ScopeValue = None
    model: ScopeValue = None
    operation: ScopeValue = None
    enabled: bool | None = None
    enforce: bool | None = None

    _zone = field_validator("timezone")(_check_zone)


class BudgetPublic(BaseModel):
    id: int
    name: str
    period: Period
    amount_usd: float
    warning_threshold_pct: float
    timezone: str
    service_name: str | None
    provider: str | None
    model: str | None
    operation: str | None
    enabled: bool
    enforce: bool
    created_at: datetime
    updated_at: datetime


class BudgetStatusPublic(BudgetPublic):
    period_start: datetime
    period_end: datetime
    spend_usd: float
    calls: int
    unpriced_calls: int = Field(description="calls of unknown price, not counted in spend")
    reserved_usd: float = Field(description="what unexpired leases still hold, beside spend")
    remaining_usd: float
    usage_pct: float
    state: budgets.State
    forecast_usd: float = Field(
        description="spend at period end if the pace of the forecast window goes on"
    )
    forecast_method: Literal["last_hour", "period_so_far"] = Field(
        description="the forecast window: the last hour, or the period so far when it began"
        " less than an hour ago"
    )
    forecast_window_start: datetime = Field(description="where the forecast window begins")
    projected_exhaustion_at: datetime | None = Field(
        description="when spend reaches the amount at that pace (None: not this period, or"
        " already reached: see exceeded_at)"
    )
    exceeded_at: datetime | None = Field(
        description="when the period's spend reached the amount (None: not exceeded)"
    )


# API field name -> cost_budgets column
_COLUMNS = {"period": "period_type", "amount_usd": "budget_usd"}


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "period": row["period_type"], "amount_usd": row["budget_usd"]}


def _fetch(conn: psycopg.Connection[Any], budget_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=dict_row) as cursor:
        row = cursor.execute(
            f"SELECT {budgets.BUDGET_COLUMNS} FROM cost_budgets WHERE id = %s",  # type: ignore[arg-type]
            (budget_id,),
        ).fetchone()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no budget with id {budget_id}")
    return row


def _known_to_database(conn: psycopg.Connection[Any], zone: str | None) -> None:
    """Budget periods follow the database's zone rules, which may lack a newer zone."""
    try:
        if zone is not None:
            check_zone_in_database(conn, zone)
    except ZoneUnknownToDatabase as exc:
        raise unprocessable(("body", "timezone"), f"Value error, {exc}") from None


def _write(conn: psycopg.Connection[Any], statement: str, params: Any) -> int:
    try:
        with conn.transaction():
            row = conn.execute(statement, params).fetchone()  # type: ignore[arg-type]
    except psycopg.errors.UniqueViolation:
        raise HTTPException(status.HTTP_409_CONFLICT, "a budget with this name exists") from None
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such budget")
    return int(row[0])


@router.post("/api/budgets", status_code=status.HTTP_201_CREATED, response_model=BudgetPublic)
def create_budget(body: BudgetCreate, conn: Conn, settings: SettingsDep) -> dict[str, Any]:
    values = body.model_dump()
    values["timezone"] = values["timezone"] or settings.timezone
    _known_to_database(conn, values["timezone"])
    columns = [_COLUMNS.get(k, k) for k in values]
    statement = (
        f"INSERT INTO cost_budgets ({', '.join(columns)})"
        f" VALUES ({', '.join(['%s'] * len(columns))}) RETURNING id"
    )
    return _public(_fetch(conn, _write(conn, statement, list(values.values()))))


@router.get("/api/budgets", response_model=list[BudgetPublic])
def list_budgets(conn: Conn) -> list[dict[str, Any]]:
    return [_public(row) for row in budgets.list_budgets(conn)]


@router.get("/api/budgets/{budget_id}", response_model=BudgetPublic)
def get_budget(budget_id: BudgetId, conn: Conn) -> dict[str, Any]:
    return _public(_fetch(conn, budget_id))


@router.patch("/api/budgets/{budget_id}", response_model=BudgetPublic)
def update_budget(budget_id: BudgetId, body: BudgetUpdate, conn: Conn) -> dict[str, Any]:
    """Changes only the fields given; a scope field given as null widens the scope."""
    values = body.model_dump(exclude_unset=True)
    for required in (
        "name",
        "period",
        "amount_usd",
        "warning_threshold_pct",
        "timezone",
        "enabled",
        "enforce",
    ):
        if required in values and values[required] is None:
            raise unprocessable(("body", required), f"{required} cannot be null")
    if not values:
        return _public(_fetch(conn, budget_id))
    _known_to_database(conn, values.get("timezone"))
    assignments = ", ".join(f"{_COLUMNS.get(k, k)} = %s" for k in values)
    statement = (
        f"UPDATE cost_budgets SET {assignments}, updated_at = now() WHERE id = %s RETURNING id"
    )
    return _public(_fetch(conn, _write(conn, statement, [*values.values(), budget_id])))


@router.delete("/api/budgets/{budget_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_budget(budget_id: BudgetId, conn: Conn) -> None:
    _write(conn, "DELETE FROM cost_budgets WHERE id = %s RETURNING id", (budget_id,))


@router.get("/api/budgets/{budget_id}/status", response_model=BudgetStatusPublic)
def budget_status(budget_id: BudgetId, conn: Conn, now: Now) -> dict[str, Any]:
    found = budgets.status(conn, budget_id, now)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no budget with id {budget_id}")
    return found


@router.get("/api/budget/status", response_model=list[BudgetStatusPublic])
def all_budget_status(conn: Conn, now: Now) -> list[dict[str, Any]]:
    """Every enabled budget in its current period."""
    return budgets.statuses(conn, now)


router.include_router(budgets_leases.router)
