"""`nexus-otel demo`: the stack on the embedded PostgreSQL, fed by a carousel-generation workload.

The workload emits GenAI spans with the OpenTelemetry SDK and its own OTLP/HTTP exporter, as an
instrumented app does, and a live terminal view shows what the exporter stored.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from nexus_otel import attributes as a

# (operation, provider, model, input range, output range): the original carousel pipeline.
STEPS = [
    ("fact_generation", "groq", "llama-3.3-70b-versatile", (300, 900), (80, 250)),
    ("content_expansion", "gcp.gemini", "gemini-2.5-flash", (800, 2500), (400, 1200)),
    ("caption", "anthropic", "claude-sonnet-4-5", (1200, 3000), (100, 300)),
]
FAILURE_RATE = 0.05


@dataclass
class Workload:
    endpoint: str
    rng: random.Random

    def run(self, stop: threading.Event, pace_seconds: float) -> None:
        provider = TracerProvider(resource=Resource.create({"service.name": "carousel-bot"}))
        exporter = OTLPSpanExporter(endpoint=f"{self.endpoint}/v1/traces")
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
        tracer = provider.get_tracer("nexus-otel-demo")
        carousel = 0
        while not stop.is_set():
            carousel += 1
            for step in STEPS:
                self._call(tracer, step, f"carousel-{carousel}")
                stop.wait(pace_seconds)
        provider.shutdown()

    def _call(self, tracer: Any, step: tuple[Any, ...], correlation_id: str) -> None:
        operation, provider, model, input_range, output_range = step
        input_tokens = self.rng.randint(*input_range)
        cached = input_tokens // 2 if self.rng.random() < 0.3 else 0
        failed = self.rng.random() < FAILURE_RATE
        attributes: dict[str, Any] = {
            a.GEN_AI_PROVIDER_NAME: provider,
            a.GEN_AI_OPERATION_NAME: "chat",
            a.GEN_AI_REQUEST_MODEL: model,
            a.NEXUS_OPERATION: operation,
            a.NEXUS_CORRELATION_ID: correlation_id,
        }
        if failed:
            attributes[a.ERROR_TYPE] = "429"
        else:
            attributes[a.GEN_AI_USAGE_INPUT_TOKENS] = input_tokens
            attributes[a.GEN_AI_USAGE_OUTPUT_TOKENS] = self.rng.randint(*output_range)
            attributes[a.GEN_AI_USAGE_CACHE_READ_INPUT_TOKENS] = cached
        start = time.time_ns()
        span = tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes)
        if failed:
            span.set_status(Status(StatusCode.ERROR, "rate limited"))
        span.end(end_time=start + int(self.rng.uniform(0.2, 2.5) * 1e9))


_TOTALS = """
SELECT count(*), coalesce(sum(total_tokens), 0), sum(cost_usd), count(*) FILTER (WHERE NOT success)
FROM api_calls WHERE "timestamp" >= %s"""
_BY_PROVIDER = """
SELECT provider, count(*), sum(total_tokens), sum(cost_usd), avg(duration_ms)
FROM api_calls WHERE "timestamp" >= %s GROUP BY 1 ORDER BY 1"""
_RECENT = """
SELECT "timestamp", provider, operation, total_tokens, cost_usd, success
FROM api_calls WHERE "timestamp" >= %s ORDER BY "timestamp" DESC LIMIT 8"""


def render(conn: psycopg.Connection[Any], since: datetime, budget_usd: float) -> Group:
    calls, tokens, cost, failed = conn.execute(_TOTALS, (since,)).fetchone() or (0, 0, 0, 0)
    spend = float(cost or 0)
    head = Table.grid(padding=(0, 4))
    head.add_row(
        f"[bold]calls[/] {calls:,} ({failed} failed)",
        f"[bold]tokens[/] {int(tokens):,}",
        f"[bold]cost[/] ${spend:.4f}",
        f"[bold]budget[/] {100 * spend / budget_usd:.1f}% of ${budget_usd:.2f}",
    )
    providers = Table("provider", "calls", "tokens", "cost", "avg ms", title="per provider")
    for name, n, t, c, d in conn.execute(_BY_PROVIDER, (since,)).fetchall():
        providers.add_row(name, f"{n:,}", f"{int(t or 0):,}", f"${float(c or 0):.4f}", f"{d:.0f}")
    recent = Table("time", "provider", "operation", "tokens", "cost", "ok", title="recent calls")
    for ts, name, op, t, c, ok in conn.execute(_RECENT, (since,)).fetchall():
        price = f"${float(c):.5f}" if c is not None else "unpriced"
        recent.add_row(f"{ts:%H:%M:%S}", name, op, f"{t:,}", price, "✓" if ok else "✗")
    return Group(head, providers, recent)


def run_demo(database_url: str, endpoint: str, duration: float | None, budget_usd: float) -> int:
    console = Console()
    stop = threading.Event()
    since = datetime.now(UTC)
    workload = Workload(endpoint, random.Random())
    worker = threading.Thread(target=workload.run, args=(stop, 0.15), daemon=True)
    worker.start()
    deadline = None if duration is None else time.monotonic() + duration
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            with Live(
                render(conn, since, budget_usd), console=console, refresh_per_second=2
            ) as live:
                while deadline is None or time.monotonic() < deadline:
                    time.sleep(0.5)
                    live.update(render(conn, since, budget_usd))
        except KeyboardInterrupt:
            pass
        stop.set()
        worker.join(10)
        time.sleep(1.0)  # the exporter commits the last batch
        console.rule("summary")
        console.print(render(conn, since, budget_usd))
    return 0
