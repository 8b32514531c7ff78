"""What durable delivery costs the app: the time an LLM call's span takes to end in the app's
thread, through the SDK's BatchSpanProcessor with its OTLP exporter (what `instrument()` used
before the spool) and through nexus-otel's delivering processor, both sending to a local OTLP
endpoint that answers 200. For reference, the same while the exporter is away, when each span is
written to the spool as it ends.

The configurations take turns, a block of spans at a time, in one process, so a busy machine slows
them alike; the medians of all spans are compared.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind
from rich.console import Console
from rich.progress import Progress

from bench.common import Result
from nexus_otel._delivery import DeliveringSpanProcessor, SpoolingSpanExporter
from nexus_otel._sender import OtlpSender
from nexus_otel._spool import Spool
from tests.nexus_otel.otlp_sink import OtlpSink
from tests.support import free_port

TARGET_RATIO = 1.10  # within noise of the SDK's own processor
BLOCK = 200
# The attributes of nexus-otel's span on a plain Groq call (as bench/instrumentation.py's).
ATTRIBUTES: dict[str, Any] = {
    "gen_ai.provider.name": "groq",
    "gen_ai.operation.name": "chat",
    "server.address": "127.0.0.1",
    "server.port": 8000,
    "gen_ai.request.model": "llama-3.3-70b-versatile",
    "gen_ai.response.model": "llama-3.3-70b-versatile",
    "gen_ai.usage.input_tokens": 1200,
    "gen_ai.usage.output_tokens": 300,
    "gen_ai.response.id": "chatcmpl-1",
    "gen_ai.response.finish_reasons": ("stop",),
    "nexus.operation": "fact_generation",
}


def _providers(sink_url: str, away_url: str, spool_base: Path) -> dict[str, TracerProvider]:
    def delivering(url: str, name: str) -> DeliveringSpanProcessor:
        exporter = SpoolingSpanExporter(
            OtlpSender(url + "/v1/traces"), Spool(spool_base / name), shutdown_seconds=3
        )
        return DeliveringSpanProcessor(exporter, schedule_delay_millis=500)

    sdk = TracerProvider()
    sdk.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=sink_url + "/v1/traces"), schedule_delay_millis=500
        )
    )
    ours, away = TracerProvider(), TracerProvider()
    ours.add_span_processor(delivering(sink_url, "ours"))
    away.add_span_processor(delivering(away_url, "away"))
    return {"sdk": sdk, "nexus": ours, "away": away}


def _end_times(provider: TracerProvider, count: int) -> list[int]:
    tracer = provider.get_tracer("bench.delivery")
    times = []
    for _ in range(count):
        span = tracer.start_span("chat llama-3.3-70b-versatile", None, SpanKind.CLIENT, ATTRIBUTES)
        started = time.perf_counter_ns()
        span.end()
        times.append(time.perf_counter_ns() - started)
    return times


def measure(console: Console, spans: int) -> dict[str, float]:
    samples: dict[str, list[int]] = {"sdk": [], "nexus": [], "away": []}
    with OtlpSink() as sink, tempfile.TemporaryDirectory() as spool_base:
        providers = _providers(sink.base_url, f"http://127.0.0.1:{free_port()}", Path(spool_base))
        providers["away"].get_tracer("warm").start_span("probe").end()
        providers["away"].force_flush()  # connection refused: spans now go to disk as they end
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("delivery: span end", total=spans)
            for _ in range(0, spans, BLOCK):
                for name in samples:
                    samples[name] += _end_times(providers[name], BLOCK)
                progress.advance(task, BLOCK)
        for provider in providers.values():
            provider.shutdown()
    return {name: statistics.median(values) / 1e3 for name, values in samples.items()}


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    spans = 3_000 if args.quick else 20_000
    console.print(f"[bold]delivery[/]: {spans} spans through each processor, {BLOCK} at a time")
    medians = measure(console, spans)
    ratio = medians["nexus"] / medians["sdk"]
    return [
        Result(
            "delivery, span end while the exporter answers",
            f"{medians['nexus']:.1f} µs/span",
            f"SDK BatchSpanProcessor {medians['sdk']:.1f} µs",
            ratio / TARGET_RATIO,
            f"<= {TARGET_RATIO:.2f}x the SDK's",
            ratio <= TARGET_RATIO,
        ),
        Result(
            "  reference: span end while the exporter is away",
            f"{medians['away']:.1f} µs/span",
            "written to the spool as it ends",
            medians["away"] / medians["sdk"],
            "(the cost during an outage)",
            None,
        ),
    ]
