"""Known LLM spans made by a real OpenTelemetry SDK, and the totals they must add up to.

The expected cost of each span is computed here with genai-prices directly, independently of
the exporter's own price book, so a pricing or double-counting bug shows up as a difference.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from genai_prices import Usage, calc_price
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind

# (semconv provider, genai-prices provider id, model)
MODELS = (
    ("groq", "groq", "llama-3.3-70b-versatile"),
    ("anthropic", "anthropic", "claude-sonnet-4-5"),
    ("gcp.gemini", "google", "gemini-2.5-flash"),
    ("openai", "openai", "gpt-4o-mini"),
)


@dataclass
class Expected:
    """What the stored rows must add up to."""

    keys: set[tuple[str, str]] = field(default_factory=set)  # (trace_id, span_id) hex
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cost_usd: Decimal = Decimal(0)


class Workload:
    """An app making LLM calls: each call is one CLIENT span with exact usage attributes."""

    def __init__(self, service_name: str, seed: int) -> None:
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.tracer = self.provider.get_tracer("nexus-endurance")
        self.expected = Expected()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def call(self) -> None:
        """One LLM call's span, with random but recorded usage."""
        provider, price_id, model = self._rng.choice(MODELS)
        input_tokens = self._rng.randint(10, 20_000)
        output_tokens = self._rng.randint(1, 4_000)
        cache_read = self._rng.choice((0, 0, input_tokens // 3))
        now = datetime.now(UTC)
        span = self.tracer.start_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.provider.name": provider,
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.usage.cache_read.input_tokens": cache_read,
                "nexus.operation": "endurance",
            },
        )
        span.end()
        context = span.get_span_context()
        # The exporter keys and prices a call by its start time, truncated to microseconds.
        price = calc_price(
            Usage(
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=cache_read,
            ),
            model,
            provider_id=price_id,
            genai_request_timestamp=now,
        )
        with self._lock:
            e = self.expected
            e.keys.add((f"{context.trace_id:032x}", f"{context.span_id:016x}"))
            e.input_tokens += input_tokens
            e.output_tokens += output_tokens
            e.cache_read_tokens += cache_read
            e.cost_usd += price.total_price

    def run(self, rate_per_second: float, stop: threading.Event) -> threading.Thread:
        """Makes calls at a steady rate on a background thread until `stop` is set."""

        def loop() -> None:
            interval = 1 / rate_per_second
            next_at = time.monotonic()
            while not stop.is_set():
                self.call()
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))

        thread = threading.Thread(target=loop, name="workload", daemon=True)
        thread.start()
        return thread
