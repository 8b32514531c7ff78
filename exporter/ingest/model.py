"""The records that move through the ingest path, from decoded span to stored row."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

# Ends every stored name, message or attribute key cut to its bound, so a cut never looks whole.
TRUNCATED_MARKER = "…[truncated]"

AttributeValue = str | bool | int | float | list[Any] | None


@dataclass(slots=True)
class RawSpan:
    """One OTLP span, decoded from protobuf or JSON, before any GenAI interpretation."""

    trace_id: str  # 32 lowercase hex characters
    span_id: str  # 16 lowercase hex characters
    parent_span_id: str | None
    name: str
    kind: int  # OTLP SpanKind enum value (3 = CLIENT)
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: int  # OTLP StatusCode: 0 unset, 1 ok, 2 error
    status_message: str
    attributes: dict[str, AttributeValue]
    resource_attributes: dict[str, AttributeValue]
    scope_name: str = ""
    exception_type: str | None = None  # from an "exception" event, when present
    exception_message: str | None = None


@dataclass(slots=True)
class LLMCall:
    """One LLM call, normalized to a single schema: one row of `api_calls`."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    timestamp: datetime  # span start, UTC
    service_name: str
    provider: str  # normalized: anthropic, gcp.gemini, groq, openai, ...
    model: str  # request model, falling back to the response model
    response_model: str | None
    gen_ai_operation: str  # chat, text_completion, embeddings, generate_content, ...
    operation: str  # business operation (nexus.operation); "" when the app named none
    correlation_id: str | None
    input_tokens: int  # inclusive of cache reads and writes
    output_tokens: int  # inclusive of reasoning
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    total_tokens: int
    duration_ms: float
    success: bool
    error_type: str | None
    error_message: str | None
    usage_source: str  # response | tiktoken | chars
    server_address: str | None
    span_name: str
    time_to_first_chunk_ms: float | None
    reported_cost_usd: Decimal | None  # a cost the span itself carried, if any
    attributes: dict[str, Any] = field(default_factory=dict)  # extra, content-free attributes
    cost_usd: Decimal | None = None  # filled by pricing; None = unpriced, never a fake 0
    cost_source: str | None = None  # provider | override | genai-prices | span
    # Where exactly the cost comes from: the genai-prices version and data, the overrides entry
    # and its valid_from, or the span attribute a reported cost was read from.
    price_ref: str | None = None
    reported_cost_key: str | None = None  # the attribute reported_cost_usd was read from
    # reported_cost_usd is what the provider charged (gen_ai.usage.cost.source = provider)
    cost_reported_by_provider: bool = False
    unpriced_reason: str | None = None  # set: stored unpriced, whatever a price table says
    # Of the cache writes, those to a 1-hour cache (Anthropic), priced apart; at most
    # cache_write_tokens.
    cache_write_1h_tokens: int = 0
    # The tier that served the call (OpenAI's service_tier: default, flex, priority, scale),
    # which its price depends on; None when not told.
    service_tier: str | None = None
