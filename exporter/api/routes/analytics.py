"""Analytics over a time range: by provider and model, by operation, token efficiency."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from exporter.api.deps import Conn, RangeDep, ScopeDep
from exporter.api.schemas import TotalsPublic
from exporter.usage.totals import totals_public, usage

router = APIRouter(tags=["analytics"])


class ModelStatsPublic(TotalsPublic):
    model: str
    cost_share_pct: float | None


class ProviderStatsPublic(TotalsPublic):
    provider: str
    cost_share_pct: float | None = Field(description="share of the range's priced spend")
    models: list[ModelStatsPublic]


class ProviderStatsResponse(BaseModel):
    start: datetime
    end: datetime
    total: TotalsPublic
    providers: list[ProviderStatsPublic]


class OperationCostPublic(TotalsPublic):
    operation: str = Field(description="nexus.operation; empty when the call named none")
    cost_share_pct: float | None


class CostByOperationResponse(BaseModel):
    start: datetime
    end: datetime
    total: TotalsPublic
    operations: list[OperationCostPublic]


class TokenEfficiencyPublic(BaseModel):
    provider: str
    model: str
    calls: int
    avg_input_tokens: float
    avg_output_tokens: float
    output_per_input: float | None = Field(description="output tokens per input token")
    cache_read_share: float | None = Field(description="share of input tokens read from cache")
    reasoning_share: float | None = Field(description="share of output tokens spent reasoning")
    cost_per_1k_tokens_usd: float | None = Field(description="over priced calls only")
    tokens_per_second: float | None


class TokenEfficiencyResponse(BaseModel):
    start: datetime
    end: datetime
    models: list[TokenEfficiencyPublic]


def _share(part: Any, whole: Any) -> float | None:
    return float(part) * 100 / float(whole) if whole else None


@router.get("/api/analytics/provider-stats", response_model=ProviderStatsResponse)
def provider_stats(conn: Conn, time_range: RangeDep, scope: ScopeDep) -> dict[str, Any]:
    """Calls, tokens and cost per provider, and per model within each, most expensive first."""
    total = usage(conn, time_range.start, time_range.end, scope)[0]
    rows = usage(conn, time_range.start, time_range.end, scope, ("provider", "model"))
    providers: dict[str, dict[str, Any]] = {}
    for row in rows:
        model = {**totals_public(row), "cost_share_pct": _share(row["cost_usd"], total["cost_usd"])}
        providers.setdefault(row["provider"], {"models": []})["models"].append(model)
    by_provider = usage(conn, time_range.start, time_range.end, scope, ("provider",))
    result = [
        {
            **totals_public(row),
            "cost_share_pct": _share(row["cost_usd"], total["cost_usd"]),
            "models": sorted(
                providers[row["provider"]]["models"], key=lambda m: (-m["cost_usd"], m["model"])
            ),
        }
        for row in by_provider
    ]
    result.sort(key=lambda p: (-p["cost_usd"], p["provider"]))
    return {**time_range.__dict__, "total": totals_public(total), "providers": result}


@router.get("/api/analytics/cost-by-operation", response_model=CostByOperationResponse)
def cost_by_operation(conn: Conn, time_range: RangeDep, scope: ScopeDep) -> dict[str, Any]:
    """Spend per business operation (nexus.operation), most expensive first."""
    total = usage(conn, time_range.start, time_range.end, scope)[0]
    rows = usage(conn, time_range.start, time_range.end, scope, ("operation",))
    operations = [
        {**totals_public(row), "cost_share_pct": _share(row["cost_usd"], total["cost_usd"])}
        for row in rows
    ]
    operations.sort(key=lambda o: (-o["cost_usd"], o["operation"]))
    return {**time_range.__dict__, "total": totals_public(total), "operations": operations}


@router.get("/api/analytics/token-efficiency", response_model=TokenEfficiencyResponse)
def token_efficiency(conn: Conn, time_range: RangeDep, scope: ScopeDep) -> dict[str, Any]:
    """Per provider and model: tokens per call, output per input, cache and reasoning shares,
    cost per thousand tokens and throughput."""
    rows = usage(conn, time_range.start, time_range.end, scope, ("provider", "model"))
    return {**time_range.__dict__, "models": [_efficiency(row) for row in rows]}


def _efficiency(row: dict[str, Any]) -> dict[str, Any]:
    calls, inputs, outputs = row["calls"], row["input_tokens"], row["output_tokens"]
    priced = calls - row["unpriced_calls"]
    seconds = row["duration_ms_sum"] / 1000
    return {
        "provider": row["provider"],
        "model": row["model"],
        "calls": calls,
        "avg_input_tokens": inputs / calls if calls else 0.0,
        "avg_output_tokens": outputs / calls if calls else 0.0,
        "output_per_input": outputs / inputs if inputs else None,
        "cache_read_share": row["cache_read_tokens"] / inputs if inputs else None,
        "reasoning_share": row["reasoning_tokens"] / outputs if outputs else None,
        # Cost per token needs the priced calls' tokens alone; mixing in unpriced calls' tokens
        # would understate it, so the figure is given only when every call is priced.
        "cost_per_1k_tokens_usd": (
            float(row["cost_usd"]) * 1000 / row["total_tokens"]
            if priced == calls and row["total_tokens"]
            else None
        ),
        "tokens_per_second": row["total_tokens"] / seconds if seconds else None,
    }
