"""nexus_otel: exact LLM token and cost telemetry on OpenTelemetry.

import nexus_otel
nexus_otel.instrument(service_name="carousel-bot")
with nexus_otel.operation("fact_generation", correlation_id="carousel-123") as op:
    ...  # groq / openai / anthropic / google-genai calls, or raw httpx REST calls
print(op.total_tokens, op.cost_usd)

Or with no code change: `opentelemetry-instrument python app.py` loads `NexusInstrumentor`.
"""

from nexus_otel._budget import BudgetExceeded
from nexus_otel._budget_api import ApiUnreachable, BudgetStatus
from nexus_otel._delivery import DeliveryStatus
from nexus_otel._estimate import estimate_cost, estimate_tokens
from nexus_otel._operation import CallRecord, Operation, current_operation, operation
from nexus_otel._setup import (
    NexusInstrumentor,
    budget_status,
    delivery_status,
    force_flush,
    instrument,
    shutdown,
    uninstrument,
)
from nexus_otel._usage import TokenUsage

__all__ = [
    "ApiUnreachable",
    "BudgetExceeded",
    "BudgetStatus",
    "CallRecord",
    "DeliveryStatus",
    "NexusInstrumentor",
    "Operation",
    "TokenUsage",
    "budget_status",
    "current_operation",
    "delivery_status",
    "estimate_cost",
    "estimate_tokens",
    "force_flush",
    "instrument",
    "operation",
    "shutdown",
    "uninstrument",
]
