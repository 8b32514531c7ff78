"""Prometheus metrics derived from stored calls: declared once, moved only for new rows."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from exporter.model import LLMCall

# The label set every LLM metric carries (DESIGN.md). No per-call values in labels.
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


class ExporterMetrics:
    """All metrics of one exporter, in their own registry (several may live in one process)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.token_usage = Histogram(
            "gen_ai_client_token_usage", "Tokens used per LLM call (input and output).",
            [*LLM_LABELS, "gen_ai_token_type"], buckets=TOKEN_BUCKETS, registry=r,
        )  # fmt: skip
        self.operation_duration = Histogram(
            "gen_ai_client_operation_duration_seconds", "Duration of LLM calls in seconds.",
            [*LLM_LABELS, "error_type"], buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "nexus_llm_tokens", "Tokens of LLM calls by type; cache and reasoning are subsets "
            "of input and output.", [*LLM_LABELS, "gen_ai_token_type"], registry=r,
        )  # fmt: skip
        self.calls = Counter(
            "nexus_llm_calls", "LLM calls stored, by outcome.", [*LLM_LABELS, "outcome"], registry=r
        )
        self.cost = Counter(
            "nexus_llm_cost_usd", "Cost of priced LLM calls in US dollars.", LLM_LABELS, registry=r
        )
        self.call_cost = Histogram(
            "nexus_llm_call_cost_usd", "Cost of single priced LLM calls in US dollars.",
            LLM_LABELS, buckets=COST_BUCKETS, registry=r,
        )  # fmt: skip
        self.unpriced = Counter(
            "nexus_llm_unpriced_calls", "LLM calls of models with no known price.", LLM_LABELS,
            registry=r,
        )  # fmt: skip
        self._declare_health(r)
        self._series: dict[tuple[str, ...], _Series] = {}

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
        self.rows_written = Counter(
            "nexus_exporter_rows_written", "Rows newly stored in api_calls.", registry=r
        )
        self.requests = Counter(
            "nexus_exporter_requests", "OTLP requests answered, by HTTP status.", ["code"],
            registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "nexus_exporter_queue_depth_rows", "Rows waiting to be written.", registry=r
        )
        self.write_duration = Histogram(
            "nexus_exporter_write_duration_seconds", "Time to store one batch durably.",
            buckets=WRITE_BUCKETS, registry=r,
        )  # fmt: skip
        self.storage_up = Gauge(
            "nexus_exporter_storage_up", "1 when the last database write succeeded.", registry=r
        )

    def observe_stored(self, calls: Iterable[LLMCall]) -> None:
        """Moves the LLM metrics for calls that were just stored for the first time."""
        # Counters move once per label set and batch: their totals are sums, so adding a
        # batch's sum is the same as adding each call, at a fraction of the cost.
        batch: dict[tuple[str, ...], _BatchTotals] = {}
        for call in calls:
            labels = (
                call.service_name, call.provider, call.model, call.gen_ai_operation, call.operation
            )  # fmt: skip
            totals = batch.get(labels)
            if totals is None:
                totals = batch[labels] = _BatchTotals(
                    self._series.get(labels) or self._make_series(labels)
                )
            series = totals.series
            totals.input_usage.add(call.input_tokens)
            totals.output_usage.add(call.output_tokens)
            totals.tokens[0] += call.input_tokens
            totals.tokens[1] += call.output_tokens
            totals.tokens[2] += call.cache_read_tokens
            totals.tokens[3] += call.cache_write_tokens
            totals.tokens[4] += call.reasoning_tokens
            error_type = call.error_type or ""
            duration = totals.durations.get(error_type)
            if duration is None:
                child = series.durations.get(error_type)
                if child is None:
                    child = series.durations[error_type] = self.operation_duration.labels(
                        *labels, error_type
                    )
                duration = totals.durations[error_type] = _Observations(child)
            duration.add(call.duration_ms / 1000)
            if call.success:
                totals.successes += 1
            else:
                totals.errors += 1
            if call.cost_usd is None:
                totals.unpriced += 1
            else:
                totals.cost += call.cost_usd
                totals.call_cost.add(float(call.cost_usd))
        for totals in batch.values():
            totals.apply()

    def _make_series(self, labels: tuple[str, ...]) -> _Series:
        # Looking up label children costs more than observing: do it once per label set.
        series = _Series(
            input_usage=self.token_usage.labels(*labels, "input"),
            output_usage=self.token_usage.labels(*labels, "output"),
            tokens=tuple(self.tokens.labels(*labels, t) for t in TOKEN_TYPES),
            successes=self.calls.labels(*labels, "success"),
            errors=self.calls.labels(*labels, "error"),
            cost=self.cost.labels(*labels),
            call_cost=self.call_cost.labels(*labels),
            unpriced=self.unpriced.labels(*labels),
            durations={},
        )
        self._series[labels] = series
        return series


@dataclass(frozen=True, slots=True)
class _Series:
    """The metric children of one label set."""

    input_usage: Any
    output_usage: Any
    tokens: tuple[Any, ...]
    successes: Any
    errors: Any
    cost: Any
    call_cost: Any
    unpriced: Any
    durations: dict[str, Any]  # operation_duration children, by error type


class _Observations:
    """One batch's observations of one histogram child, added to it in one go: the bucket and
    sum values `observe` would have moved one call at a time (it scans the buckets in Python)."""

    __slots__ = ("bounds", "child", "counts", "total")

    def __init__(self, child: Any) -> None:
        self.child = child
        self.bounds: list[float] = child._upper_bounds
        self.counts = [0] * len(self.bounds)
        self.total: float = 0

    def add(self, amount: float) -> None:
        self.total += amount
        index = bisect_left(self.bounds, amount)  # the first bucket with amount <= bound
        if index < len(self.counts):
            self.counts[index] += 1

    def apply(self) -> None:
        self.child._sum.inc(self.total)
        for bucket, count in zip(self.child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


@dataclass(slots=True)
class _BatchTotals:
    """What one batch adds to the metrics of one label set."""

    series: _Series
    input_usage: _Observations = field(init=False)
    output_usage: _Observations = field(init=False)
    call_cost: _Observations = field(init=False)
    durations: dict[str, _Observations] = field(default_factory=dict)
    tokens: list[int] = field(default_factory=lambda: [0] * len(TOKEN_TYPES))
    successes: int = 0
    errors: int = 0
    unpriced: int = 0
    cost: Decimal = Decimal(0)

    def __post_init__(self) -> None:
        self.input_usage = _Observations(self.series.input_usage)
        self.output_usage = _Observations(self.series.output_usage)
        self.call_cost = _Observations(self.series.call_cost)

    def apply(self) -> None:
        series = self.series
        for observations in (self.input_usage, self.output_usage, self.call_cost):
            observations.apply()
        for observations in self.durations.values():
            observations.apply()
        for counter, count in zip(series.tokens, self.tokens, strict=True):
            if count:
                counter.inc(count)
        if self.successes:
            series.successes.inc(self.successes)
        if self.errors:
            series.errors.inc(self.errors)
        if self.unpriced:
            series.unpriced.inc(self.unpriced)
        if self.cost:
            series.cost.inc(float(self.cost))
