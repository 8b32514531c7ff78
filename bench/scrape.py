"""Scrapes against ingest: with 10,000 budgets and 20,000 attempted label sets (model names),
ingest latency while /metrics is scraped every second, against the same exporter idle, measured
in the same run; each scrape's time, and the exporter's memory through it."""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty

import httpx
import psutil
from rich.console import Console

from bench.common import Result
from bench.memory import _tree_memory
from exporter.core.db import EmbeddedPostgres
from tests.ingest.otlp_helpers import make_spans, protobuf_body
from tests.support import fresh_database, query, start_exporter

BUDGETS = 10_000
LABEL_SETS = 20_000
FLOOD_BATCH = 1_000  # spans (each a new model name) per request of the flood
PROBE_SPANS = 10  # spans per timed ingest request
PROBE_INTERVAL = 0.05  # seconds between timed requests
TOKEN = "bench-metrics-token"
TARGET_LATENCY_RATIO = 2.0
TARGET_SCRAPE_SECONDS = 1.0
TARGET_MB = 250
ZONES = ("UTC", "Europe/Berlin", "Asia/Kolkata", "America/New_York", "Australia/Lord_Howe")


@dataclass
class Phase:
    latencies: list[float] = field(default_factory=list)
    pss_mb: list[float] = field(default_factory=list)
    scrapes: list[float] = field(default_factory=list)
    scrape_bytes: int = 0


def _spans(models: list[str], start: datetime, service: str) -> bytes:
    specs = [
        {
            "start": start + timedelta(milliseconds=i),
            "duration_ms": 800,
            "name": f"chat {m}",
            "attributes": {
                "gen_ai.provider.name": "openai",
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": m,
                "gen_ai.usage.input_tokens": 1200,
                "gen_ai.usage.output_tokens": 300,
                "nexus.cost.usd": 0.0125,
                "nexus.operation": "caption",
            },
        }
        for i, m in enumerate(models)
    ]
    return protobuf_body(make_spans(specs, service))


def _insert_budgets(url: str) -> None:
    query(
        url,
        "INSERT INTO cost_budgets (name, period_type, budget_usd, timezone, service_name, model,"
        " operation) SELECT 'bench-' || i, (ARRAY['daily', 'weekly', 'monthly'])[1 + i %% 3],"
        " 1 + i %% 97, (%s::text[])[1 + i %% 5], CASE WHEN i %% 2 = 0 THEN 'bench-svc' END,"
        " CASE WHEN i %% 3 = 0 THEN 'model-' || (i %% 20000) END,"
        " CASE WHEN i %% 7 = 0 THEN 'caption' END FROM generate_series(1, %s) i RETURNING id",
        (list(ZONES), BUDGETS),
    )


def _flood(base_url: str) -> None:
    """20,000 model names, each once: the label sets the exporter must bound."""
    headers = {"Content-Type": "application/x-protobuf"}
    start = datetime.now(UTC) - timedelta(minutes=30)
    with httpx.Client(timeout=120) as client:
        for first in range(0, LABEL_SETS, FLOOD_BATCH):
            models = [f"model-{i}" for i in range(first, first + FLOOD_BATCH)]
            body = _spans(models, start + timedelta(seconds=first), "bench-svc")
            response = client.post(f"{base_url}/v1/traces", content=body, headers=headers)
            response.raise_for_status()


