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
        self.apply(summarize_calls(calls))

    def apply(self, totals: MetricTotals) -> None:
        """Moves the LLM metrics by what `summarize_calls` found in a batch of stored calls."""
        for labels, label_totals in totals.items():
            series = self._series.get(labels) or self._make_series(labels)
            label_totals.apply(series, self.operation_duration)

    def _make_series(self, labels: tuple[str, ...]) -> _Series:
        # Looking up label children costs more than observing: do it once per label set.
        series = _Series(
            labels=labels,
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

    labels: tuple[str, ...]
    input_usage: Any
    output_usage: Any
    tokens: tuple[Any, ...]
    successes: Any
    errors: Any
    cost: Any
    call_cost: Any
    unpriced: Any
    durations: dict[str, Any]  # operation_duration children, by error type


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

    def apply(self, child: Any) -> None:
        child._sum.inc(self.total)
        for bucket, count in zip(child._buckets, self.counts, strict=True):
            if count:
                bucket.inc(count)


# Histogram buckets as prometheus_client keeps them: the bounds plus +Inf.
_TOKEN_BOUNDS = (*map(float, TOKEN_BUCKETS), float("inf"))
_DURATION_BOUNDS = (*DURATION_BUCKETS, float("inf"))
_COST_BOUNDS = (*COST_BUCKETS, float("inf"))


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
    unpriced: int = 0
    cost: Decimal = Decimal(0)

    def add(self, call: LLMCall) -> None:
        self.input_usage.add(call.input_tokens, _TOKEN_BOUNDS)
        self.output_usage.add(call.output_tokens, _TOKEN_BOUNDS)
        tokens = self.tokens
        tokens[0] += call.input_tokens
        tokens[1] += call.output_tokens
        tokens[2] += call.cache_read_tokens
        tokens[3] += call.cache_write_tokens
        tokens[4] += call.reasoning_tokens
        error_type = call.error_type or ""
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

    def apply(self, series: _Series, operation_duration: Histogram) -> None:
        self.input_usage.apply(series.input_usage)
        self.output_usage.apply(series.output_usage)
        self.call_cost.apply(series.call_cost)
        for error_type, observations in self.durations.items():
            child = series.durations.get(error_type)
            if child is None:
                child = series.durations[error_type] = operation_duration.labels(
                    *series.labels, error_type
                )
            observations.apply(child)
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


MetricTotals = dict[tuple[str, ...], LabelTotals]


def summarize_calls(calls: Iterable[Any]) -> MetricTotals:
    """The metric totals of stored calls (LLMCall, or rows with the same attribute names), per
    label set. Counters move once per label set and batch: their totals are sums, so adding a
    batch's sum is the same as adding each call, at a fraction of the cost."""
    totals: MetricTotals = {}
    for call in calls:
        labels = (
            call.service_name, call.provider, call.model, call.gen_ai_operation, call.operation
        )  # fmt: skip
        label_totals = totals.get(labels)
        if label_totals is None:
            label_totals = totals[labels] = LabelTotals()
        label_totals.add(call)
    return totals
