"""Ingest throughput: OTLP protobuf batches through `nexus-otel serve` into PostgreSQL, against a
plain binary COPY of the same rows into the same table, measured in the same run.

The baseline is the strongest honest one: the rows are encoded before its clock starts (binary
COPY tuples, byte for byte what the exporter writes), and it COPYs them in batches of the same
size from as many connections at once as the exporter has senders, each batch its own
transaction. The exporter gets the OTLP bodies and has to decode, normalize, price, encode and
de-duplicate them, keep the summaries and answer each request once its rows are committed.

Both sides are compared in rows stored per second: spans that are no model call (a third of
the `rich` set) cost the exporter their decoding and are stored nowhere, so they count for
nothing on its side. Each run measures the baseline and then the exporter, for each span set;
the target holds when every run's ratio does.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from rich.console import Console
from rich.progress import Progress

from bench.common import Result
from bench.ingest_cpu import PASSES, STAGES, CpuSplit, TreeCpu, stage_cpu
from bench.ingest_spans import SPAN_SET_TITLES, SPAN_SETS
from exporter.core.db import EmbeddedPostgres, ensure_partitions_around
from exporter.ingest import otlp
from exporter.ingest.decode import price_call
from exporter.ingest.normalize import to_llm_call
from exporter.ingest.pricing import PriceBook
from exporter.ingest.rows import BINARY_SIGNATURE, BINARY_TRAILER, encode_row
from exporter.ingest.storage import _COPY_DIRECT
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import fresh_database, start_exporter

TARGET_RATIO = 0.60  # in every run
AIM_RATIO = 0.75  # the median of the runs
SENDERS = 4  # concurrent OTLP senders, and concurrent COPY connections for the baseline
STAGE_SAMPLE_SPANS = 30_000  # spans of each set timed stage by stage, over PASSES passes
_EMPTY = (
    "TRUNCATE api_calls, api_call_duplicates, daily_usage_summary, hourly_usage_summary,"
    " ten_minute_usage_summary, hourly_performance_summary"
)


@dataclass
class SpanSet:
    name: str
    bodies: list[bytes]
    copies: list[bytes]  # one binary COPY stream per batch, encoded before the clock
    spans: int
    rows: int
    stages: dict[str, float] = field(default_factory=dict)  # CPU seconds per span
    copy_rates: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # rows stored per second
    copy_db: list[float] = field(default_factory=list)  # PostgreSQL CPU seconds per row
    live: list[dict[str, float]] = field(default_factory=list)  # CPU seconds per span

    @property
    def ratios(self) -> list[float]:
        return [r / c for r, c in zip(self.rates, self.copy_rates, strict=True)]


def _prepared(name: str, spans: int, batch: int, console: Console) -> SpanSet:
    start = datetime.now(UTC) - timedelta(hours=1)
    specs = SPAN_SETS[name](spans, start)
    bodies = []
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"building {name} OTLP batches", total=spans)
        for i in range(0, spans, batch):
            bodies.append(protobuf_body(make_spans(specs[i : i + batch], "bench-service")))
            progress.advance(task, min(batch, spans - i))
    copies, rows = _copy_streams(bodies)
    each = max(1, STAGE_SAMPLE_SPANS // batch // PASSES)
    passes = [bodies[i * each : (i + 1) * each] or bodies[:each] for i in range(PASSES)]
    return SpanSet(name, bodies, copies, spans, rows, stages=stage_cpu(passes))


def _copy_streams(bodies: list[bytes]) -> tuple[list[bytes], int]:
    """Each body's rows as the exporter stores them, one binary COPY stream per body."""
    prices = PriceBook()
    streams, count = [], 0
    for body in bodies:
        rows = []
        for raw in otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF)):
            call = to_llm_call(raw)
            if call is not None:
                price_call(prices, call)
                rows.append(encode_row(call))
        streams.append(b"".join((BINARY_SIGNATURE, *rows, BINARY_TRAILER)))
        count += len(rows)
    return streams, count


def _in_parallel(
    connections: list[psycopg.Connection[Any]], work: list[Any], handle: Callable[[Any, Any], None]
) -> None:
    """`handle(connection, item)` for every item, from one thread per connection."""
    lock = threading.Lock()
    pending = list(reversed(work))
    errors: list[BaseException] = []

    def worker(conn: psycopg.Connection[Any]) -> None:
        try:
            while True:
                with lock:
                    if not pending:
                        return
                    item = pending.pop()
                handle(conn, item)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(c,)) for c in connections]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def _copy_one(conn: psycopg.Connection[Any], stream: bytes) -> None:
    with conn.cursor().copy(_COPY_DIRECT) as copy:  # autocommit: one transaction per batch
        copy.write(stream)


def plain_copy(url: str, span_set: SpanSet, postgres: TreeCpu) -> None:
    """Rows per second of a plain binary COPY of pre-encoded batches from SENDERS connections,
    and PostgreSQL's CPU per row."""
    with psycopg.connect(url, autocommit=True) as conn:
        ensure_partitions_around(conn, datetime.now(UTC).date())
    connections = [psycopg.connect(url, autocommit=True) for _ in range(SENDERS)]
    try:
        before = postgres.read()
        started = time.perf_counter()
        _in_parallel(connections, span_set.copies, _copy_one)
        elapsed = time.perf_counter() - started
        used = postgres.read() - before  # before the backends end, while they are counted
    finally:
        for conn in connections:
            conn.close()
    _check_and_empty(url, span_set.rows)
    span_set.copy_rates.append(span_set.rows / elapsed)
    span_set.copy_db.append((used.own + used.descendants) / span_set.rows)


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


