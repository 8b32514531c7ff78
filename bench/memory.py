"""Exporter memory under sustained maximum load: resident memory sampled every second while
many senders push unique 1,000-span batches as fast as the exporter takes them. The write queue
is bounded, so the excess must come back as 503 with Retry-After, never as growth."""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psutil
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from bench.common import Result
from bench.ingest_spans import light_specs
from exporter.core.db import EmbeddedPostgres
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import fresh_database, metric_value, start_exporter

TARGET_MB = 250
BATCH = 1000


@dataclass
class Soak:
    rss_mb: list[float] = field(default_factory=list)  # the exporter's processes, summed
    pss_mb: list[float] = field(default_factory=list)  # the same, shared pages counted once
    spans_accepted: int = 0
    answers: dict[int, int] = field(default_factory=dict)
    retry_after_missing: int = 0
    max_queue_rows: float = 0.0
    unavailable: dict[str, int] = field(default_factory=dict)  # 503s by reason
    transport_errors: dict[str, int] = field(default_factory=dict)  # answers 0, by error


class UniqueBatches:
    """One real SDK-made batch as a template; each copy gets fresh trace ids and response ids, so
    every span is a new call to the database (replays would take the slower duplicate path, and
    copies sharing a response id and their times would be one call's spans to it)."""

    def __init__(self) -> None:
        start = datetime.now(UTC) - timedelta(hours=1)
        self._template = ExportTraceServiceRequest()
        self._template.ParseFromString(
            protobuf_body(make_spans(light_specs(BATCH, start), "memory-soak"))
        )
        self._spans = list(self._template.resource_spans[0].scope_spans[0].spans)
        self._response_ids = [
            next(a.value for a in span.attributes if a.key == "gen_ai.response.id")
            for span in self._spans
        ]
        self._count = 0

    def next(self) -> bytes:
        self._count += 1
        prefix = os.urandom(8)
        for i, (span, response_id) in enumerate(zip(self._spans, self._response_ids, strict=True)):
            span.trace_id = prefix + i.to_bytes(8, "big")
            response_id.string_value = f"resp-{prefix.hex()}-{i}"
        scope = self._template.resource_spans[0].scope_spans[0]
        del scope.spans[:]
        scope.spans.extend(self._spans)
        return self._template.SerializeToString()


async def _sender(
    client: httpx.AsyncClient, url: str, batches: UniqueBatches, soak: Soak, deadline: float
) -> None:
    headers = {"Content-Type": "application/x-protobuf"}
    body = batches.next()
    while time.monotonic() < deadline:
        try:
            response = await client.post(url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            soak.answers[0] = soak.answers.get(0, 0) + 1
            error = type(exc).__name__
            soak.transport_errors[error] = soak.transport_errors.get(error, 0) + 1
            continue
        code = response.status_code
        soak.answers[code] = soak.answers.get(code, 0) + 1
        if code == 200:
            soak.spans_accepted += BATCH
            body = batches.next()
        elif code == 503:
            reason = _reason(response.content)
            soak.unavailable[reason] = soak.unavailable.get(reason, 0) + 1
            retry_after = response.headers.get("retry-after")
            if retry_after is None:
                soak.retry_after_missing += 1
            await asyncio.sleep(float(retry_after or 1))  # as OTLP senders do
        else:
            raise RuntimeError(f"exporter answered {code}: {response.text[:200]}")


def _reason(content: bytes) -> str:
    """Why the exporter answered 503, from its message."""
    if b"waiting for the database" in content:
        return "write queue full"
    if b"waiting to be decoded" in content:
        return "decode queue full"
    if b"bytes of other requests" in content:
        return "bodies in flight"
    return "write timeout"


def _tree_memory(process: psutil.Process) -> tuple[int, int]:
    """Resident bytes of the exporter and its decode workers: RSS summed (pages the processes
    share counted in each, an upper bound) and PSS summed (shared pages counted once)."""
    rss = pss = 0
    for member in (process, *process.children(recursive=True)):
        try:
            info = member.memory_full_info()
        except psutil.Error:  # a worker that just ended
            continue
        rss += info.rss
        pss += info.pss
    return rss, pss


async def _sample(
    pid: int, metrics_url: str, soak: Soak, deadline: float, progress: Progress
) -> None:
    process = psutil.Process(pid)
    task = progress.add_task("memory soak", total=deadline - time.monotonic())
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=10) as client:
        while time.monotonic() < deadline:
            rss, pss = _tree_memory(process)
            soak.rss_mb.append(rss / 2**20)  # an upper bound: shared pages once per process
            soak.pss_mb.append(pss / 2**20)
            text = (await client.get(metrics_url)).text
            depth = metric_value(text, "nexus_exporter_queue_depth_rows")
            soak.max_queue_rows = max(soak.max_queue_rows, depth)
            progress.update(
                task,
                completed=time.monotonic() - started,
                description=f"memory soak: RSS {soak.rss_mb[-1]:.0f} MB, "
                f"{soak.spans_accepted:,} spans, queue {depth:,.0f} rows",
            )
            await asyncio.sleep(1)


