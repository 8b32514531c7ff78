"""Response models shared by several routers."""

from __future__ import annotations

from datetime import datetime

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