def _scraper(url: str, seconds: float, results: multiprocessing.Queue[tuple[float, int]]) -> None:
    """Its own process, so reading megabytes of text never slows the timed ingest client."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=60, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        while time.monotonic() < deadline:
            started = time.monotonic()
            response = client.get(url)
            response.raise_for_status()
            results.put((time.monotonic() - started, len(response.content)))
            time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


def _phase(base_url: str, pid: int, seconds: float, scraped: bool) -> Phase:
    phase = Phase()
    stop = threading.Event()
    process = psutil.Process(pid)

    def sample() -> None:
        while not stop.wait(1.0):
            phase.pss_mb.append(_tree_memory(process)[1] / 2**20)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    results: multiprocessing.Queue[tuple[float, int]] = multiprocessing.Queue()
    scraper = multiprocessing.Process(
        target=_scraper, args=(f"{base_url}/metrics", seconds, results)
    )
    if scraped:
        scraper.start()  # its first scrape renders every label set: it is timed too
    headers = {"Content-Type": "application/x-protobuf"}
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=60) as client:
        number = 0
        while time.monotonic() < deadline:
            models = [f"probe-{(number + i) % 5}" for i in range(PROBE_SPANS)]
            body = _spans(models, datetime.now(UTC) - timedelta(seconds=1), "probe-svc")
            started = time.perf_counter()
            client.post(f"{base_url}/v1/traces", content=body, headers=headers).raise_for_status()
            phase.latencies.append(time.perf_counter() - started)
            number += 1
            time.sleep(PROBE_INTERVAL)
    if scraped:
        scraper.join(60)
        while True:
            try:
                elapsed, size = results.get(timeout=1)
            except Empty:
                break
            phase.scrapes.append(elapsed)
            phase.scrape_bytes = size
    stop.set()
    sampler.join()
    return phase


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    seconds = 15.0 if args.quick else 60.0
    console.print(
        f"[bold]scrape[/]: {BUDGETS:,} budgets, {LABEL_SETS:,} model names; ingest of "
        f"{PROBE_SPANS}-span requests for {seconds:.0f} s idle, then {seconds:.0f} s with "
        "/metrics scraped every second"
    )
    env = {"NEXUS_METRICS_TOKEN": TOKEN}
    with tempfile.TemporaryDirectory(prefix="nexus-bench-scrape-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            with fresh_database(server.url) as url:
                _insert_budgets(url)
                exporter = start_exporter(url, Path(tmp), env)
                try:
                    pid = exporter.process.pid
                    before = _tree_memory(psutil.Process(pid))[1] / 2**20
                    with console.status("sending 20,000 model names"):
                        _flood(exporter.base_url)
                    after = _tree_memory(psutil.Process(pid))[1] / 2**20
                    console.print(
                        f"  exporter PSS {before:.0f} MB at start, {after:.0f} MB after "
                        f"{LABEL_SETS:,} model names"
                    )
                    with console.status("ingest idle"):
                        idle = _phase(exporter.base_url, pid, seconds, scraped=False)
                    with console.status("ingest while /metrics is scraped every second"):
                        busy = _phase(exporter.base_url, pid, seconds, scraped=True)
                finally:
                    exporter.stop()
        finally:
            server.stop()
    return _results(console, idle, busy)


def _results(console: Console, idle: Phase, busy: Phase) -> list[Result]:
    idle_ms = statistics.median(idle.latencies) * 1000
    busy_ms = statistics.median(busy.latencies) * 1000
    ratio = busy_ms / idle_ms
    slowest = max(busy.scrapes, default=float("inf"))
    peak = max(idle.pss_mb + busy.pss_mb)
    console.print(
        f"  ingest median {idle_ms:.1f} ms idle, {busy_ms:.1f} ms scraped (x{ratio:.2f}); "
        f"{len(busy.scrapes)} scrapes of {busy.scrape_bytes / 2**20:.1f} MiB, median "
        f"{statistics.median(busy.scrapes or [0]):.2f} s, first {busy.scrapes[0]:.2f} s, "
        f"slowest {slowest:.2f} s; "
        f"PSS peak {peak:.0f} MB (idle {max(idle.pss_mb):.0f} MB)"
    )
    return [
        Result(
            f"ingest latency while scraped, {BUDGETS:,} budgets, {LABEL_SETS:,} model names",
            f"median {busy_ms:.1f} ms",
            f"idle median {idle_ms:.1f} ms",
            ratio,
            f"<= {TARGET_LATENCY_RATIO:.0f}x idle",
            ratio <= TARGET_LATENCY_RATIO,
        ),
        Result(
            "scrape time, every scrape",
            f"slowest {slowest:.2f} s ({len(busy.scrapes)} scrapes)",
            f"{busy.scrape_bytes / 2**20:.1f} MiB each",
            slowest / TARGET_SCRAPE_SECONDS,
            f"< {TARGET_SCRAPE_SECONDS:.0f} s",
            bool(busy.scrapes) and slowest < TARGET_SCRAPE_SECONDS,
        ),
        Result(
            "exporter memory (PSS, with its workers) through the scrapes",
            f"peak {peak:.0f} MB",
            f"idle peak {max(idle.pss_mb):.0f} MB",
            peak / TARGET_MB,
            f"< {TARGET_MB} MB",
            peak < TARGET_MB,
        ),
    ]
