"""The budget guard's cost: the same groq SDK calls against the instrumentation benchmark's
local provider server (a process of its own), with the guard on (`block`, a budget far from
its limit) and off, leasing from a real `nexus-otel serve` on an embedded PostgreSQL. Spans go
to a no-op exporter.

As the instrumentation benchmark does, one process switches between the two configurations
50 calls at a time, so a busy machine slows both alike. The figure is the median, over pairs of
neighbouring blocks (one guarded, one not, in alternating order), of the difference of the two
blocks' median call times: a drift of the machine's speed moves both blocks of a pair, which a
difference of the medians of all calls does not cancel (that one is printed beside it). Also
counted: the API round trips the guard made per guarded call (leases and refills), the CPU time
per call (thread time, paired the same way), and the median time of the guard's own check.

Two workloads, half the calls each, so that the guard's cache of token counts cannot flatter
the result: `single`, one question per call that no call asked before (every call's text is
new to the tokenizer: the guard's worst case), and `chat`, conversations that grow by a
question and its answer per call, a new one every HISTORY_TURNS turns (each call has two texts
the guard has not seen, the last answer and the new question, as real chats do).
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from bench.common import Result

TARGET_ADDED_US = 100.0
TARGET_ROUND_TRIPS_PER_CALL = 1 / 50
ROUND = 50  # calls per configuration before switching
HISTORY_TURNS = 6  # questions in a conversation before the next one starts
Messages = list[dict[str, str]]


def _questions() -> Iterator[Messages]:
    """One question per call, none asked before."""
    for number in itertools.count():
        yield [{"role": "user", "content": f"Write fact number {number} about coffee mornings."}]


def _conversations() -> Iterator[Messages]:
    """Chats that grow by one turn per call, each ending with a question not asked before."""
    history: Messages = []
    for number in itertools.count():
        if number % HISTORY_TURNS == 0:
            history = [{"role": "system", "content": "You answer in one sentence."}]
        question = f"Tell me, in turn {number}, what tea goes with rain."
        yield [*history, {"role": "user", "content": question}]
        history += [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"Turn {number}: a smoky black tea, hot."},
        ]


WORKLOADS: dict[str, Callable[[], Iterator[Messages]]] = {
    "single": _questions,
    "chat": _conversations,
}


def _discarding_provider() -> Any:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    return provider


class Measured:
    """Per configuration (guarded or not): each block's median call time and CPU per call, and
    the guard's own check's times."""

    def __init__(self) -> None:
        self.calls: dict[bool, list[float]] = {False: [], True: []}
        self.blocks: dict[bool, list[float]] = {False: [], True: []}
        self.cpu: dict[bool, list[float]] = {False: [], True: []}
        self.checks: list[float] = []

    def paired(self, samples: dict[bool, list[float]]) -> float:
        """The median of the pairs' differences (guarded minus not), in µs."""
        pairs = zip(samples[True], samples[False], strict=True)
        return statistics.median(on - off for on, off in pairs) * 1e6


def _measure(api_url: str, base_url: str, calls: int) -> tuple[dict[str, Measured], float]:
    """Each workload's times, and the API round trips per guarded call."""
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
    results: dict[str, Measured] = {}
    guarded_calls = 0
    for name, workload in WORKLOADS.items():
        chats = workload()

        def call() -> None:
            client.chat.completions.create(
                model="llama-3.3-70b-versatile",
                messages=next(chats),  # noqa: B023 - called within this loop step only
                max_tokens=64,
            )

        for _ in range(ROUND):  # warm up both paths (imports, prices, the first lease)
            call()
        if not results:
            guard.api.round_trips = 0
        checks.clear()
        results[name] = measured = Measured()
        for index in range(max(1, calls // (2 * ROUND * len(WORKLOADS)))):
            for guarded in (False, True) if index % 2 else (True, False):
                interceptor.guard = guard if guarded else None
                _block(call, guarded, measured)
        interceptor.guard = guard
        measured.checks = list(checks)
        guarded_calls += len(measured.calls[True])
    nexus_otel.shutdown()
    return results, guard.api.round_trips / guarded_calls


def _block(call: Callable[[], None], guarded: bool, measured: Measured) -> None:
    times = []
    cpu_started = time.thread_time()
    for _ in range(ROUND):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    measured.cpu[guarded].append((time.thread_time() - cpu_started) / ROUND)
    measured.calls[guarded] += times
    measured.blocks[guarded].append(statistics.median(times))


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
                        load_before = os.getloadavg()[0]
                        measured, trips = _measure(exporter.api_url, provider_url, calls)
                        load_after = os.getloadavg()[0]
                    finally:
                        provider_server.communicate("")  # closing its stdin stops it
                finally:
                    exporter.stop()
        finally:
            server.stop()
    load = f"load average {load_before:.1f} to {load_after:.1f}"
    results = [row for name, m in measured.items() for row in _results(name, m, load)]
    return [
        *results,
        Result(
            "budget guard: API round trips per call",
            f"{trips:.4f}",
            "a lease per ~50 calls",
            trips * 50,
            "< 1/50",
            trips < TARGET_ROUND_TRIPS_PER_CALL,
        ),
    ]


def _results(name: str, measured: Measured, load: str) -> list[Result]:
    off, on = (statistics.median(measured.calls[k]) * 1e6 for k in (False, True))
    added = measured.paired(measured.blocks)
    own = statistics.median(measured.checks) * 1e6
    cpu_off = statistics.median(measured.cpu[False])
    return [
        Result(
            f"budget guard, {name}: added time per call (paired blocks)",
            f"{added:.0f} µs",
            f"{off:.0f} µs per call without; difference of medians {on - off:.0f} µs; {load}",
            (off + added) / off,
            f"< {TARGET_ADDED_US:.0f} µs",
            added < TARGET_ADDED_US,
        ),
        Result(
            f"budget guard, {name}: CPU time added per call (paired blocks)",
            f"{measured.paired(measured.cpu):.0f} µs",
            f"{cpu_off * 1e6:.0f} µs per call without",
            statistics.median(measured.cpu[True]) / cpu_off,
            "reference",
            None,
        ),
        Result(
            f"budget guard, {name}: its own check per call (median)",
            f"{own:.0f} µs",
            "read the request, estimate, price, take from the allowance",
            own / off,
            "reference",
            None,
        ),
    ]
