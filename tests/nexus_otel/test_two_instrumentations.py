"""One call, one row, whoever instrumented it: OpenLLMetry's Anthropic instrumentation and the
Anthropic SDK's own tracing, both on, make two spans per call (each the root of its own trace,
one provider response id); a real `nexus-otel serve` stores one row per call, with the SDK's
exact usage, whether the two spans arrive in one request or in two, in either order."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import pytest
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from exporter.simulator import ProviderSimulator
from tests.ingest.otlp_helpers import protobuf_body
from tests.nexus_otel.clients import ANTHROPIC_KEY, MODELS
from tests.support import ExporterProcess, metric_value, query

SDK_SCOPE = "com.anthropic.sdk.python"  # the Anthropic SDK's own tracing
OPENLLMETRY_SCOPE = "opentelemetry.instrumentation.anthropic"
MESSAGES = [{"role": "user", "content": "Three facts about the ocean, for a carousel."}]


@pytest.fixture
def traced() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """OpenLLMetry's instrumentation and the SDK's tracing into one in-memory exporter."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "two-tracers"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    instrumentor = AnthropicInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, memory
    finally:
        instrumentor.uninstrument()


def _calls(sim: ProviderSimulator, provider: TracerProvider) -> list[Any]:
    """Four calls (sync and async, whole and streamed); the usage each response reported."""
    options: dict[str, Any] = {
        "api_key": ANTHROPIC_KEY,
        "base_url": sim.anthropic_base_url,
        "max_retries": 0,
        "open_telemetry": {"tracer_provider": provider},  # the SDK's own tracing, on
    }
    kwargs: dict[str, Any] = {"model": MODELS["anthropic"], "max_tokens": 300, "messages": MESSAGES}
    with anthropic.Anthropic(**options) as client:
        messages = [client.messages.create(**kwargs)]
        with client.messages.stream(**kwargs) as stream:
            "".join(stream.text_stream)
            messages.append(stream.get_final_message())

    async def both_async() -> list[Any]:
        async with anthropic.AsyncAnthropic(**options) as async_client:
            found = [await async_client.messages.create(**kwargs)]
            async with async_client.messages.stream(**kwargs) as stream:
                "".join([text async for text in stream.text_stream])
                found.append(await stream.get_final_message())
        return found

    return messages + asyncio.run(both_async())


def _post(exporter: ExporterProcess, spans: list[ReadableSpan]) -> None:
    response = httpx.post(
        f"{exporter.base_url}/v1/traces",
        content=protobuf_body(spans),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert (response.status_code, response.content) == (200, b""), response.content


def _set_aside(exporter: ExporterProcess) -> float:
    text = httpx.get(f"{exporter.base_url}/metrics").text
    return metric_value(text, "nexus_exporter_spans_set_aside_total")


@pytest.mark.parametrize("arrival", ["one request", "SDK spans first", "OpenLLMetry spans first"])
def test_two_instrumentations_of_one_call_store_one_exact_row(
    simulator: ProviderSimulator,
    traced: tuple[TracerProvider, InMemorySpanExporter],
    exporter: ExporterProcess,
    database_url: str,
    arrival: str,
) -> None:
    provider, memory = traced
    messages = _calls(simulator, provider)
    spans = list(memory.get_finished_spans())
    by_scope = {
        scope: [
            s for s in spans if s.instrumentation_scope and s.instrumentation_scope.name == scope
        ]
        for scope in (SDK_SCOPE, OPENLLMETRY_SCOPE)
    }
    assert [len(found) for found in by_scope.values()] == [4, 4], [s.name for s in spans]
    before = _set_aside(exporter)
    if arrival == "one request":
        _post(exporter, spans)
    else:
        first, second = (SDK_SCOPE, OPENLLMETRY_SCOPE)
        if arrival != "SDK spans first":
            first, second = second, first
        _post(exporter, by_scope[first])
        _post(exporter, by_scope[second])
    ids = [m.id for m in messages]
    rows = query(
        database_url,
        "SELECT attributes ->> 'gen_ai.response.id', span_name, model, input_tokens,"
        " output_tokens FROM api_calls WHERE attributes ->> 'gen_ai.response.id' = ANY(%s)",
        (ids,),
    )
    expected = {
        (
            m.id,
            "anthropic.messages.create",  # the SDK's span: the one closest to the wire
            MODELS["anthropic"],
            m.usage.input_tokens
            + (m.usage.cache_read_input_tokens or 0)
            + (m.usage.cache_creation_input_tokens or 0),
            m.usage.output_tokens,
        )
        for m in messages
    }
    assert len(rows) == 4
    assert set(rows) == expected
    assert _set_aside(exporter) - before == 4
