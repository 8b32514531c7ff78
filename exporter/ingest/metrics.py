"""Prometheus metrics derived from stored calls: declared once, moved only for new rows.

The LLM metrics are plain numbers per label set, moved on the event loop and rendered to the
text format off it (`ExporterMetrics.scrape`); a label set's text is kept until its numbers move
again, so a scrape re-renders only what changed. Label sets are bounded, as the OpenTelemetry
SDK bounds attribute sets: past `max_series`, new ones share one overflow series.
"""

from __future__ import annotations

import asyncio
import re
import threading
from bisect import bisect_left
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.utils import floatToGoString

from exporter.ingest.model import LLMCall
from nexus_otel.attributes import BUDGET_EXCEEDED_ERROR

# The label set every LLM metric carries. No per-call values in labels: series stay bounded.
LLM_LABELS = (
    "service_name",
    "gen_ai_provider_name",
    "gen_ai_request_model",
    "gen_ai_operation_name",
    "nexus_operation",
)
# OpenTelemetry GenAI semantic-convention bucket boundaries.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
# 0.5 is a boundary on purpose: the "single call over $0.50" alert reads le="0.5".
COST_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write", "reasoning")
# Label sets with series of their own (NEXUS_METRICS_MAX_SERIES); calls of further ones share
# one overflow series, as past the OpenTelemetry SDK's cardinality limit (2,000 attribute sets
# per instrument). Each label set is two of the token histogram's (input, output), so 1,000
# keeps it within that limit; it is ~76 series and ~16 kB of text: 16 MiB per scrape at most.
DEFAULT_MAX_SERIES = 1000
OVERFLOW_LABEL = 'otel_metric_overflow="true"'
# error_type is a short code (a class name, an HTTP status, a provider's error code), never
# free text: anything longer or with other characters (a message, a header, a token) is OTHER.
ERROR_CODE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
OTHER_ERROR = "_OTHER"
# The LLM families, in the order they are written: (name as exposed, type, help).
FAMILIES = (
    ("gen_ai_client_token_usage", "histogram", "Tokens used per LLM call (input and output)."),
    ("gen_ai_client_operation_duration_seconds", "histogram", "Duration of LLM calls in seconds."),
    (
        "nexus_llm_tokens_total",
        "counter",
        "Tokens of LLM calls by type; cache and reasoning are subsets of input and output.",
    ),
    (
        "nexus_llm_calls_total",
        "counter",
        "LLM calls stored, by outcome: success, error, or blocked by the budget guard before"
        " any request was sent.",
    ),
    ("nexus_llm_cost_usd_total", "counter", "Cost of priced LLM calls in US dollars."),
    ("nexus_llm_call_cost_usd", "histogram", "Cost of single priced LLM calls in US dollars."),
    ("nexus_llm_unpriced_calls_total", "counter", "LLM calls of models with no known price."),
)
_HEADERS = tuple(f"# HELP {n} {h}\n# TYPE {n} {t}\n".encode() for n, t, h in FAMILIES)
# The overflow counter's `metric` label: the family names without the counter suffix.
_FAMILY_NAMES = tuple(n.removesuffix("_total") for n, _, _ in FAMILIES)


class Exposition(Protocol):
    """Something with text-format lines of its own to add to /metrics (the budget gauges)."""

    def exposition(self) -> bytes: ...


def error_code(error_type: str) -> str:
    """The error_type label of a failed call: its code, or OTHER when it is not a short code."""
    return error_type if ERROR_CODE.fullmatch(error_type) else OTHER_ERROR


