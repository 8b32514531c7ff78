"""Dependencies shared by the routers: a database connection, the clock, settings, filters."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Annotated, Any

import psycopg
from fastapi import Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from psycopg_pool import ConnectionPool

from exporter.core.settings import Settings
from exporter.usage.totals import Scope

MAX_RANGE = timedelta(days=3660)


def unprocessable(location: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 in FastAPI's own validation-error shape, as the OpenAPI schema promises."""
    return RequestValidationError([{"loc": location, "msg": message, "type": "value_error"}])


def _pool(request: Request) -> ConnectionPool[Any]:
    pool: ConnectionPool[Any] = request.app.state.pool
    return pool


def get_conn(request: Request) -> Iterator[psycopg.Connection[Any]]:
    try:
        with _pool(request).connection(timeout=10) as conn:
            yield conn
    except psycopg.OperationalError as exc:
        raise HTTPException(503, f"database unavailable: {exc}") from None


def get_now(request: Request) -> datetime:
    clock: Callable[[], datetime] = request.app.state.clock
    return clock()


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


Conn = Annotated[psycopg.Connection[Any], Depends(get_conn)]
Now = Annotated[datetime, Depends(get_now)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_scope(
    service_name: Annotated[str | None, Query(max_length=200)] = None,
    provider: Annotated[str | None, Query(max_length=200)] = None,
    model: Annotated[str | None, Query(max_length=200)] = None,
    operation: Annotated[str | None, Query(max_length=200)] = None,
) -> Scope:
    return Scope(service_name, provider, model, operation)


ScopeDep = Annotated[Scope, Depends(get_scope)]


class TimeRange:
    def __init__(self, start: datetime, end: datetime) -> None:
        self.start, self.end = start, end


def get_range(
    now: Now,
    start: Annotated[
        datetime | None, Query(description="range start (ISO 8601; default: 30 days ago)")
    ] = None,
    end: Annotated[datetime | None, Query(description="range end (ISO 8601; default: now)")] = None,
) -> TimeRange:
    end = aware_moment(end, "end") if end else now
    start = aware_moment(start, "start") if start else end - timedelta(days=30)
    if start >= end:
        raise unprocessable(("query", "start"), "start must be before end")
    if end - start > MAX_RANGE:
        raise unprocessable(("query", "start"), "the range may span at most ten years")
    return TimeRange(start, end)


def aware_moment(moment: datetime, name: str) -> datetime:
    """A query's instant, refused (422) without an offset: the database server's own time zone
    would give it a meaning the caller cannot see."""
    if moment.tzinfo is None:
        raise unprocessable(
            ("query", name), f"{name} needs a time zone offset (e.g. 2026-01-01T00:00:00Z)"
        )
    if not 1970 <= moment.year <= 2200:
        raise unprocessable(("query", name), f"{name} must lie between the years 1970 and 2200")
    return moment


RangeDep = Annotated[TimeRange, Depends(get_range)]
