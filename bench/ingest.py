"""Ingest throughput: OTLP protobuf batches through `nexus-otel serve` into PostgreSQL, against a
plain binary COPY of the same rows into the same table, measured in the same run."""

from __future__ import annotations

import asyncio
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.progress import Progress

from bench.common import Result
from exporter.core.db import EmbeddedPostgres, ensure_partitions_around
from exporter.ingest import otlp
from exporter.ingest.decode import price_call
from exporter.ingest.normalize import to_llm_call
from exporter.ingest.pricing import PriceBook
from exporter.ingest.storage import _COPY_DIRECT, COLUMN_TYPES, call_row
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import fresh_database, start_exporter

MODELS = [
    ("groq", "llama-3.3-70b-versatile"),
    ("groq", "llama-3.1-8b-instant"),
    ("anthropic", "claude-sonnet-4-5"),
    ("gcp.gemini", "gemini-2.5-flash"),
    ("openai", "gpt-4o-mini"),
]
OPERATIONS = ["fact_generation", "content_expansion", "caption", "hashtags"]
TARGET_RATIO = 0.60
_EMPTY = "TRUNCATE api_calls, daily_usage_summary, hourly_usage_summary"


def _span_specs(count: int, start: datetime) -> list[dict[str, Any]]:
    rng = random.Random(7)
    specs = []
    for i in range(count):
        provider, model = rng.choice(MODELS)
        input_tokens = rng.randint(50, 4000)
        specs.append(
            {
                "start": start + timedelta(milliseconds=i),
                "duration_ms": rng.uniform(100, 3000),
                "name": f"chat {model}",
                "attributes": {
                    "gen_ai.provider.name": provider,
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": model,
                    "gen_ai.response.model": model,
                    "gen_ai.response.id": f"resp-{i}",
                    "gen_ai.response.finish_reasons": ["stop"],
                    "gen_ai.usage.input_tokens": input_tokens,
                    "gen_ai.usage.output_tokens": rng.randint(10, 1500),
                    "gen_ai.usage.cache_read.input_tokens": rng.choice([0, 0, input_tokens // 2]),
                    "server.address": "api.example.com",
                    "server.port": 443,
                    "nexus.operation": rng.choice(OPERATIONS),
                    "nexus.correlation_id": f"carousel-{i // 5}",
                    "nexus.usage.source": "response",
                },
            }
        )
    return specs


def _bodies(spans: int, batch: int, console: Console) -> list[bytes]:
    start = datetime.now(UTC) - timedelta(hours=1)
    specs = _span_specs(spans, start)
    bodies = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("building OTLP batches", total=spans)
        for i in range(0, spans, batch):
            bodies.append(protobuf_body(make_spans(specs[i : i + batch], "bench-service")))
            progress.advance(task, min(batch, spans - i))
    return bodies


def _rows(bodies: list[bytes]) -> list[tuple[Any, ...]]:
    prices = PriceBook()
    rows = []
    for body in bodies:
        for raw in otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF)):
            call = to_llm_call(raw)
            assert call is not None
            price_call(prices, call)
            rows.append(call_row(call))
    return rows


def plain_copy_rate(url: str, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Rows per second of a plain binary COPY, one transaction per batch, no idempotency."""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions_around(conn, datetime.now(UTC).date())
        started = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.transaction(), conn.cursor().copy(_COPY_DIRECT) as copy:
                copy.set_types(list(COLUMN_TYPES))
                for row in rows[i : i + batch]:
                    copy.write_row(row)
        elapsed = time.perf_counter() - started
        conn.execute(_EMPTY)
    return len(rows) / elapsed


async def _post_all(base_url: str, bodies: list[bytes], concurrency: int) -> None:
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Content-Type": otlp.PROTOBUF}

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            while True:
                response = await client.post(f"{base_url}/v1/traces", content=body, headers=headers)
                if response.status_code == 200:
                    break
                if response.status_code != 503:
                    raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")
                await asyncio.sleep(0.05)

    async with httpx.AsyncClient(timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))


def ingest_rate(url: str, bodies: list[bytes], spans: int, log_dir: Path) -> float:
    exporter = start_exporter(url, log_dir)
    try:
        started = time.perf_counter()
        asyncio.run(_post_all(exporter.base_url, bodies, concurrency=4))
        elapsed = time.perf_counter() - started
    finally:
        exporter.stop()
    with psycopg.connect(url, autocommit=True) as conn:
        stored = conn.execute("SELECT count(*) FROM api_calls").fetchone()
        conn.execute(_EMPTY)
    if not stored or stored[0] != spans:
        raise RuntimeError(f"expected {spans} rows after ingest, found {stored}")
    return spans / elapsed


def run(console: Console, spans: int, batch: int, rounds: int = 3) -> list[Result]:
    """Both rates measured in turn, `rounds` times, and their medians compared: a machine whose
    speed drifts during the run moves both sides alike."""
    copy_rates, rates = [], []
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            with fresh_database(server.url) as url:
                console.print(
                    f"[bold]ingest[/]: {spans} spans in OTLP protobuf batches of {batch}, "
                    f"{rounds} rounds of plain COPY then nexus-otel serve"
                )
                bodies = _bodies(spans, batch, console)
                rows = _rows(bodies)
                with Progress(console=console, transient=True) as progress:
                    task = progress.add_task("ingest rounds", total=rounds)
                    for _ in range(rounds):
                        copy_rates.append(plain_copy_rate(url, rows, batch))
                        rates.append(ingest_rate(url, bodies, spans, Path(tmp)))
                        progress.advance(task)
        finally:
            server.stop()
    copy_rate, rate = statistics.median(copy_rates), statistics.median(rates)
    console.print(f"  plain binary COPY: {copy_rate:,.0f} rows/s ({_each(copy_rates)})")
    console.print(f"  nexus-otel serve:  {rate:,.0f} spans/s ({_each(rates)})")
    ratio = rate / copy_rate
    return [
        Result(
            f"ingest, OTLP protobuf x{batch}, idempotent",
            f"{rate:,.0f} spans/s",
            f"plain COPY {copy_rate:,.0f} rows/s",
            ratio,
            f">= {TARGET_RATIO:.2f}",
            ratio >= TARGET_RATIO,
        )
    ]


def _each(rates: list[float]) -> str:
    return "rounds: " + ", ".join(f"{r:,.0f}" for r in rates)
