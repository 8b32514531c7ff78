"""Where the ingest benchmark's CPU goes, per span.

Two views. `stage_cpu` runs the exporter's own decode path (what `exporter.ingest.decode.convert`
and `CallBatch.of` run in a decode worker) one stage at a time over the benchmark's bodies, in
this process, and times each stage with the process's CPU clock: decode (protobuf to spans),
normalize, price, encode (binary COPY tuples and lookup lines), metrics (summary and metric totals,
lease settlements). Nothing is added to the exporter to measure it.

`TreeCpu` reads the CPU time the operating system counts for a process and its descendants
(live ones and those already reaped), so a live run can be split between the exporter's event
loop, its decode workers and PostgreSQL (write: COPY, unique keys, duplicates, summaries,
triggers).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil

from exporter.ingest import otlp
from exporter.ingest.decode import price_call
from exporter.ingest.leases import LEASE_ID_ATTRIBUTE, RESERVED_ATTRIBUTE, settlements
from exporter.ingest.metrics import summarize_calls
from exporter.ingest.model import LLMCall
from exporter.ingest.normalize import to_llm_call
from exporter.ingest.not_calls import NotCalls
from exporter.ingest.pricing import PriceBook
from exporter.ingest.rows import CallBatch, encode_row, lookups_for
from exporter.ingest.summaries import ten_minute_totals

STAGES = ("decode", "normalize", "price", "encode", "metrics")
# Stages are timed over this many passes, each over bodies of its own, and the fastest pass
# kept: the first fills the process's caches (attribute pairs, scrubbed strings, prices) as a
# worker's first requests do, and the machine's other work only ever adds time. Passing over
# the same bodies again would flatter every stage: each span's own values (ids, correlation
# ids, counts) would then come from those caches too, as they never do in a live worker.
PASSES = 3


def stage_cpu(passes: Sequence[Sequence[bytes]]) -> dict[str, float]:
    """CPU seconds per span received (LLM or not) of each stage, fastest of the passes, each
    pass over its own bodies."""
    prices = PriceBook()
    best = dict.fromkeys(STAGES, float("inf"))
    for bodies in passes:
        totals = dict.fromkeys(STAGES, 0.0)
        spans = sum(_time_stages(body, prices, totals) for body in bodies)
        if sum(totals.values()) / spans < sum(best.values()):
            best = {stage: seconds / spans for stage, seconds in totals.items()}
    return best


def _time_stages(body: bytes, prices: PriceBook, totals: dict[str, float]) -> int:
    clock = time.process_time
    started = clock()
    not_calls = NotCalls()  # skipped undecoded, as the decode workers do
    raws = list(otlp.iter_raw_spans(otlp.parse_request(body, otlp.PROTOBUF), [], not_calls))
    decoded = clock()
    calls: list[LLMCall] = [c for c in map(to_llm_call, raws) if c is not None]
    normalized = clock()
    for call in calls:
        price_call(prices, call)
    priced = clock()
    rows = [encode_row(c) for c in calls]
    CallBatch.packed(rows, lookups_for(calls), frozenset())
    encoded = clock()
    dict(ten_minute_totals(calls))
    summarize_calls(calls)
    settlements(
        (c.attributes[LEASE_ID_ATTRIBUTE], c.attributes.get(RESERVED_ATTRIBUTE))
        for c in calls
        if LEASE_ID_ATTRIBUTE in c.attributes
    )
    counted = clock()
    for stage, seconds in zip(
        STAGES,
        (decoded - started, normalized - decoded, priced - normalized, encoded - priced,
         counted - encoded),
        strict=True,
    ):  # fmt: skip
        totals[stage] += seconds
    return len(raws) + not_calls.count


@dataclass(frozen=True)
class CpuSplit:
    """CPU seconds of one process (`own`) and of its descendants (`descendants`)."""

    own: float
    descendants: float

    def __sub__(self, other: CpuSplit) -> CpuSplit:
        return CpuSplit(self.own - other.own, self.descendants - other.descendants)


class TreeCpu:
    """CPU time of a process and its descendants, those already reaped included."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    @classmethod
    def of_postgres(cls, pgdata: Path) -> TreeCpu:
        """The embedded PostgreSQL's postmaster (the first line of its postmaster.pid)."""
        return cls(int((pgdata / "postmaster.pid").read_text().split()[0]))

    def read(self) -> CpuSplit:
        times = self.process.cpu_times()
        descendants = times.children_user + times.children_system
        for child in self.process.children(recursive=True):
            try:
                t = child.cpu_times()
            except psutil.Error:  # ended just now: its time is with its parent's children
                continue
            # A live descendant's own time, and that of its own children it has reaped.
            descendants += t.user + t.system + t.children_user + t.children_system
        return CpuSplit(times.user + times.system, descendants)
