"""Alert history: Alertmanager's webhook (payload version 4) in, the list out."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, status
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from pydantic import BaseModel, ConfigDict, Field

from exporter.api.deps import Conn, aware_moment

router = APIRouter(tags=["alerts"])


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = {}
    startsAt: datetime
    endsAt: datetime | None = None
    fingerprint: str = Field(min_length=1, max_length=200)
    generatorURL: str | None = None


class AlertmanagerWebhookCreate(BaseModel):
    """What Alertmanager POSTs to a webhook receiver (version 4)."""

    model_config = ConfigDict(extra="allow")

    version: Literal["4"] = "4"
    receiver: str = ""
    status: Literal["firing", "resolved"]
    alerts: list[WebhookAlert] = Field(max_length=10_000)
    groupLabels: dict[str, str] = {}
    commonLabels: dict[str, str] = {}
    commonAnnotations: dict[str, str] = {}
    externalURL: str = ""
    groupKey: str = ""
    truncatedAlerts: int = 0


class WebhookResultPublic(BaseModel):
    received: int
    recorded: int = Field(description="new events; a repeated notification is recorded once")


class AlertPublic(BaseModel):
    id: int
    fingerprint: str
    alertname: str
    status: Literal["firing", "resolved"]
    severity: str | None
    summary: str | None
    description: str | None
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: datetime
    ends_at: datetime | None
    receiver: str | None
    received_at: datetime


_INSERT = """
INSERT INTO alert_history (fingerprint, alertname, status, severity, summary, description, labels,
    annotations, starts_at, ends_at, receiver)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (fingerprint, status, starts_at) DO UPDATE SET ends_at = EXCLUDED.ends_at
RETURNING (xmax = 0) AS inserted
"""


@router.post(
    "/api/alerts/webhook", status_code=status.HTTP_200_OK, response_model=WebhookResultPublic
)
def alertmanager_webhook(body: AlertmanagerWebhookCreate, conn: Conn) -> dict[str, int]:
    """Records every firing and resolved alert; idempotent per (fingerprint, status, startsAt)."""
    recorded = 0
    with conn.transaction():
        for alert in body.alerts:
            ends_at = alert.endsAt if alert.status == "resolved" else None
            row = conn.execute(
                _INSERT,
                (
                    alert.fingerprint,
                    alert.labels.get("alertname", ""),
                    alert.status,
                    alert.labels.get("severity"),
                    alert.annotations.get("summary"),
                    alert.annotations.get("description"),
                    Jsonb(alert.labels),
                    Jsonb(alert.annotations),
                    alert.startsAt,
                    ends_at,
                    body.receiver or None,
                ),
            ).fetchone()
            recorded += bool(row and row[0])
    return {"received": len(body.alerts), "recorded": recorded}


@router.get("/api/alerts", response_model=list[AlertPublic])
def list_alerts(
    conn: Conn,
    alert_status: Annotated[Literal["firing", "resolved"] | None, Query(alias="status")] = None,
    alertname: Annotated[str | None, Query(max_length=200)] = None,
    since: Annotated[datetime | None, Query(description="received at or after")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Newest first."""
    if since is not None:
        since = aware_moment(since, "since")
    conditions, params = ["true"], []
    for clause, value in (
        ("status = %s", alert_status),
        ("alertname = %s", alertname),
        ("received_at >= %s", since),
    ):
        if value is not None:
            conditions.append(clause)
            params.append(value)
    statement = (
        "SELECT id, fingerprint, alertname, status, severity, summary, description, labels,"
        " annotations, starts_at, ends_at, receiver, received_at FROM alert_history"
        f" WHERE {' AND '.join(conditions)} ORDER BY received_at DESC, id DESC LIMIT %s"
    )
    with conn.cursor(row_factory=dict_row) as cursor:
        return cursor.execute(statement, [*params, limit]).fetchall()  # type: ignore[arg-type]