def ingest(url: str, span_set: SpanSet, log_dir: Path, postgres: TreeCpu) -> None:
    """Rows per second through `nexus-otel serve` from SENDERS senders, and where the CPU went."""
    exporter = start_exporter(url, log_dir)
    try:
        tree = TreeCpu(exporter.process.pid)
        before, db_before, senders_before = tree.read(), postgres.read(), time.process_time()
        started = time.perf_counter()
        asyncio.run(_post_all(exporter.base_url, span_set.bodies, concurrency=SENDERS))
        elapsed = time.perf_counter() - started
        senders = time.process_time() - senders_before
        used, db = tree.read() - before, postgres.read() - db_before
    finally:
        exporter.stop()
    _check_and_empty(url, span_set.rows)
    span_set.rates.append(span_set.rows / elapsed)
    span_set.live.append(_per_span(span_set.spans, used, db, senders))


def _per_span(spans: int, exporter: CpuSplit, db: CpuSplit, senders: float) -> dict[str, float]:
    return {
        "decode workers": exporter.descendants / spans,
        "event loop": exporter.own / spans,
        "PostgreSQL": (db.own + db.descendants) / spans,
        "senders": senders / spans,
    }


def _check_and_empty(url: str, rows: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        stored = conn.execute("SELECT count(*) FROM api_calls").fetchone()
        conn.execute(_EMPTY)
    if not stored or stored[0] != rows:
        raise RuntimeError(f"expected {rows} rows, found {stored}")


def run(
    console: Console,
    spans: int,
    batch: int,
    runs: int = 5,
    sets: tuple[str, ...] = ("light", "rich"),
) -> list[Result]:
    """Every span set, `runs` times: the baseline, then the exporter."""
    console.print(
        f"[bold]ingest[/]: {spans:,} spans per set in OTLP protobuf batches of {batch:,},"
        f" {SENDERS} senders; {runs} runs of plain COPY then nexus-otel serve;"
        f" load average {_load()} at start"
    )
    with tempfile.TemporaryDirectory(prefix="nexus-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            postgres = TreeCpu.of_postgres(server.pgdata)
            with fresh_database(server.url) as url:
                prepared = [_prepared(name, spans, batch, console) for name in sets]
                with Progress(console=console, transient=True) as progress:
                    task = progress.add_task("ingest runs", total=runs * len(prepared))
                    for index in range(runs):
                        for span_set in prepared:
                            plain_copy(url, span_set, postgres)
                            ingest(url, span_set, Path(tmp), postgres)
                            progress.advance(task)
                            _print_run(console, span_set, index)
        finally:
            server.stop()
    console.print(f"  load average {_load()} at the end")
    results = []
    for span_set in prepared:
        _print_cpu(console, span_set)
        results.extend(_results(span_set, batch))
    return results


def _load() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _print_run(console: Console, s: SpanSet, index: int) -> None:
    rate, copy_rate = s.rates[index], s.copy_rates[index]
    console.print(
        f"  {s.name} run {index + 1}: plain COPY {copy_rate:,.0f} rows/s, nexus-otel"
        f" {rate:,.0f} rows/s ({rate * s.spans / s.rows:,.0f} spans/s) = {rate / copy_rate:.2f}"
    )


def _print_cpu(console: Console, s: SpanSet) -> None:
    stages = ", ".join(f"{stage} {s.stages[stage] * 1e6:.1f}" for stage in STAGES)
    total = sum(s.stages.values()) * 1e6
    console.print(
        f"  {s.name}: {SPAN_SET_TITLES[s.name]}; {s.spans:,} spans, {s.rows:,} rows."
        f"\n    CPU per span by stage, one process (us): {stages}; together {total:.1f}"
    )
    live = {key: statistics.median(run[key] for run in s.live) for key in s.live[0]}
    shares = ", ".join(f"{key} {seconds * 1e6:.1f}" for key, seconds in live.items())
    write = statistics.median(s.copy_db) * s.rows / s.spans * 1e6
    over_copy = live["PostgreSQL"] * 1e6 / write
    console.print(
        f"    CPU per span while ingesting, medians of the runs (us): {shares}"
        f"\n    (write: PostgreSQL above, against {write:.1f} for the plain COPY of the same rows:"
        f" {over_copy:.2f}x)"
    )


def _results(s: SpanSet, batch: int) -> list[Result]:
    ratios = s.ratios
    worst = min(range(len(ratios)), key=ratios.__getitem__)
    median = statistics.median(ratios)
    name = f"ingest, {s.name} spans, OTLP protobuf x{batch}, {len(ratios)} runs"
    return [
        Result(
            f"{name}: minimum",
            f"{s.rates[worst]:,.0f} rows/s",
            f"plain COPY {s.copy_rates[worst]:,.0f} rows/s",
            ratios[worst],
            f">= {TARGET_RATIO:.2f} every run",
            ratios[worst] >= TARGET_RATIO,
        ),
        Result(
            f"{name}: median",
            f"{statistics.median(s.rates):,.0f} rows/s",
            f"plain COPY {statistics.median(s.copy_rates):,.0f} rows/s",
            median,
            f"aim >= {AIM_RATIO:.2f}",
            None,  # an aim, not a target: the run does not fail on it
        ),
    ]
