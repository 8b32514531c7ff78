"""The API application: routers, database pool, live feed, auth, CORS, error handling."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from psycopg_pool import ConnectionPool
from pydantic import BaseModel
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from exporter.api.live import Broadcaster
from exporter.api.live import router as live_router
from exporter.api.routes import alerts as routes_alerts
from exporter.api.routes import analytics as routes_analytics
from exporter.api.routes import budgets as routes_budgets
from exporter.api.routes import content as routes_content
from exporter.api.routes import dashboard as routes_dashboard
from exporter.api.routes import page as routes_page
from exporter.api.routes import prices as routes_prices
from exporter.api.routes import reports as routes_reports
from exporter.core.security import BearerAuth
from exporter.core.settings import Settings
from exporter.usage.budgets import ensure_default_budget

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


WEBHOOK_PATH = "/api/alerts/webhook"


class BodyLimit:
    """Refuses a request body over its bound with 413 and a message: at once when the
    Content-Length says so, else as soon as the bytes received pass it, so no more than the
    bound is ever read into memory. Alertmanager's webhook has its own (larger) bound."""

    def __init__(self, app: ASGIApp, default: int, by_path: dict[str, int]) -> None:
        self.app = app
        self.default = default
        self.by_path = by_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.by_path.get(scope["path"], self.default)
        message = f"request body exceeds the {limit}-byte limit of {scope['path']}"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await JSONResponse({"detail": message}, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            event = await receive()
            if event["type"] == "http.request":
                received += len(event.get("body", b""))
                if received > limit:  # the framework answers this with the 413
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, message)
            return event

        await self.app(scope, counted_receive, send)


class HealthPublic(BaseModel):
    status: str
    database: str


def create_api_app(settings: Settings, database_url: str, clock: Clock = utc_now) -> FastAPI:
    """The FastAPI service. `clock` says what "now" is (tests pin it)."""
    pool: ConnectionPool[Any] = ConnectionPool(
        database_url, min_size=1, max_size=8, open=False, kwargs={"autocommit": True}
    )
    broadcaster = Broadcaster(database_url)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool.open(wait=False)
        _create_default_budget(pool, settings)
        await broadcaster.start()
        try:
            yield
        finally:
            await broadcaster.stop()
            pool.close()

    app = FastAPI(
        title="nexus-otel API",
        summary="LLM spend: budgets, analytics, content ROI, alert history, reports, live calls",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings, app.state.pool, app.state.clock = settings, pool, clock
    app.state.broadcaster = broadcaster
    for module in (
        routes_dashboard,
        routes_budgets,
        routes_analytics,
        routes_content,
        routes_alerts,
        routes_reports,
        routes_prices,
        routes_page,
    ):
        app.include_router(module.router)
    app.include_router(live_router)
    _add_health(app, pool)
    _add_error_handlers(app)
    app.add_middleware(
        BodyLimit,
        default=settings.api_max_body_bytes,
        by_path={WEBHOOK_PATH: settings.alert_webhook_max_body_bytes},
    )
    if settings.api_token:
        app.add_middleware(BearerAuth, token=settings.api_token)
    origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["*"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app


def _create_default_budget(pool: ConnectionPool[Any], settings: Settings) -> None:
    if settings.daily_budget_usd is None:
        return
    try:
        with pool.connection(timeout=10) as conn:
            ensure_default_budget(
                conn,
                settings.daily_budget_usd,
                settings.budget_warning_threshold,
                settings.timezone,
            )
    except psycopg.Error as exc:
        log.warning("creating the default daily budget failed: %s", exc)


def _add_health(app: FastAPI, pool: ConnectionPool[Any]) -> None:
    @app.get("/health", tags=["health"], response_model=HealthPublic)
    def health() -> JSONResponse:
        """Unauthenticated: 200 when the database answers, else 503."""
        try:
            with pool.connection(timeout=2) as conn:
                conn.execute("SELECT 1")
        except (psycopg.Error, TimeoutError) as exc:
            log.warning("health check: %s", exc)
            return JSONResponse({"status": "degraded", "database": "down"}, status_code=503)
        return JSONResponse({"status": "ok", "database": "up"})


def _json_safe(value: Any) -> Any:
    """`value` with the floats JSON cannot carry (NaN, Infinity) written as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # "NaN", "Infinity", "-Infinity"
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, but a bare NaN or Infinity (which Python's JSON parser accepts) is
        echoed back as text: as a number it cannot be encoded, and the answer was a 500."""
        errors = _json_safe(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(psycopg.DataError)
    async def bad_value(request: Request, exc: psycopg.DataError) -> JSONResponse:
        message = str(exc).splitlines()[0] if str(exc) else "invalid value"
        error = {"loc": ["request"], "msg": f"invalid value: {message}", "type": "value_error"}
        return JSONResponse({"detail": [error]}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.exception_handler(psycopg.OperationalError)
    async def database_down(request: Request, exc: psycopg.OperationalError) -> JSONResponse:
        return JSONResponse(
            {"detail": "database unavailable"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
        )