async def _soak(base_url: str, pid: int, seconds: float, senders: int, console: Console) -> Soak:
    soak = Soak()
    batches = UniqueBatches()
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=senders)
    columns = (TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            url = f"{base_url}/v1/traces"
            await asyncio.gather(
                _sample(pid, f"{base_url}/metrics", soak, deadline, progress),
                *(_sender(client, url, batches, soak, deadline) for _ in range(senders)),
            )
    return soak


def run(console: Console, seconds: float, senders: int, queue_max_rows: int) -> list[Result]:
    console.print(
        f"[bold]memory[/]: {seconds:.0f} s at maximum rate, {senders} senders of {BATCH}-span "
        f"batches, queue bound {queue_max_rows:,} rows"
    )
    env = {"NEXUS_QUEUE_MAX_ROWS": str(queue_max_rows), "NEXUS_RETRY_AFTER_SECONDS": "1"}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-mem-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            with fresh_database(server.url) as url:
                exporter = start_exporter(url, Path(tmp), env)
                try:
                    pid = exporter.process.pid
                    soak = asyncio.run(_soak(exporter.base_url, pid, seconds, senders, console))
                finally:
                    exporter.stop()
        finally:
            server.stop()
    # The measure: PSS summed over the exporter and its decode workers, the memory they hold
    # between them. RSS summed counts every shared page (the interpreter, libraries) once per
    # process, so it overstates them; it is printed as the upper bound.
    peak = max(soak.pss_mb)
    median = statistics.median(soak.pss_mb)
    rss_peak = max(soak.rss_mb)
    rate = soak.spans_accepted / seconds
    rejected = soak.answers.get(503, 0)
    console.print(
        f"  exporter and decode workers: PSS summed peak {peak:.0f} MB, median {median:.0f} MB"
        f" (RSS summed peak {rss_peak:.0f} MB); {rate:,.0f} spans/s accepted; "
        f"answers {dict(sorted(soak.answers.items()))} {soak.unavailable}"
        f"{' ' + str(soak.transport_errors) if soak.transport_errors else ''}; "
        f"queue peak {soak.max_queue_rows:,.0f} rows"
    )
    bounded = soak.max_queue_rows <= queue_max_rows and soak.retry_after_missing == 0
    return [
        Result(
            f"exporter memory (PSS, with its workers), {seconds:.0f} s at max rate",
            f"peak {peak:.0f} MB ({rate:,.0f} spans/s)",
            f"median {median:.0f} MB; RSS summed peak {rss_peak:.0f} MB",
            peak / TARGET_MB,
            f"< {TARGET_MB} MB",
            peak < TARGET_MB,
        ),
        Result(
            "backpressure: bounded queue, 503 + Retry-After",
            f"queue peak {soak.max_queue_rows:,.0f} rows; {rejected:,} x 503",
            f"bound {queue_max_rows:,} rows",
            soak.max_queue_rows / queue_max_rows,
            "<= bound, 503s carry Retry-After",
            bounded and rejected > 0,
        ),
    ]
