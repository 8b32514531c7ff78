"""The built-in dashboard: its page at `/`, its files under `/page/`, and the two read-only
series it needs beside the other routes' answers (hourly usage per provider over a range, and
the services, providers and operations its filters offer)."""

from __future__ import annotations

from datetime import datetime
from importlib import resources
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, Field

from exporter.api.deps import Conn, RangeDep, ScopeDep
from exporter.usage.totals import Scope, usage

router = APIRouter()
PAGE_FILES = resources.files("exporter.api") / "page"
# What each served file is; the page's files are these and no others (no path from a request
# ever reaches the file system).
MEDIA_TYPES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "vendor/chart.umd.min.js": "text/javascript; charset=utf-8",
    "vendor/chart.js.LICENSE.md": "text/plain; charset=utf-8",
}
# The page runs only its own files: no inline script or style, no other origin, no framing.
# `connect-src 'self'` covers the same origin's ws:// and wss:// (CSP level 3).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The page is small and changes with each release: always revalidated, never stale.
    "Cache-Control": "no-cache",
}
AUTH_MARKER = "{{auth}}"


def _read(name: str) -> bytes:
    return (PAGE_FILES / name).read_bytes()


@router.get("/", include_in_schema=False)
def dashboard_page(request: Request) -> HTMLResponse:
    """The page says whether the API wants a token, so it asks for one before any request."""
    auth = "bearer" if request.app.state.settings.api_token else "none"
    html = _read("index.html").decode().replace(AUTH_MARKER, auth)
    return HTMLResponse(html, headers=PAGE_HEADERS)


@router.get("/page/{name:path}", include_in_schema=False)
def dashboard_file(name: str) -> Response:
    media_type = MEDIA_TYPES.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no dashboard file {name!r}")
    return Response(_read(name), media_type=media_type, headers=PAGE_HEADERS)


class HourlyUsagePublic(BaseModel):
    hour: datetime = Field(description="start of the UTC hour")
    provider: str
    calls: int
    total_tokens: int
    cost_usd: float = Field(description="sum over priced calls")
    unpriced_calls: int


class HourlyUsageResponse(BaseModel):
    start: datetime
    end: datetime
    hours: list[HourlyUsagePublic]


class FilterValuesResponse(BaseModel):
    start: datetime
    end: datetime
    services: list[str]
    providers: list[str]
    operations: list[str]


@router.get("/api/dashboard/hourly", response_model=HourlyUsageResponse, tags=["dashboard"])
def hourly_usage(conn: Conn, time_range: RangeDep, scope: ScopeDep) -> dict[str, Any]:
    """Calls, tokens and cost per UTC hour and provider over the range (a partial hour at an
    edge counts only its calls inside the range)."""
    rows = usage(conn, time_range.start, time_range.end, scope, ("hour", "provider"))
    rows.sort(key=lambda row: (row["hour"], row["provider"]))
    hours = [{**row, "cost_usd": float(row["cost_usd"])} for row in rows]
    return {**time_range.__dict__, "hours": hours}


@router.get("/api/dashboard/filters", response_model=FilterValuesResponse, tags=["dashboard"])
def filter_values(conn: Conn, time_range: RangeDep) -> dict[str, Any]:
    """The services, providers and operations that have calls in the range: what the
    dashboard's filters offer."""

    def values(dimension: str) -> list[str]:
        rows = usage(conn, time_range.start, time_range.end, Scope(), (dimension,))
        return sorted(row[dimension] for row in rows)

    return {
        **time_range.__dict__,
        "services": values("service_name"),
        "providers": values("provider"),
        "operations": values("operation"),
    }
