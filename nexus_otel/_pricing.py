"""Which genai-prices price set prices a call, and the call's list price: one rule for the cost an
app reads on its handle (`op.cost_usd`) and the cost the exporter stores on the call's row.

A provider name maps to a genai-prices provider (PRICE_PROVIDER_IDS). When genai-prices knows
the provider but not the model, the call is unpriced: a model served by Groq is not billed at
OpenAI's prices. When it does not know the provider at all (a gateway, a self-hosted proxy), the
model alone picks the maker (claude → anthropic, gpt- → openai, gemini → google...) and the
maker's list price is used. The response model (more specific, e.g. a dated version) is tried
before the request model. Price sets that token counts cannot price (per audio hour, page or
character) price nothing, and neither does usage whose cache counts exceed the input (input
includes them), or whose 1-hour cache writes exceed its cache writes (they are a part of them):
such a call is unpriced, never a fake $0.

1-hour cache writes (Anthropic) are genai-prices' `cache_write_1h_tokens`, within
`cache_write_tokens`: a price set with a `cache_write_1h_mtok` prices them at it, the other
writes at `cache_write_mtok`; one without prices them as any cache write.

The tier that served a call (OpenAI's `service_tier`: flex, priority...) is genai-prices' price
context `{"service_tier": tier}`: a model with prices for that tier (a price variant) is priced
at them, any other at its standard prices (`tier_prices`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from genai_prices import Usage, data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, Provider

from nexus_otel._llm_providers import PRICE_PROVIDER_IDS, PROVIDER_ALIASES

_TOKEN_PRICE_KEYS = frozenset({"input_mtok", "output_mtok"})


def find_model(
    snapshot: data_snapshot.DataSnapshot, provider: str, model: str
) -> tuple[Provider, ModelInfo] | None:
    """The genai-prices provider and model that price `model` called through `provider`.

    A model name with a path that genai-prices does not know as it is (`openai/gpt-4o`,
    `groq/llama-3.3-70b-versatile`: LiteLLM's and gateways' names; `models/gemini-2.5-flash`:
    the Gemini API's resource name; `publishers/google/models/...`: Vertex AI's) is the model
    its last part names: through `provider`, or, when genai-prices does not know `provider` (a
    gateway, LiteLLM), through the provider its first part names, if it names one."""
    provider_id = _provider_id(snapshot, provider)
    found = _model(snapshot, provider_id, model)
    if found is None and "/" in model:
        prefix, _, name = model.rpartition("/")
        if provider_id is None:
            first = prefix.split("/", 1)[0]
            named_id = _provider_id(snapshot, PROVIDER_ALIASES.get(first.strip().lower(), first))
            if named_id is not None:
                found = _model(snapshot, named_id, name)
        if found is None and name:
            found = _model(snapshot, provider_id, name)
    return found


def _provider_id(snapshot: data_snapshot.DataSnapshot, provider: str) -> str | None:
    """genai-prices' id of `provider`, or None when genai-prices does not know it."""
    wanted = PRICE_PROVIDER_IDS.get(provider.lower(), provider)
    try:  # the snapshot caches provider hits and misses
        return snapshot.find_provider(None, wanted, None).id if wanted else None
    except LookupError:
        return None  # unknown to genai-prices: the model alone picks its maker


def _model(
    snapshot: data_snapshot.DataSnapshot, provider_id: str | None, model: str
) -> tuple[Provider, ModelInfo] | None:
    try:
        return snapshot.find_provider_model(model, None, provider_id, None)
    except LookupError:
        return None


def tier_prices(info: ModelInfo, timestamp: datetime, service_tier: str | None) -> ModelPrice:
    """`info`'s prices at `timestamp` for a call served by `service_tier` (None: not told)."""
    if service_tier is None or not any("service_tier" in v.when for v in info.price_variants or ()):
        return info.get_prices(timestamp)  # the standard prices, the same object every time
    return info.get_prices(timestamp, {"service_tier": service_tier})


def library_usage(inp: int, out: int, read: int, write: int, write_1h: int = 0) -> Usage:
    """genai-prices' usage of these counts; 1-hour cache writes left out when there are none,
    the usage a call without the dimension always had."""
    usage = Usage(
        input_tokens=inp, output_tokens=out, cache_read_tokens=read, cache_write_tokens=write
    )
    if write_1h:
        usage.cache_write_1h_tokens = write_1h
    return usage


def token_priced(model_price: ModelPrice) -> bool:
    """Whether token counts can price this price set (it has an input or an output price)."""
    keys = {k for k, v in vars(model_price).items() if not k.startswith("_") and v is not None}
    return not keys or bool(keys & _TOKEN_PRICE_KEYS)


def list_price(
    provider: str,
    model: str,
    response_model: str | None,
    timestamp: datetime,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int,
    cache_write_tokens: int,
    cache_write_1h_tokens: int = 0,
    service_tier: str | None = None,
) -> Decimal | None:
    """genai-prices' price of one call, or None when it prices none of the call's models.
    `provider`: the name as stored (`normalize_provider`)."""
    # The exporter's PriceBook.price applies these two rules inline (they run for every span it
    # stores): a change here is a change there.
    counts = (input_tokens, output_tokens, cache_read_tokens, cache_write_tokens)
    if min(counts) < 0 or cache_read_tokens + cache_write_tokens > input_tokens:
        return None
    if not 0 <= cache_write_1h_tokens <= cache_write_tokens:
        return None
    snapshot = data_snapshot.get_snapshot()
    refs = (model,) if response_model in (None, model) else (response_model, model)
    for ref in refs:
        found = find_model(snapshot, provider, ref) if ref else None
        if found is None:
            continue
        model_price = tier_prices(found[1], timestamp, service_tier)
        if not token_priced(model_price):
            continue
        usage = library_usage(
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
            cache_write_1h_tokens,
        )  # fmt: skip
        try:
            result = model_price.calc_price(usage)
        except ValueError:  # genai-prices rejects this price set for this usage
            continue
        return result["total_price"]
    return None
