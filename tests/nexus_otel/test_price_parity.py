"""For every provider the exporter prices, the cost an app reads on its operation handle is the
cost `nexus-otel serve` stores on the call's row: one LLM call per provider, made through the
instrumentation against the provider simulator and exported over OTLP to a real server.

Without a price overrides file both are genai-prices' list price; the expected value is computed
here with genai-prices itself, for the provider and model this table names."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal

import genai_prices
import httpx
import pytest

import nexus_otel
from exporter.simulator import ProviderSimulator
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
SERVICE = "price-parity-tests"
# Each provider name the exporter prices → the genai-prices provider that bills its calls and a
# model genai-prices prices there (chosen from genai-prices' data; several price cache reads and
# writes, and some are priced differently by their host than by their maker).
PROVIDERS = {
    "anthropic": ("anthropic", "claude-sonnet-4-5"),
    "openai": ("openai", "gpt-4.1"),
    "groq": ("groq", "openai/gpt-oss-120b"),
    "deepseek": ("deepseek", "deepseek-chat"),
    "cohere": ("cohere", "command-r"),
    "perplexity": ("perplexity", "sonar"),
    "aws.bedrock": ("aws", "global.anthropic.claude-sonnet-4-5-20250929-v1:0"),
    "azure.ai.openai": ("azure", "phi-4"),
    "az.ai.openai": ("azure", "davinci"),
    "azure.ai.inference": ("azure", "o1"),
    "az.ai.inference": ("azure", "phi-4-mini-instruct"),
    "gcp.gemini": ("google", "gemini-2.5-flash"),
    "gcp.vertex_ai": ("google", "gemini-2.5-pro"),
    "gcp.gen_ai": ("google", "claude-sonnet-4-5"),
    "gemini": ("google", "gemini-2.0-flash"),
    "vertex_ai": ("google", "gemini-2.5-flash-lite"),
    "mistral_ai": ("mistral", "mistral-large-latest"),
    "x_ai": ("x-ai", "grok-3"),
    "xai": ("x-ai", "grok-4"),
    "together_ai": ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    "fireworks": ("fireworks", "accounts/fireworks/models/deepseek-v3p2"),
    "openrouter": ("openrouter", "anthropic/claude-sonnet-4.5"),
}
# Input includes the cache reads and writes, output the reasoning (the GenAI conventions). The
# OpenAI wire format carries all four counts, so every call goes through it.
USAGE = {
    "input": 123_456,
    "output": 23_456,
    "cache_read": 45_678,
    "cache_write": 12_345,
    "reasoning": 6_789,
}
# A row keeps 12 decimal places of its cost (numeric(20, 12), PostgreSQL rounding half away from
# zero); the handle's cost is the exact Decimal. So they agree to within one stored unit.
STORED_UNIT_USD = Decimal("1e-12")


def test_every_provider_the_exporter_prices_is_here() -> None:
    from nexus_otel._llm_providers import PRICE_PROVIDER_IDS

    assert set(PROVIDERS) == set(PRICE_PROVIDER_IDS)


@pytest.fixture(scope="module")
def simulator() -> Iterator[ProviderSimulator]:
    with ProviderSimulator(seed=11) as sim:
        yield sim


def stored(database_url: str, correlation_id: str) -> tuple[Decimal | None, datetime]:
    """The cost and time of the row stored for `correlation_id`, once it has arrived."""
    statement = "SELECT cost_usd, timestamp FROM api_calls WHERE correlation_id = %s"
    deadline = time.monotonic() + 15
    while not (rows := query(database_url, statement, (correlation_id,))):
        assert time.monotonic() < deadline, f"no row for {correlation_id}"
        time.sleep(0.1)
    [row] = rows
    return row  # type: ignore[return-value]


def list_price(provider_id: str, model: str, at: datetime) -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=USAGE["input"],
        output_tokens=USAGE["output"],
        cache_read_tokens=USAGE["cache_read"],
        cache_write_tokens=USAGE["cache_write"],
    )
    price = genai_prices.calc_price(
        usage, model, provider_id=provider_id, genai_request_timestamp=at
    )
    return Decimal(price.total_price)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_handle_cost_is_the_stored_cost(
    provider: str, simulator: ProviderSimulator, exporter: ExporterProcess, database_url: str
) -> None:
    provider_id, model = PROVIDERS[provider]
    address = simulator.base_url.removeprefix("http://")
    nexus_otel.instrument(SERVICE, endpoint=exporter.base_url, providers={address: provider})
    correlation_id = f"parity-{uuid.uuid4().hex[:8]}"
    try:
        with nexus_otel.operation("price_parity", correlation_id=correlation_id) as op:
            response = httpx.post(
                f"{simulator.base_url}/v1/chat/completions",
                json={"model": model, "messages": [{"role": "user", "content": "Hello"}]},
                headers={"x-sim-usage": ",".join(f"{k}={v}" for k, v in USAGE.items())},
                timeout=20,
            )
        assert response.status_code == 200
        assert nexus_otel.force_flush()
        row_cost, at = stored(database_url, correlation_id)
    finally:
        nexus_otel.shutdown()
    [record] = op.calls
    counts = (record.input_tokens, record.output_tokens, record.cache_read_tokens)
    assert (*counts, record.cache_write_tokens, record.reasoning_tokens) == tuple(USAGE.values())
    expected = list_price(provider_id, model, at)
    assert row_cost == expected.quantize(STORED_UNIT_USD, ROUND_HALF_UP)
    assert op.cost_usd is not None, f"{provider}: the handle has no cost, the row {row_cost}"
    assert abs(op.cost_usd - row_cost) <= STORED_UNIT_USD, (
        f"{provider}: handle {op.cost_usd}, row {row_cost}, off by {op.cost_usd - row_cost}"
    )
    assert op.cost_usd == expected


# Anthropic's 1-hour cache writes (usage.cache_creation.ephemeral_1h_input_tokens) cost more
# than its 5-minute ones: 10,000 of the 12,345 writes here went to a 1-hour cache.
USAGE_1H = {**USAGE, "reasoning": 0, "cache_write_1h": 10_000}
# claude-sonnet-4-5 (input under 200k: base prices), USD per million tokens: uncached input
# (123,456 - 45,678 - 12,345 = 65,433) at $3, cache reads at $0.30, 5-minute writes (2,345) at
# $3.75, 1-hour writes (10,000) at $6, output at $15:
# 196,299 + 13,703.4 + 8,793.75 + 60,000 + 351,840 = 630,636.15 per million.
COST_1H = Decimal("0.63063615")
# What the 1-hour writes cost before they were told apart (all 12,345 writes at $3.75).
COST_1H_AS_5M = Decimal("0.60813615")


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_one_hour_cache_writes_cost_the_same_on_the_handle_and_the_row(
    stream: bool, simulator: ProviderSimulator, exporter: ExporterProcess, database_url: str
) -> None:
    """Through the Anthropic SDK (a message, and a stream whose message_start carries the
    cache_creation split): handle, row and genai-prices all price the 1-hour writes at $6."""
    import anthropic

    address = simulator.base_url.removeprefix("http://")
    nexus_otel.instrument(SERVICE, endpoint=exporter.base_url, providers={address: "anthropic"})
    correlation_id = f"parity-1h-{uuid.uuid4().hex[:8]}"
    client = anthropic.Anthropic(
        api_key="sk-ant-test", base_url=simulator.anthropic_base_url, max_retries=0
    )
    kwargs: dict[str, object] = {
        "model": "claude-sonnet-4-5",
        "max_tokens": 400,
        "messages": [{"role": "user", "content": "Hello"}],
        "extra_headers": {"x-sim-usage": ",".join(f"{k}={v}" for k, v in USAGE_1H.items())},
    }
    try:
        with nexus_otel.operation("price_parity", correlation_id=correlation_id) as op:
            if stream:
                with client.messages.stream(**kwargs) as events:  # type: ignore[arg-type]
                    "".join(events.text_stream)
            else:
                client.messages.create(**kwargs)  # type: ignore[call-overload]
        assert nexus_otel.force_flush()
        row_cost, at = stored(database_url, correlation_id)
    finally:
        nexus_otel.shutdown()
    [record] = op.calls
    assert (record.input_tokens, record.cache_read_tokens, record.cache_write_tokens) == (
        123_456,
        45_678,
        12_345,
    )
    [(write_1h,)] = query(
        database_url,
        "SELECT cache_write_1h_tokens FROM api_calls WHERE correlation_id = %s",
        (correlation_id,),
    )
    assert write_1h == 10_000
    usage = genai_prices.Usage(
        input_tokens=123_456,
        output_tokens=23_456,
        cache_read_tokens=45_678,
        cache_write_tokens=12_345,
        cache_write_1h_tokens=10_000,
    )
    library = genai_prices.calc_price(
        usage, "claude-sonnet-4-5", provider_id="anthropic", genai_request_timestamp=at
    ).total_price
    assert library == COST_1H
    assert row_cost == COST_1H
    assert op.cost_usd == COST_1H
    # The same usage without the split (every write a 5-minute one) costs what it always did.
    as_5m = nexus_otel.estimate_cost(
        "claude-sonnet-4-5", 123_456, 23_456, provider="anthropic", cache_read_tokens=45_678,
        cache_write_tokens=12_345, timestamp=at,
    )  # fmt: skip
    assert as_5m == COST_1H_AS_5M


# gpt-5's prices by the tier that served the call, from genai-prices 0.2.5 (from 2026-10-12):
# 10,000 input (2,000 cached) and 1,000 output tokens at $1.25 / $0.125 / $10 per million is
# 10,000 + 250 + 10,000 = 20,250 per million; flex half of it, priority twice.
TIER_COSTS = {
    "default": Decimal("0.02025"),
    "flex": Decimal("0.010125"),
    "priority": Decimal("0.0405"),
}


@pytest.mark.parametrize("tier", sorted(TIER_COSTS))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_service_tier_prices_the_handle_and_the_row_alike(
    tier: str,
    stream: bool,
    simulator: ProviderSimulator,
    exporter: ExporterProcess,
    database_url: str,
) -> None:
    """Through the OpenAI SDK with `service_tier`: the tier the response names is on the span
    and the row, and handle and row are priced at that tier's prices."""
    import openai

    address = simulator.base_url.removeprefix("http://")
    nexus_otel.instrument(SERVICE, endpoint=exporter.base_url, providers={address: "openai"})
    correlation_id = f"parity-tier-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(api_key="sk-test", base_url=simulator.openai_base_url, max_retries=0)
    usage = "input=10000,output=1000,cache_read=2000"
    try:
        with nexus_otel.operation("price_parity", correlation_id=correlation_id) as op:
            response = client.chat.completions.create(
                model="gpt-5",
                messages=[{"role": "user", "content": "Hello"}],
                service_tier=tier,  # type: ignore[arg-type]
                extra_headers={"x-sim-usage": usage},
                stream=stream,
                stream_options={"include_usage": True} if stream else openai.omit,
            )
            if stream:
                list(response)  # type: ignore[arg-type]
        assert nexus_otel.force_flush()
        row_cost, _ = stored(database_url, correlation_id)
    finally:
        nexus_otel.shutdown()
    [(row_tier,)] = query(
        database_url, "SELECT service_tier FROM api_calls WHERE correlation_id = %s",
        (correlation_id,),
    )  # fmt: skip
    assert row_tier == tier
    assert row_cost == TIER_COSTS[tier]
    assert op.cost_usd == TIER_COSTS[tier]
