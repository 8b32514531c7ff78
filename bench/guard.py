"""The budget guard's cost: the same groq SDK calls against the instrumentation benchmark's
local provider server (a process of its own), with the guard on (`block`, a budget far from
its limit) and off, leasing from a real `nexus-otel serve` on an embedded PostgreSQL. As the
instrumentation benchmark does, one process switches between the two configurations 50 calls
at a time, so a busy machine slows both alike, and the medians of all calls are compared.
Spans go to a no-op exporter. Also counted: the API round trips the guard made per guarded
call (leases and refills), and, for reference, the median time of the guard's own check.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.common import Result

TARGET_ADDED_US = 100.0
TARGET_ROUND_TRIPS_PER_CALL = 1 / 50
ROUND = 50  # calls per configuration before switching
_MESSAGES = [{"role": "user", "content": "Write one fact about coffee mornings."}]


def _discarding_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider


def _measure(api_url: str, base_url: str, calls: int) -> tuple[float, float, float, float]:
    """Median µs per call without and with the guard, API round trips per guarded call, and
    the median µs the guard's own check took (refills included in the sample)."""
    import groq

    import nexus_otel
    from nexus_otel import _setup

    nexus_otel.instrument(
        "bench-guard",
        tracer_provider=_discarding_provider(),
        budget_guard="block",
        api_url=api_url,
    )
    installed = _setup._installed
    assert installed is not None and installed.interceptor is not None
    interceptor = installed.interceptor
    guard = interceptor.guard
    assert guard is not None
    checks: list[float] = []
    admit = interceptor.admit

    def timed_admit(call: Any) -> None:  # the guard's own time, beside the end-to-end medians
        started = time.perf_counter()
        try:
            admit(call)
        finally:
            if interceptor.guard is not None:
                checks.append(time.perf_counter() - started)

    interceptor.admit = timed_admit  # type: ignore[method-assign]
    client = groq.Groq(api_key="gsk-bench", base_url=base_url, max_retries=0)
    times: dict[bool, list[float]] = {False: [], True: []}

    def call() -> None:
        client.chat.completions.create(
            model="llama-3.3-70b-versatile", messages=_MESSAGES, max_tokens=64
        )

    for _ in range(ROUND):  # warm up both paths (imports, prices, the first lease)
        call()
    guard.api.round_trips = 0
    checks.clear()
    for index in range(max(1, calls // (2 * ROUND))):
        for guarded in (False, True) if index % 2 else (True, False):
            interceptor.guard = guard if guarded else None
            for _ in range(ROUND):
                start = time.perf_counter()
                call()
                times[guarded].append(time.perf_counter() - start)
    interceptor.guard = guard
    nexus_otel.shutdown()
    off, on = (statistics.median(times[k]) * 1e6 for k in (False, True))
    own = statistics.median(checks) * 1e6
    return off, on, guard.api.round_trips / len(times[True]), own


def run(console: Console, args: argparse.Namespace) -> list[Result]:
    from bench.instrumentation import _start_server
    from exporter.core.db import EmbeddedPostgres
    from tests.support import fresh_database, start_exporter

    calls = args.calls or (2_000 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="bench-guard-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        try:
            with fresh_database(server.url) as url:
                exporter = start_exporter(url, Path(tmp))
                try:
                    body = {"name": "bench", "period": "daily", "amount_usd": "1000000"}
                    httpx.post(f"{exporter.api_url}/api/budgets", json=body).raise_for_status()
                    provider_server, provider_url = _start_server()
                    try:
                        console.print(f"guard: {calls} calls, guard on and off in turns")
                        off, on, trips, own = _measure(exporter.api_url, provider_url, calls)
                    finally:
                        provider_server.communicate("")  # closing its stdin stops it
                finally:
                    exporter.stop()
        finally:
            server.stop()
    added = on - off
    return [
        Result(
            "budget guard: added time per call",
            f"{added:.0f} µs",
            f"{off:.0f} µs per call without",
            on / off,
            f"< {TARGET_ADDED_US:.0f} µs",
            added < TARGET_ADDED_US,
        ),
        Result(
            "budget guard: its own check per call (median)",
            f"{own:.0f} µs",
            "estimate, price, local allowance",
            own / off,
            "reference",
            None,
        ),
        Result(
            "budget guard: API round trips per call",
            f"{trips:.4f}",
            "a lease per ~50 calls",
            trips * 50,
            "< 1/50",
            trips < TARGET_ROUND_TRIPS_PER_CALL,
        ),
    ]
