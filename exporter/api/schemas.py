"""Response models shared by several routers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class TotalsPublic(BaseModel):
    calls: int
    failed_calls: int
    unpriced_calls: int = Field(description="calls of unknown price: not counted in cost_usd")
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: float = Field(description="sum over priced calls")
    avg_duration_ms: float | None
    avg_cost_per_call_usd: float | None = Field(description="over priced calls")
    success_rate: float | None


def totals_public(row: dict[str, Any]) -> dict[str, Any]:
    """Adds the averages and rates to a usage row."""
    calls = row["calls"]
    priced = calls - row["unpriced_calls"]
    return {
        **row,
        "cost_usd": float(row["cost_usd"]),
        "avg_duration_ms": row["duration_ms_sum"] / calls if calls else None,
        "avg_cost_per_call_usd": float(row["cost_usd"]) / priced if priced else None,
        "success_rate": (calls - row["failed_calls"]) / calls if calls else None,
    }


class CallPublic(BaseModel):
    trace_id: str
    span_id: str
    timestamp: datetime
    service_name: str
    provider: str
    model: str
    operation: str
    correlation_id: str | None
    input_tokens: int
    output_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(description="None when the model is unpriced")
    duration_ms: float
    success: bool
    error_type: str | None


CALL_COLUMNS = (
    'trace_id, span_id, "timestamp", service_name, provider, model, operation, correlation_id, '
    "input_tokens, output_tokens, total_tokens, cost_usd::float8 AS cost_usd, duration_ms, "
    "success, error_type"
)


def percent_change(now: float, before: float) -> float | None:
    """Change from `before` to `now` in percent; None when there is nothing to compare with."""
    return (now - before) * 100 / before if before else None