class ExporterMetrics:
    """All metrics of one exporter (several may live in one process): the exporter's own in
    `registry`, the LLM metrics as bounded label sets, and added expositions (budget gauges)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, max_series: int = DEFAULT_MAX_SERIES
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self._declare_health(self.registry)
        self.overflow = Counter(
            "nexus_exporter_metric_overflow",
            "Calls whose measurements went to a metric's overflow series "
            '(otel_metric_overflow="true"): past the limit of label sets per metric.',
            ["metric"],
            registry=self.registry,
        )
        self.max_series = max_series
        self.expositions: list[Exposition] = []
        self._series: dict[tuple[str, ...], _Series] = {}
        self._overflow_series: _Series | None = None
        self._durations = 0  # duration children (label set, error type) outside the overflow
        self._series_lock = threading.Lock()  # the renderer's snapshot against new label sets
        self._render_lock = threading.Lock()
        self._scrape: asyncio.Future[list[bytes]] | None = None

    def _declare_health(self, r: CollectorRegistry) -> None:
        self.spans_received = Counter(
            "nexus_exporter_spans_received", "Spans received over OTLP.", registry=r
        )
        self.spans_ignored = Counter(
            "nexus_exporter_spans_ignored", "Spans received that describe no LLM call.", registry=r
        )
        self.spans_rejected = Counter(
            "nexus_exporter_spans_rejected", "Spans refused, by reason.", ["reason"], registry=r
        )
        self.spans_duplicate = Counter(
            "nexus_exporter_spans_duplicate", "LLM spans already stored (replays).", registry=r
        )
        self.spans_set_aside = Counter(
            "nexus_exporter_spans_set_aside",
            "LLM spans not stored as calls because another span of the same call, closer to"
            " the wire, is (two instrumentations of one request).",
            registry=r,
        )
        self.rows_written = Counter(
            "nexus_exporter_rows_written", "Rows newly stored in api_calls.", registry=r
        )
        self.requests = Counter(
            "nexus_exporter_requests",
            "OTLP requests answered, by HTTP status.",
            ["code"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "nexus_exporter_queue_depth_rows", "Rows waiting to be written.", registry=r
        )
        self.write_duration = Histogram(
            "nexus_exporter_write_duration_seconds",
            "Time to store one batch durably.",
            buckets=WRITE_BUCKETS,
            registry=r,
        )
        self.writes_rolled_back = Counter(
            "nexus_exporter_writes_rolled_back",
            "Write transactions PostgreSQL rolled back to break a deadlock (the same spans"
            " written at once in two orders), each written again.",
            registry=r,
        )
        self.storage_up = Gauge(
            "nexus_exporter_storage_up",
            "1 when the database answered the last write (before the first one: the connection"
            " made at start).",
            registry=r,
        )

    def observe_stored(self, calls: Iterable[LLMCall]) -> None:
        """Moves the LLM metrics for calls that were just stored for the first time."""
        self.apply(summarize_calls(calls))

    def apply(self, totals: MetricTotals) -> None:
        """Moves the LLM metrics by what `summarize_calls` found in a batch of stored calls."""
        for labels, label_totals in totals.items():
            series = self._series.get(labels) or self._admit(labels, label_totals.calls)
            label_totals.apply(series, self)
            series.version += 1  # after the numbers: a render that saw half of them redoes it

    def _admit(self, labels: tuple[str, ...], calls: int) -> _Series:
        """A new label set's series, or the overflow series once `max_series` exist."""
        if len(self._series) < self.max_series:
            series = _Series(_label_text(zip(LLM_LABELS, labels, strict=True)))
            with self._series_lock:
                self._series[labels] = series
            return series
        for name in _FAMILY_NAMES:
            self.overflow.labels(name).inc(calls)
        return self.overflow_series()

    def overflow_series(self) -> _Series:
        if self._overflow_series is None:
            labels = _label_text((name, "") for name in LLM_LABELS)
            self._overflow_series = _Series(f"{labels},{OVERFLOW_LABEL}")
        return self._overflow_series

    def duration_child(self, series: _Series, error_type: str, calls: int) -> _Buckets:
        """The duration histogram of a label set and error type, bounded like label sets: past
        `max_series` of them, new ones go to the overflow series (which has no error type)."""
        is_overflow = series is self._overflow_series
        if is_overflow:
            error_type = ""
        child = series.durations.get(error_type)
        if child is not None:
            return child
        if not is_overflow:
            if self._durations >= self.max_series:
                self.overflow.labels(_FAMILY_NAMES[1]).inc(calls)
                return self.duration_child(self.overflow_series(), "", calls)
            self._durations += 1
        child = series.durations[error_type] = _Buckets(len(_DURATION_BOUNDS))
        return child

    async def scrape(self) -> list[bytes]:
        """The exposition in pieces, rendered in a thread: one render at a time, and scrapes
        that arrive during it share its result instead of queueing threads of their own."""
        if self._scrape is None or self._scrape.done():
            self._scrape = asyncio.ensure_future(asyncio.to_thread(self.exposition_parts))
        # Shielded: a scraper that disconnects must not cancel the render others wait for.
        return await asyncio.shield(self._scrape)

    def exposition(self) -> bytes:
        """Everything in the Prometheus text format (version 0.0.4). Blocking."""
        return b"".join(self.exposition_parts())

    def exposition_parts(self) -> list[bytes]:
        """The exposition as pieces to send one after another: mostly each label set's text as
        kept, so a scrape copies nothing of the tens of megabytes it may come to. Blocking: the
        added expositions (the budget gauges, which may read the database) run meanwhile in
        threads of their own."""
        with ThreadPoolExecutor(max(1, len(self.expositions))) as pool:
            added = [pool.submit(exposition.exposition) for exposition in self.expositions]
            parts = [generate_latest(self.registry), *self._render_llm()]
            parts.extend(future.result() for future in added)
        return parts

    def _render_llm(self) -> list[bytes]:
        with self._render_lock:
            with self._series_lock:
                series = list(self._series.values())
            if self._overflow_series is not None:
                series.append(self._overflow_series)
            texts = [s.rendered() for s in series]
        out: list[bytes] = []
        for index, header in enumerate(_HEADERS):
            out.append(header)
            out.extend(text[index] for text in texts)
        return out


