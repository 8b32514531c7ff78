from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from exporter.simulator import ProviderSimulator


@pytest.fixture(scope="module")
def simulator() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=3) as sim:
        yield sim


@pytest.fixture
def spans() -> Iterator[Callable[..., InMemorySpanExporter]]:
    """`spans(**instrument_options)`: instruments into an in-memory exporter; undone afterwards."""

    def start(**options: Any) -> InMemorySpanExporter:
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        nexus_otel.instrument(tracer_provider=provider, **options)
        return memory

    yield start
    nexus_otel.uninstrument()
