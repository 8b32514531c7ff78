"""Every OpenAI-compatible provider through the official `openai` SDK, with `base_url` at the
provider's real URL (the connection alone routed to the provider simulator), into a real
`nexus-otel serve`: each call is one row, named after the provider, priced by genai-prices as that
provider prices it, or by what the provider says it charged. Calls that bill nothing (token
counting, model listing) are no rows."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import anthropic
import genai_prices
import openai
import pytest
from google import genai
from google.genai import types
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import nexus_otel
from exporter.simulator import ProviderSimulator
from nexus_otel._providers import SwappableTracerProvider
from tests.nexus_otel.clients import ANTHROPIC_KEY, GEMINI_KEY, MESSAGES, OPENAI_KEY
from tests.nexus_otel.routed import routed_client
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
SERVICE = "compatible-providers-tests"
USAGE = {"input": 1200, "output": 300, "cache_read": 200}
USAGE_HEADER = {"x-sim-usage": "input=1200,output=300,cache_read=200"}
GATEWAY = "llm.internal"  # a self-hosted OpenAI-compatible server the app names itself
COLUMNS = ("provider, model, response_model, server_address, input_tokens, output_tokens, "
           "cache_read_tokens, reasoning_tokens, cost_usd, cost_source, usage_source, success, "
           "timestamp, attributes")  # fmt: skip


@dataclass(frozen=True)
class Provider:
    base_url: str  # what the app gives the SDK
    model: str
    provider: str  # the name its rows are stored under
    price_id: str | None  # the genai-prices provider pricing it; None: genai-prices has no price
    response_model: str | None = None  # the model the answer names, when not the requested one
    azure: bool = False  # called with `openai.AzureOpenAI`, `model` naming a deployment


LLAMA = "meta-llama/Llama-3.3-70B-Instruct-Turbo"
AZURE = {"model": "carousel-gpt4o", "provider": "azure.ai.openai", "price_id": "azure",
         "response_model": "gpt-4o-2024-11-20", "azure": True}  # fmt: skip
PROVIDERS = {
    "api.deepseek.com": Provider("https://api.deepseek.com", "deepseek-chat", "deepseek",
                                 "deepseek"),
    "api.mistral.ai": Provider("https://api.mistral.ai/v1", "mistral-small-latest", "mistral_ai",
                               "mistral"),
    "api.x.ai": Provider("https://api.x.ai/v1", "grok-3", "x_ai", "x-ai"),
    "api.together.xyz": Provider("https://api.together.xyz/v1", LLAMA, "together_ai", "together"),
    "api.together.ai": Provider("https://api.together.ai/v1", LLAMA, "together_ai", "together"),
    "api.fireworks.ai": Provider("https://api.fireworks.ai/inference/v1",
                                 "accounts/fireworks/models/deepseek-v3p2", "fireworks",
                                 "fireworks"),
    "openrouter.ai": Provider("https://openrouter.ai/api/v1", "openai/gpt-4o-mini", "openrouter",
                              "openrouter"),
    "carousel.openai.azure.com": Provider("https://carousel.openai.azure.com", **AZURE),
    "carousel.cognitiveservices.azure.com": Provider(
        "https://carousel.cognitiveservices.azure.com", **AZURE),
    "carousel.services.ai.azure.com": Provider("https://carousel.services.ai.azure.com", **AZURE),
    GATEWAY: Provider(f"https://{GATEWAY}:8443/v1", "deepseek-chat", "deepseek", "deepseek"),
}  # fmt: skip
# A model its provider serves that genai-prices has no price for: unpriced (NULL), never priced as
# another provider's model nor as $0.
UNPRICED = Provider("https://api.fireworks.ai/inference/v1",
                    "accounts/fireworks/models/house-llama-ft", "fireworks", None)  # fmt: skip


class Stack:
    def __init__(self, exporter: ExporterProcess, database_url: str, sim: ProviderSimulator):
        self.exporter, self.database_url, self.sim = exporter, database_url, sim
        self.spans = InMemorySpanExporter()

    def rows(self, where: str, params: tuple[Any, ...], expected: int) -> list[dict[str, Any]]:
        """The rows `where` selects, once `expected` of them have arrived (and any extra one)."""
        assert nexus_otel.force_flush()
        statement = f"SELECT {COLUMNS} FROM api_calls WHERE {where} ORDER BY timestamp"
        deadline = time.monotonic() + 15
        while len(query(self.database_url, statement, params)) < expected:
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        time.sleep(0.3)  # a row that should not be there would show by now
        found = query(self.database_url, statement, params)
        return [dict(zip(COLUMNS.split(", "), row, strict=True)) for row in found]


@pytest.fixture(scope="module")
def stack(exporter: ExporterProcess, database_url: str) -> Iterator[Stack]:
    with ProviderSimulator(seed=11) as sim:
        stack = Stack(exporter, database_url, sim)
        nexus_otel.instrument(SERVICE, endpoint=exporter.base_url,
                              providers={f"{GATEWAY}:8443": "DeepSeek"})  # fmt: skip
        provider = trace.get_tracer_provider()
        assert isinstance(provider, SwappableTracerProvider)
        provider.add_span_processor(SimpleSpanProcessor(stack.spans))
        try:
            yield stack
        finally:
            nexus_otel.shutdown()


def call(sim: ProviderSimulator, provider: Provider, headers: dict[str, str],
         stream: bool = False) -> tuple[str, list[tuple[str, int]]]:  # fmt: skip
    """One chat completion through the openai SDK; the text, and where it meant to connect."""
    http, hosts = routed_client(sim)
    client: Any
    if provider.azure:
        client = openai.AzureOpenAI(api_key=OPENAI_KEY, azure_endpoint=provider.base_url,
                                    api_version="2024-10-21", http_client=http,
                                    max_retries=0)  # fmt: skip
    else:
        client = openai.OpenAI(api_key=OPENAI_KEY, base_url=provider.base_url, http_client=http,
                               max_retries=0)  # fmt: skip
    if provider.response_model:
        headers = {**headers, "x-sim-response-model": provider.response_model}
    kwargs: dict[str, Any] = {"model": provider.model, "messages": MESSAGES, "max_tokens": 400,
                              "extra_headers": headers}  # fmt: skip
    if stream:
        chunks = client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), hosts
    return client.chat.completions.create(**kwargs).choices[0].message.content or "", hosts


def list_price(price_id: str, model: str, at: datetime) -> Decimal:
    """genai-prices' own price of USAGE for `model` at `at` (DeepSeek's price is by time of day)."""
    usage = genai_prices.Usage(input_tokens=USAGE["input"], output_tokens=USAGE["output"],
                               cache_read_tokens=USAGE["cache_read"])  # fmt: skip
    return genai_prices.calc_price(usage, model, provider_id=price_id,
                                   genai_request_timestamp=at).total_price  # fmt: skip


def tagged(correlation_id: str) -> Any:
    return nexus_otel.operation("compatible", correlation_id=correlation_id)


@pytest.mark.parametrize("host", list(PROVIDERS))
def test_each_provider_host_is_named_and_priced(stack: Stack, host: str) -> None:
    provider = PROVIDERS[host]
    correlation_id = f"host-{uuid.uuid4().hex[:8]}"
    with tagged(correlation_id) as op:
        text, hosts = call(stack.sim, provider, USAGE_HEADER)
    assert text and {h for h, _ in hosts} == {host}  # the SDK meant the provider's own host
    [row] = stack.rows("correlation_id = %s", (correlation_id,), 1)
    priced_model = provider.response_model or provider.model
    assert provider.price_id is not None
    cost = list_price(provider.price_id, priced_model, row["timestamp"])
    assert {k: v for k, v in row.items() if k not in ("timestamp", "attributes")} == {
        "provider": provider.provider, "model": provider.model,
        "response_model": provider.response_model or provider.model, "server_address": host,
        "input_tokens": 1200, "output_tokens": 300, "cache_read_tokens": 200,
        "reasoning_tokens": 0, "cost_usd": cost, "cost_source": "genai-prices",
        "usage_source": "response", "success": True,
    }  # fmt: skip
    assert op.cost_usd == cost  # the handle prices it as the row is priced


def test_a_model_without_a_price_is_unpriced(stack: Stack) -> None:
    correlation_id = f"unpriced-{uuid.uuid4().hex[:8]}"
    with tagged(correlation_id) as op:
        call(stack.sim, UNPRICED, USAGE_HEADER)
    [row] = stack.rows("correlation_id = %s", (correlation_id,), 1)
    assert (row["provider"], row["model"], row["input_tokens"], row["output_tokens"]) == (
        "fireworks", UNPRICED.model, 1200, 300)  # fmt: skip
    assert (row["cost_usd"], row["cost_source"], op.cost_usd) == (None, None, None)


OPENROUTER = PROVIDERS["openrouter.ai"]
# (x-sim-* cost headers, the cost stored): OpenRouter's `usage.cost`; with the user's own key
# (BYOK), OpenRouter's fee plus the upstream provider's charge.
CHARGES = {
    "json": ({"x-sim-cost": "0.00042"}, False, Decimal("0.00042")),
    "stream": ({"x-sim-cost": "0.00042"}, True, Decimal("0.00042")),
    "byok": ({"x-sim-cost": "0.000021", "x-sim-cost-upstream": "0.00042"}, False,
             Decimal("0.000441")),
    "free": ({"x-sim-cost": "0"}, False, Decimal(0)),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CHARGES))
def test_openrouter_cost_is_preferred_to_the_list_price(stack: Stack, case: str) -> None:
    headers, stream, charged = CHARGES[case]
    correlation_id = f"charged-{uuid.uuid4().hex[:8]}"
    with tagged(correlation_id) as op:
        call(stack.sim, OPENROUTER, {**USAGE_HEADER, **headers}, stream=stream)
    [row] = stack.rows("correlation_id = %s", (correlation_id,), 1)
    assert list_price("openrouter", OPENROUTER.model, row["timestamp"]) != charged
    assert (row["cost_usd"], row["cost_source"]) == (charged, "provider")
    assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (1200, 300, 200)
    assert op.cost_usd == charged
    [attributes] = [s.attributes for s in stack.spans.get_finished_spans() if s.attributes
                    and s.attributes.get("nexus.correlation_id") == correlation_id]  # fmt: skip
    assert attributes is not None
    cost_keys = ("gen_ai.usage.cost.amount", "gen_ai.usage.cost.currency",
                 "gen_ai.usage.cost.source")  # fmt: skip
    assert tuple(attributes[k] for k in cost_keys) == (float(charged), "USD", "provider")


def test_an_implausible_provider_cost_is_ignored(stack: Stack) -> None:
    """Past $1,000 a reported cost is a unit mistake: the call is priced from its tokens."""
    correlation_id = f"implausible-{uuid.uuid4().hex[:8]}"
    with tagged(correlation_id) as op:
        call(stack.sim, OPENROUTER, {**USAGE_HEADER, "x-sim-cost": "1500"})
    [row] = stack.rows("correlation_id = %s", (correlation_id,), 1)
    cost = list_price("openrouter", OPENROUTER.model, row["timestamp"])
    assert (row["cost_usd"], row["cost_source"]) == (cost, "genai-prices")
    assert row["attributes"]["nexus.cost.ignored_reported_usd"] == "1500.0"
    assert op.cost_usd == cost


def test_calls_that_bill_nothing_are_no_rows(stack: Stack) -> None:
    """Token counting (Anthropic with its SDK's own tracing on, Gemini) and listing models (a GET)
    reach the provider and are no rows; the one model call after them is."""
    start = query(stack.database_url, "SELECT now()")[0][0]
    stack.spans.clear()
    claude = anthropic.Anthropic(api_key=ANTHROPIC_KEY, base_url=stack.sim.anthropic_base_url,
                                 max_retries=0)  # fmt: skip
    counted = claude.messages.count_tokens(model="claude-sonnet-4-5", messages=MESSAGES[1:])
    gemini = genai.Client(api_key=GEMINI_KEY, http_options=types.HttpOptions(
        base_url=stack.sim.gemini_base_url, api_version="v1beta"))  # fmt: skip
    gemini_count = gemini.models.count_tokens(model="gemini-2.5-flash", contents="Octopus facts")
    assert counted.input_tokens > 0 and (gemini_count.total_tokens or 0) > 0
    assert [r.wire_format for r in stack.sim.responses[-2:]] == ["count_tokens"] * 2
    listing = openai.OpenAI(api_key=OPENAI_KEY, base_url=stack.sim.openai_base_url, max_retries=0)
    with pytest.raises(openai.NotFoundError):  # the simulator lists no models: still no row
        listing.models.list()
    correlation_id = f"billed-{uuid.uuid4().hex[:8]}"
    with tagged(correlation_id):
        call(stack.sim, PROVIDERS["api.x.ai"], USAGE_HEADER)
    # The Anthropic SDK's span of the count (it names the model) was exported, and is no row;
    # the other requests have their HTTP spans, as any request that is no model call.
    names = sorted(s.name for s in stack.spans.get_finished_spans())
    assert names == ["GET", "POST", "POST", "anthropic.messages.count_tokens", "chat grok-3"]
    rows = stack.rows("timestamp >= %s", (start,), 1)
    assert [(r["provider"], r["model"]) for r in rows] == [("x_ai", "grok-3")]