def _count_text(count: int) -> str:
    """floatToGoString of a count, without its cost for the common small ones (it writes
    1234567 as 1.234567e+06, Go's way, from 1e6 up)."""
    return f"{count}.0" if count < 1_000_000 else floatToGoString(count)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(pairs: Iterable[tuple[str, str]]) -> str:
    return ",".join(f'{name}="{_escape(value)}"' for name, value in pairs)


class _Buckets:
    """One histogram child: counts per bucket (not cumulative, the last is +Inf) and a sum."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.total = 0.0

    def add(self, observations: Observations) -> None:
        counts = self.counts
        for index, count in enumerate(observations.counts):
            if count:
                counts[index] += count
        self.total += observations.total

    def lines(self, name: str, labels: str, bounds: tuple[str, ...]) -> list[str]:
        counts, total = list(self.counts), self.total  # one read: buckets and count agree
        lines, cumulative = [], 0
        for le, count in zip(bounds, counts, strict=True):
            cumulative += count
            lines.append(f'{name}_bucket{{{labels},le="{le}"}} {_count_text(cumulative)}\n')
        lines.append(f"{name}_count{{{labels}}} {_count_text(cumulative)}\n")
        lines.append(f"{name}_sum{{{labels}}} {floatToGoString(total)}\n")
        return lines


class _Series:
    """The numbers of one label set, and its text as last rendered (with the version it shows)."""

    __slots__ = (
        "_text",
        "blocked",
        "call_cost",
        "cost",
        "durations",
        "errors",
        "input_usage",
        "labels",
        "output_usage",
        "successes",
        "tokens",
        "unpriced",
        "version",
    )

    def __init__(self, labels: str) -> None:
        self.labels = labels  # the label pairs as written, escaped once
        self.input_usage = _Buckets(len(_TOKEN_BOUNDS))
        self.output_usage = _Buckets(len(_TOKEN_BOUNDS))
        self.call_cost = _Buckets(len(_COST_BOUNDS))
        self.durations: dict[str, _Buckets] = {}  # by error type
        self.tokens = [0] * len(TOKEN_TYPES)
        self.successes = self.errors = self.blocked = self.unpriced = 0
        self.cost = Decimal(0)  # exact: the counter shows the float nearest the stored sum
        self.version = 0
        self._text: tuple[int, tuple[bytes, ...]] | None = None

    def rendered(self) -> tuple[bytes, ...]:
        """This label set's lines of each family (FAMILIES order), rendered again only when its
        numbers moved since."""
        version = self.version  # read before the numbers (apply moves it after them)
        cached = self._text
        if cached is not None and cached[0] == version:
            return cached[1]
        text = tuple("".join(lines).encode() for lines in self._lines())
        self._text = (version, text)
        return text

    def _lines(self) -> list[list[str]]:
        labels = self.labels
        usage: list[str] = []
        for token_type, child in (("input", self.input_usage), ("output", self.output_usage)):
            typed = f'{labels},gen_ai_token_type="{token_type}"'
            usage.extend(child.lines("gen_ai_client_token_usage", typed, _TOKEN_LE))
        durations: list[str] = []
        for error_type, child in list(self.durations.items()):
            typed = f'{labels},error_type="{_escape(error_type)}"'
            name = "gen_ai_client_operation_duration_seconds"
            durations.extend(child.lines(name, typed, _DURATION_LE))
        tokens = [
            f'nexus_llm_tokens_total{{{labels},gen_ai_token_type="{t}"}} {_count_text(n)}\n'
            for t, n in zip(TOKEN_TYPES, list(self.tokens), strict=True)
        ]
        outcomes = [("success", self.successes), ("error", self.errors)]
        if self.blocked:  # only where a budget guard refused calls: most series never have any
            outcomes.append(("blocked", self.blocked))
        calls = [
            f'nexus_llm_calls_total{{{labels},outcome="{outcome}"}} {_count_text(n)}\n'
            for outcome, n in outcomes
        ]
        cost = [f"nexus_llm_cost_usd_total{{{labels}}} {floatToGoString(self.cost)}\n"]
        call_cost = self.call_cost.lines("nexus_llm_call_cost_usd", labels, _COST_LE)
        unpriced = [
            f"nexus_llm_unpriced_calls_total{{{labels}}} {floatToGoString(self.unpriced)}\n"
        ]
        return [usage, durations, tokens, calls, cost, call_cost, unpriced]


class Observations:
    """One batch's observations of one histogram child, as bucket counts and a sum: added to
    the child in one go, they move it exactly as `observe` would one call at a time."""

    __slots__ = ("counts", "total")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * buckets
        self.total: float = 0

    def add(self, amount: float, bounds: tuple[float, ...]) -> None:
        self.total += amount
        index = bisect_left(bounds, amount)  # the first bucket with amount <= bound
        if index < len(bounds):
            self.counts[index] += 1


# Histogram buckets as prometheus_client keeps them: the bounds plus +Inf; and as `le` shows them.
_TOKEN_BOUNDS = (*map(float, TOKEN_BUCKETS), float("inf"))
_DURATION_BOUNDS = (*DURATION_BUCKETS, float("inf"))
_COST_BOUNDS = (*COST_BUCKETS, float("inf"))
_TOKEN_LE = tuple(map(floatToGoString, _TOKEN_BOUNDS))
_DURATION_LE = tuple(map(floatToGoString, _DURATION_BOUNDS))
_COST_LE = tuple(map(floatToGoString, _COST_BOUNDS))


@dataclass(slots=True)
class LabelTotals:
    """What one batch adds to the metrics of one label set. Plain data: it is computed where
    the calls are decoded and applied where the metrics live."""

    input_usage: Observations = field(default_factory=lambda: Observations(len(_TOKEN_BOUNDS)))
    output_usage: Observations = field(default_factory=lambda: Observations(len(_TOKEN_BOUNDS)))
    call_cost: Observations = field(default_factory=lambda: Observations(len(_COST_BOUNDS)))
    durations: dict[str, Observations] = field(default_factory=dict)  # by error type
    tokens: list[int] = field(default_factory=lambda: [0] * len(TOKEN_TYPES))
    successes: int = 0
    errors: int = 0
    blocked: int = 0  # refused by the budget guard: not an error of the provider
    unpriced: int = 0
    cost: Decimal = Decimal(0)

    def add(self, call: LLMCall) -> None:
        if call.error_type == BUDGET_EXCEEDED_ERROR and not call.success:
            # Blocked before any request left the app: no tokens, no cost, no provider latency
            # to observe, so it moves only its own count (histograms would read it as a $0 call).
            self.blocked += 1
            return
        self.input_usage.add(call.input_tokens, _TOKEN_BOUNDS)
        self.output_usage.add(call.output_tokens, _TOKEN_BOUNDS)
        tokens = self.tokens
        tokens[0] += call.input_tokens
        tokens[1] += call.output_tokens
        tokens[2] += call.cache_read_tokens
        tokens[3] += call.cache_write_tokens
        tokens[4] += call.reasoning_tokens
        error_type = error_code(call.error_type) if call.error_type else ""
        duration = self.durations.get(error_type)
        if duration is None:
            duration = self.durations[error_type] = Observations(len(_DURATION_BOUNDS))
        duration.add(call.duration_ms / 1000, _DURATION_BOUNDS)
        if call.success:
            self.successes += 1
        else:
            self.errors += 1
        if call.cost_usd is None:
            self.unpriced += 1
        else:
            self.cost += call.cost_usd
            self.call_cost.add(float(call.cost_usd), _COST_BOUNDS)

    @property
    def calls(self) -> int:
        return self.successes + self.errors + self.blocked

    def apply(self, series: _Series, metrics: ExporterMetrics) -> None:
        series.input_usage.add(self.input_usage)
        series.output_usage.add(self.output_usage)
        series.call_cost.add(self.call_cost)
        for error_type, observations in self.durations.items():
            calls = sum(observations.counts)
            metrics.duration_child(series, error_type, calls).add(observations)
        tokens = series.tokens
        for index, count in enumerate(self.tokens):
            if count:
                tokens[index] += count
        series.successes += self.successes
        series.errors += self.errors
        series.blocked += self.blocked
        series.unpriced += self.unpriced
        series.cost += self.cost


MetricTotals = dict[tuple[str, ...], LabelTotals]


def summarize_calls(calls: Iterable[Any]) -> MetricTotals:
    """The metric totals of stored calls (LLMCall, or rows with the same attribute names), per
    label set. Counters move once per label set and batch: their totals are sums, so adding a
    batch's sum is the same as adding each call, at a fraction of the cost."""
    totals: MetricTotals = {}
    for call in calls:
        labels = (
            call.service_name,
            call.provider,
            call.model,
            call.gen_ai_operation,
            call.operation,
        )
        label_totals = totals.get(labels)
        if label_totals is None:
            label_totals = totals[labels] = LabelTotals()
        label_totals.add(call)
    return totals
